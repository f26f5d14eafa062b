"""What auth costs per request: GET /api/experiments/{id} through Envoy with and without ext_authz, one run.

Starts the whole platform on free ports (as `make up` does, in throwaway schemas) plus a second Envoy rendered from
the same config without the auth filter (`gateway/render.py --no-auth`) in front of the same services. Measures
p50/p99 latency and throughput at concurrency 1 and 16 for: the RPC over gRPC, straight to the service (what the
gateway itself costs); no auth filter; an API key without limits (one Check, the key verified from the replica's
memory, one Redis read of the revocation generation); an API key with limits (one Check, the admission script in
Redis); a JWT without limits. Then each against the target of issue 17 at
concurrency 1: at most +1 ms p50 and at least 0.8x the throughput of the gateway without the filter.
The paths take turns in rounds (`--rounds`), so that load from elsewhere on a shared machine falls on each alike.
In a git worktree whose venv is shared with another checkout, run with PYTHONPATH=gen:libs:. (as pytest sets it), or
the platform is started from that other checkout.
Usage: python bench/auth.py [--requests N] [--concurrency 1,16] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import grpc

from bench._stack import KeepAliveClient, admin_password, drive, mint_key, percentile, running_platform
from gateway.render import GatewayConfig, render
from llmlab.devstack import free_port
from llmlab.devstack.launcher import PlatformConfig, http_status
from llmlab.experiments.v1 import experiments_service_pb2 as pb
from llmlab.experiments.v1 import experiments_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
# Issue 17 at concurrency 1: what auth + limits may add to the gateway without the filter.
TARGET_P50_MS = 1.0
TARGET_THROUGHPUT = 0.8


async def envoy_without_auth(cfg: PlatformConfig, workdir: Path) -> tuple[asyncio.subprocess.Process, int]:
    """The same gateway in front of the same services, rendered without ext_authz."""
    port = free_port()
    path = workdir / "envoy-no-auth.yaml"
    path.write_text(render(GatewayConfig(
        listen_port=port, admin_port=free_port(), descriptor_path=str(ROOT / "gen" / "llmlab.binpb"),
        lua_path=str(ROOT / "gateway" / "errors.lua"), access_log=False, auth=False,
        upstreams={svc: f"127.0.0.1:{p}" for svc, p in cfg.service_ports.items()},
    )))
    proc = await asyncio.create_subprocess_exec(
        str(cfg.envoy), "-c", str(path), "--log-level", "warn", "--disable-hot-restart", "--concurrency", "2",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    for _ in range(300):
        if await http_status(port, "/healthz") == 200:
            return proc, port
        await asyncio.sleep(0.1)
    proc.terminate()
    raise RuntimeError("the second Envoy did not become ready")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10, help="the paths take turns this many times per level")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    async with running_platform() as cfg:
        password = admin_password(cfg)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{cfg.service_ports['experiments']}")
        stub = pb_grpc.ExperimentServiceStub(channel)
        created = await stub.CreateExperiment(pb.CreateExperimentRequest(
            name="bench", model="smollm2-135m-instruct", prompt="Write a story", tags=["bench"]))
        exp_id = created.data.experiment.id
        path = f"/api/experiments/{exp_id}"
        token, open_key = await mint_key(cfg.gateway_url, "admin", password)
        _, limited_key = await mint_key(cfg.gateway_url, "admin", password, rate_limit={
            "requests_per_minute": 100_000_000, "tokens_per_minute": 100_000_000})
        with tempfile.TemporaryDirectory(prefix="llmlab-bench-auth-") as tmp:
            proc, bare_port = await envoy_without_auth(cfg, Path(tmp))
            clients = {
                "no auth filter": KeepAliveClient(bare_port, {}),
                "API key, no limits": KeepAliveClient(cfg.gateway_port, {"authorization": f"Bearer {open_key}"}),
                "API key, Redis limits": KeepAliveClient(cfg.gateway_port, {"x-api-key": limited_key}),
                "JWT, no limits": KeepAliveClient(cfg.gateway_port, {"authorization": f"Bearer {token}"}),
            }
            try:
                async def direct() -> None:
                    await stub.GetExperiment(pb.GetExperimentRequest(id=exp_id))

                calls = {"direct gRPC": direct}
                await drive(direct, args.warmup, 4)
                for name, client in clients.items():
                    async def call(client: KeepAliveClient = client, name: str = name) -> None:
                        status, body = await client.get(path)
                        if status != 200:
                            raise RuntimeError(f"{name}: gateway answered {status}: {body[:200]!r}")

                    calls[name] = call
                    await drive(call, args.warmup, 4)
                print(f"GET /api/experiments/{{id}}: {args.requests} requests per path and level, in {args.rounds} "
                      "interleaved rounds; one machine shared by the client, two Envoys and six services")
                print(f"{'path':<24}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'req/s':>9}")
                results: dict[tuple[str, int], tuple[float, float, float]] = {}
                per_round = max(1, args.requests // args.rounds)
                for conc in levels:
                    # Paths take turns, round by round, so that load from elsewhere on the machine falls on each
                    # path alike instead of on whichever ran while it lasted.
                    lats: dict[str, list[float]] = {name: [] for name in calls}
                    walls = dict.fromkeys(calls, 0.0)
                    for _ in range(args.rounds):
                        for name, call in calls.items():
                            lat, wall = await drive(call, per_round, conc)
                            lats[name] += lat
                            walls[name] += wall
                    for name in calls:
                        lat, rps = lats[name], len(lats[name]) / walls[name]
                        results[(name, conc)] = (percentile(lat, 50), percentile(lat, 99), rps)
                        print(f"{name:<24}{conc:>5}{percentile(lat, 50):>9.2f}{percentile(lat, 99):>9.2f}"
                              f"{statistics.fmean(lat):>9.2f}{rps:>9.0f}")
                for conc in levels:
                    d50, d99, drps = results[("direct gRPC", conc)]
                    b50, b99, brps = results[("no auth filter", conc)]
                    print(f"gateway without auth vs direct gRPC, concurrency {conc}: p50 +{b50 - d50:.2f} ms, "
                          f"p99 +{b99 - d99:.2f} ms, throughput {brps / drps:.2f}x")
                    for name in list(calls)[2:]:
                        p50, p99, rps = results[(name, conc)]
                        verdict = ""
                        if conc == 1:
                            met = p50 - b50 <= TARGET_P50_MS and rps / brps >= TARGET_THROUGHPUT
                            verdict = "  target met" if met else "  target MISSED"
                        print(f"ext_authz, {name}, concurrency {conc}: p50 +{p50 - b50:.2f} ms, "
                              f"p99 +{p99 - b99:.2f} ms, throughput {rps / brps:.2f}x{verdict}")
            finally:
                for client in clients.values():
                    client.close()
                proc.terminate()
                await proc.wait()
                await channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
