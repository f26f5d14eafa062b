"""The whole llmlab platform on one machine: six services, their worker processes (WORKERS) and the Envoy gateway
under one supervisor."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from gateway.render import GatewayConfig, render
from llmlab.runtime.settings import DEFAULT_PORTS, SERVICES

from ._net import free_port
from ._supervisor import ProcessSpec, Supervisor

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class PlatformConfig:
    """Where everything listens and what it connects to. Defaults are `make up`'s."""

    database_url: str
    redis_url: str
    gateway_port: int = 8080
    admin_port: int = 9901
    service_ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    run_dir: Path = ROOT / ".run"
    python: str = sys.executable
    envoy: Path = ROOT / ".venv-envoy" / "bin" / "envoy"
    log_format: str = "console"
    # Extra environment for every service (e.g. per-test schema names and Redis prefix).
    env: Mapping[str, str] = field(default_factory=dict)
    grace: float = 10.0
    # gRPC health port of each worker process (WORKERS); a worker not named here gets a free port at start.
    worker_ports: dict[str, int] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"


async def http_status(port: int, path: str, host: str = "127.0.0.1", wait: float = 2.0) -> int:
    """Status code of a plain HTTP/1.1 GET, or 0 when nothing answers."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait)
    except (OSError, TimeoutError):
        return 0
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), wait)
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
    except (OSError, TimeoutError):
        return 0
    finally:
        writer.close()


def service_env(cfg: PlatformConfig) -> dict[str, str]:
    """Environment shared by every service process: import paths, dependencies, and where each peer is."""
    env = {
        # The editable install already makes this checkout importable; naming it here keeps the services on the
        # code of the checkout that launches them when a virtualenv is shared by several checkouts (worktrees).
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("gen", "libs", ".")),
        "PYTHONUNBUFFERED": "1",
        "LLMLAB_DATABASE_URL": cfg.database_url,
        "LLMLAB_REDIS_URL": cfg.redis_url,
        "LLMLAB_LOG_FORMAT": cfg.log_format,
    }
    for svc in SERVICES:
        env[f"LLMLAB_{svc.upper()}_PORT"] = str(cfg.service_ports[svc])
        env[f"LLMLAB_{svc.upper()}_TARGET"] = f"127.0.0.1:{cfg.service_ports[svc]}"
    env.update(cfg.env)
    return env


def render_gateway(cfg: PlatformConfig) -> Path:
    """Write the local Envoy config for these ports into the run dir; return its path."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.run_dir / f"envoy-{cfg.gateway_port}.yaml"
    text = render(
        GatewayConfig(
            mode="local",
            listen_port=cfg.gateway_port,
            admin_port=cfg.admin_port,
            descriptor_path=str(ROOT / "gen" / "llmlab.binpb"),
            lua_path=str(ROOT / "gateway" / "errors.lua"),
            upstreams={svc: f"127.0.0.1:{port}" for svc, port in cfg.service_ports.items()},
        )
    )
    path.write_text(text)
    return path


# Worker process types started beside the services: name -> (module, env var naming its gRPC health port).
# Each consumes a job queue of its service (the module's docstring says which); one line per worker type.
WORKERS: dict[str, tuple[str, str]] = {
    "files-worker": ("services.files.worker", "LLMLAB_FILES_WORKER_PORT"),  # export jobs (docs/files.md)
    "experiments-worker": ("services.experiments.worker", "LLMLAB_EXPERIMENTS_WORKER_PORT"),  # sweeps, research runs
    "training-worker": ("services.inference.training.worker", "LLMLAB_TRAINING_WORKER_PORT"),  # docs/training.md
    "inference-worker": ("services.inference.worker", "LLMLAB_INFERENCE_WORKER_PORT"),  # batches (docs/batches.md)
}


def platform_specs(cfg: PlatformConfig) -> list[ProcessSpec]:
    """Auth first (the gateway asks it about every request), the other services, then Envoy."""
    env = service_env(cfg)
    specs = [
        ProcessSpec(
            name=svc,
            argv=[cfg.python, "-m", f"services.{svc}"],
            env=env,
            cwd=ROOT,
            ready=cfg.service_ports[svc],
            ready_timeout=60.0,
        )
        for svc in SERVICES
    ]
    for name, (module, port_env) in WORKERS.items():
        port = cfg.worker_ports.get(name) or free_port()
        specs.append(
            ProcessSpec(
                name=name,
                argv=[cfg.python, "-m", module],
                env={**env, port_env: str(port)},
                cwd=ROOT,
                ready=port,
                ready_timeout=60.0,
            )
        )
    envoy_config = render_gateway(cfg)

    async def gateway_ready() -> bool:
        # /healthz answers 200 only once every cluster has a healthy host (gRPC health checks).
        return await http_status(cfg.gateway_port, "/healthz") == 200

    specs.append(
        ProcessSpec(
            name="gateway",
            argv=[
                str(cfg.envoy),
                "-c",
                str(envoy_config),
                "--log-level",
                "warn",
                "--disable-hot-restart",
                "--concurrency",
                "2",
            ],
            cwd=ROOT,
            ready=gateway_ready,
            ready_timeout=60.0,
        )
    )
    return specs


def platform_supervisor(cfg: PlatformConfig, output: TextIO | None = None) -> Supervisor:
    """A supervisor for the whole platform; children's output goes to `output` (default stdout)."""
    return Supervisor(platform_specs(cfg), grace=cfg.grace, output=output)
