"""`make up`: start the whole llmlab platform on this machine and keep it running until Ctrl-C / SIGTERM.

Uses the Postgres and Redis at LLMLAB_DATABASE_URL / LLMLAB_REDIS_URL when they answer, else starts embedded
ones with their data under LLMLAB_DATA_DIR (default .data/) on LLMLAB_EMBEDDED_POSTGRES_PORT (5433) and
LLMLAB_EMBEDDED_REDIS_PORT (6380). Ports: LLMLAB_GATEWAY_PORT (8080), LLMLAB_GATEWAY_ADMIN_PORT (9901),
LLMLAB_<SVC>_PORT.

The first admin is LLMLAB_AUTH_ADMIN_USERNAME (admin) with LLMLAB_AUTH_ADMIN_PASSWORD; without one, a random
password is generated once, kept in <data dir>/admin-password (mode 0600) and shown at start.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from llmlab.devstack import (
    EMBEDDED_POSTGRES_PORT,
    EMBEDDED_REDIS_PORT,
    DevstackError,
    ensure_postgres,
    ensure_redis,
)
from llmlab.devstack.launcher import PlatformConfig, platform_supervisor
from llmlab.runtime.settings import DEFAULT_PORTS, SERVICES

ROOT = Path(__file__).resolve().parent.parent


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a port number") from None


def _split_database(url: str | None) -> tuple[str | None, str]:
    """(server url, database name): the database of LLMLAB_DATABASE_URL, default `llmlab`."""
    if not url:
        return None, "llmlab"
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "llmlab"
    return urlunsplit(parts._replace(path="/postgres")), name


def _admin_credentials(data_dir: Path) -> tuple[str, str, Path | None]:
    """(username, password, file it is kept in or None when it came from the environment)."""
    username = os.environ.get("LLMLAB_AUTH_ADMIN_USERNAME", "admin")
    if os.environ.get("LLMLAB_AUTH_ADMIN_PASSWORD"):
        return username, os.environ["LLMLAB_AUTH_ADMIN_PASSWORD"], None
    path = data_dir / "admin-password"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18) + "\n")
    return username, path.read_text().strip(), path


async def _stop_on(event: asyncio.Event, supervisor) -> None:  # type: ignore[no-untyped-def]
    await event.wait()
    await supervisor.stop()


async def main() -> int:
    data_dir = Path(os.environ.get("LLMLAB_DATA_DIR") or ROOT / ".data")
    server_url, database = _split_database(os.environ.get("LLMLAB_DATABASE_URL"))
    postgres = await ensure_postgres(
        server_url, data_dir, database=database,
        port=_int_env("LLMLAB_EMBEDDED_POSTGRES_PORT", EMBEDDED_POSTGRES_PORT),
    )
    try:
        redis = await ensure_redis(
            os.environ.get("LLMLAB_REDIS_URL"), data_dir,
            port=_int_env("LLMLAB_EMBEDDED_REDIS_PORT", EMBEDDED_REDIS_PORT),
        )
    except BaseException:
        await postgres.stop()
        raise
    username, password, password_file = _admin_credentials(data_dir)
    cfg = PlatformConfig(
        env={"LLMLAB_AUTH_ADMIN_USERNAME": username, "LLMLAB_AUTH_ADMIN_PASSWORD": password},
        database_url=postgres.dsn,
        redis_url=redis.url,
        gateway_port=_int_env("LLMLAB_GATEWAY_PORT", 8080),
        admin_port=_int_env("LLMLAB_GATEWAY_ADMIN_PORT", 9901),
        service_ports={s: _int_env(f"LLMLAB_{s.upper()}_PORT", DEFAULT_PORTS[s]) for s in SERVICES},
    )
    supervisor = platform_supervisor(cfg)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)
    stopper = asyncio.create_task(_stop_on(stop_requested, supervisor))
    try:
        await supervisor.start()
        if stop_requested.is_set():
            return 0
        where = f"(password in {password_file})" if password_file else "(password from LLMLAB_AUTH_ADMIN_PASSWORD)"
        login = (f"curl -s -X POST {cfg.gateway_url}/auth/token -H 'content-type: application/json' "
                 f"-d '{{\"username\": \"{username}\", \"password\": \"'\"$(cat {password_file})\"'\"}}'"
                 if password_file else f"curl -s -X POST {cfg.gateway_url}/auth/token -d '{{...}}'")
        print(
            f"\nllmlab is up.\n  gateway:  {cfg.gateway_url}\n  health:   curl {cfg.gateway_url}/health\n"
            f"  admin:    user {username!r} {where}\n  login:    {login}\n"
            f"  envoy:    http://127.0.0.1:{cfg.admin_port} (admin)\n  Ctrl-C stops everything.\n",
            flush=True,
        )
        await supervisor.wait()
        return 0
    except DevstackError as exc:
        print(f"llmlab: {exc}", file=sys.stderr)
        return 1
    finally:
        stopper.cancel()
        await supervisor.stop()
        await redis.stop()
        await postgres.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
