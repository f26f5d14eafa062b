"""Gateway overhead: GET /api/experiments/{id} through Envoy (REST/JSON) vs the same RPC over gRPC, in one run.

Starts the whole platform on free ports (as `make up` does, in throwaway schemas), creates one experiment, then
measures p50/p99 latency and throughput at concurrency 1 and 16 for both paths and prints the overhead.
Usage: python bench/gateway_overhead.py [--requests N] [--concurrency 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

import grpc

from bench._stack import KeepAliveClient, admin_key, drive, percentile, running_platform
from llmlab.experiments.v1 import experiments_service_pb2 as pb
from llmlab.experiments.v1 import experiments_service_pb2_grpc as pb_grpc


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    async with running_platform() as cfg:
        ports = cfg.service_ports
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports['experiments']}")
        stub = pb_grpc.ExperimentServiceStub(channel)
        created = await stub.CreateExperiment(pb.CreateExperimentRequest(
            name="bench", model="smollm2-135m-instruct", prompt="Write a story", tags=["bench"]))
        exp_id = created.data.experiment.id
        http = KeepAliveClient(cfg.gateway_port, {"authorization": f"Bearer {await admin_key(cfg)}"})
        try:

            async def via_gateway() -> None:
                status, body = await http.get(f"/api/experiments/{exp_id}")
                if status != 200:
                    raise RuntimeError(f"gateway answered {status}: {body[:200]!r}")

            async def via_grpc() -> None:
                await stub.GetExperiment(pb.GetExperimentRequest(id=exp_id))

            await drive(via_gateway, args.warmup, 4)
            await drive(via_grpc, args.warmup, 4)
            print(f"GET /api/experiments/{{id}}: {args.requests} requests per run, 2 cores shared by client, "
                  "Envoy and six services")
            print(f"{'path':<22}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'req/s':>9}")
            results = {}
            for conc in levels:
                for name, call in (("envoy REST/JSON", via_gateway), ("direct gRPC", via_grpc)):
                    lat, wall = await drive(call, args.requests, conc)
                    results[(name, conc)] = (percentile(lat, 50), percentile(lat, 99), args.requests / wall)
                    print(f"{name:<22}{conc:>5}{percentile(lat, 50):>9.2f}{percentile(lat, 99):>9.2f}"
                          f"{statistics.fmean(lat):>9.2f}{args.requests / wall:>9.0f}")
            for conc in levels:
                g50, g99, grps = results[("envoy REST/JSON", conc)]
                d50, d99, drps = results[("direct gRPC", conc)]
                print(f"overhead at concurrency {conc}: p50 +{g50 - d50:.2f} ms, p99 +{g99 - d99:.2f} ms, "
                      f"throughput {grps / drps:.2f}x of direct gRPC")
        finally:
            http.close()
        await channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
