"""`make up`'s launcher on a machine with no reachable Postgres or Redis: it starts embedded ones and the platform,
prints the gateway URL, serves requests, and stops everything on SIGTERM."""

import asyncio
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import httpx

from llmlab.devstack import free_port, port_open

ROOT = Path(__file__).resolve().parents[2]


async def test_up_with_embedded_datastores_then_sigterm():
    data_dir = Path(tempfile.mkdtemp(prefix="llmlab-up-"))
    admin_password = secrets.token_urlsafe(18)
    data_dir.chmod(0o755)  # the embedded Postgres runs as the postgres account
    ports = {name: free_port() for name in ("gateway", "admin", "pg", "redis", "dead_pg", "dead_redis",
                                            "auth", "experiments", "inference", "metrics", "analytics", "files")}
    env = {
        **os.environ,
        "LLMLAB_DATA_DIR": str(data_dir),
        "LLMLAB_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{ports['dead_pg']}/llmlab",
        "LLMLAB_REDIS_URL": f"redis://127.0.0.1:{ports['dead_redis']}/0",
        "LLMLAB_EMBEDDED_POSTGRES_PORT": str(ports["pg"]),
        "LLMLAB_EMBEDDED_REDIS_PORT": str(ports["redis"]),
        "LLMLAB_GATEWAY_PORT": str(ports["gateway"]),
        "LLMLAB_GATEWAY_ADMIN_PORT": str(ports["admin"]),
        **{f"LLMLAB_{s.upper()}_PORT": str(ports[s])
           for s in ("auth", "experiments", "inference", "metrics", "analytics", "files")},
        # The first admin comes from the settings (README "First admin and API keys").
        "LLMLAB_AUTH_ADMIN_USERNAME": "admin",
        "LLMLAB_AUTH_ADMIN_PASSWORD": admin_password,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "scripts" / "up.py"), env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output: list[str] = []

    async def read_until(marker: str) -> None:
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError("up.py exited early:\n" + "".join(output[-40:]))
            output.append(line.decode(errors="replace"))
            if marker in output[-1]:
                return

    try:
        await asyncio.wait_for(read_until("llmlab is up"), 180)
        await asyncio.wait_for(read_until("gateway:"), 5)
        assert output[-1].split()[-1] == f"http://127.0.0.1:{ports['gateway']}"
        assert any("starting an embedded server" in line for line in output if "postgres" in line)
        assert any("starting an embedded server" in line for line in output if "redis" in line)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['gateway']}", timeout=30) as http:
            assert (await http.get("/api/health")).status_code == 401
            token = await http.post("/auth/token", json={"username": "admin", "password": admin_password})
            assert token.status_code == 200, token.text
            http.headers["authorization"] = f"Bearer {token.json()['access_token']}"
            health = (await http.get("/api/health")).json()
            assert health["data"]["status"] == "healthy", health
            created = await http.post("/api/experiments",
                                      json={"name": "up", "model": "smollm2-135m-instruct", "prompt": "p"})
            assert created.status_code == 200
            assert (await http.get("/api/experiments")).json()["meta"]["pagination"]["total"] == 1
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 60)
        output.append(rest.decode(errors="replace"))
        assert proc.returncode == 0, "".join(output[-40:])
        for name in ("gateway", "pg", "redis", "experiments"):
            assert not await port_open(ports[name]), f"{name} still listening after stop"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
