"""Embedded Postgres and Redis from llmlab.devstack: start on free ports in a temp dir, use, stop, gone."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis.asyncio as aioredis

from llmlab.devstack import DevstackError, ensure_postgres, ensure_redis, free_port

pytestmark = pytest.mark.integration

LIBS = Path(__file__).resolve().parents[2] / "libs"
REAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
REAL_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not tmp_path: that sits in a 0700 directory, and as root postgres runs as an account that must reach it.
    path = Path(tempfile.mkdtemp(prefix="llmlab-devstack-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def nothing_at(scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{free_port()}/0"


def process_tree(pid: int | None) -> list[psutil.Process]:
    assert pid is not None
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def all_gone(processes: list[psutil.Process]) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=5)
    return not alive


async def test_embedded_postgres_starts_serves_and_stops(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    pg = await ensure_postgres(nothing_at("postgresql"), data_dir, database="devstack_test", port=port)
    try:
        assert pg.owned
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{port}/devstack_test"
        conn = await asyncpg.connect(pg.dsn)
        assert await conn.fetchval("SELECT current_database()") == "devstack_test"
        await conn.close()
        # The unix socket lives in the data dir.
        conn = await asyncpg.connect(
            host=str(data_dir / "postgres"), port=port, user="postgres", database="postgres"
        )
        await conn.close()
        processes = process_tree(pg.pid)
        expected_user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        assert processes[0].username() == expected_user
        assert len(processes) > 1  # the postmaster's own workers, which must go with it
    finally:
        await pg.stop()
    assert pg.pid is None
    assert all_gone(processes)
    first_run = capsys.readouterr().out
    assert "starting an embedded server" in first_run
    assert "initialising" in first_run
    assert "creating database devstack_test" in first_run

    async with await ensure_postgres(
        nothing_at("postgresql"), data_dir, database="devstack_test", port=port
    ) as pg:
        conn = await asyncpg.connect(pg.dsn)
        await conn.close()
        processes = process_tree(pg.pid)
    assert all_gone(processes)
    second_run = capsys.readouterr().out
    assert "initialising" not in second_run
    assert "creating database" not in second_run


async def test_embedded_redis_starts_serves_and_stops(data_dir: Path) -> None:
    port = free_port()
    async with await ensure_redis(nothing_at("redis").replace("/0", "/3"), data_dir, port=port) as handle:
        assert handle.owned
        assert handle.url == f"redis://127.0.0.1:{port}/3"
        client = aioredis.Redis.from_url(handle.url)
        await client.set("devstack", "yes")
        assert await client.get("devstack") == b"yes"
        assert await client.config_get("save") == {"save": ""}
        await client.aclose()
        processes = process_tree(handle.pid)
    assert handle.pid is None
    assert all_gone(processes)
    assert not list((data_dir / "redis").iterdir())  # nothing persisted


async def test_a_reachable_postgres_is_used_and_gets_the_database(data_dir: Path) -> None:
    try:
        await (await asyncpg.connect(REAL_POSTGRES, timeout=2)).close()
    except OSError:
        pytest.skip("no Postgres at 127.0.0.1:5432")
    database = f"devstack_{uuid.uuid4().hex[:12]}"
    pg = await ensure_postgres(REAL_POSTGRES, data_dir, database=database)
    try:
        assert not pg.owned and pg.pid is None
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:5432/{database}"
        await (await asyncpg.connect(pg.dsn)).close()
        await pg.stop()  # not ours: left running
        await (await asyncpg.connect(pg.dsn)).close()
    finally:
        admin = await asyncpg.connect(REAL_POSTGRES)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        await admin.close()
    assert not (data_dir / "postgres").exists()


async def test_a_reachable_redis_is_used(data_dir: Path) -> None:
    handle = await ensure_redis(REAL_REDIS, data_dir)
    if handle.owned:
        await handle.stop()
        pytest.skip("no Redis at 127.0.0.1:6379")
    assert handle.url == REAL_REDIS and handle.pid is None


async def test_an_embedded_server_already_on_the_port_is_reused(data_dir: Path) -> None:
    port = free_port()
    async with await ensure_redis(nothing_at("redis"), data_dir, port=port) as first:
        second = await ensure_redis(nothing_at("redis"), data_dir, port=port)
        assert second.url == first.url
        assert not second.owned


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands postgres to another account")
async def test_as_root_a_data_dir_postgres_cannot_reach_is_refused(data_dir: Path) -> None:
    private = data_dir / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(DevstackError, match=r"cannot enter .*private"):
        await ensure_postgres(nothing_at("postgresql"), private, port=free_port())


OWNER = """
import asyncio, sys
from pathlib import Path
from llmlab.devstack import ensure_postgres, ensure_redis, free_port

async def main():
    nothing = f"127.0.0.1:{free_port()}/0"
    pg = await ensure_postgres("postgresql://" + nothing, Path(sys.argv[1]), port=free_port())
    rd = await ensure_redis("redis://" + nothing, Path(sys.argv[1]), port=free_port())
    print("PIDS", pg.pid, rd.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_embedded_servers_die_with_a_killed_owner(data_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(LIBS)}
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(OWNER), str(data_dir), stdout=asyncio.subprocess.PIPE, env=env
    )
    assert owner.stdout is not None
    async with asyncio.timeout(60):
        while not (line := await owner.stdout.readline()).startswith(b"PIDS"):
            assert line, "the owner exited before its servers were up"
    processes = [p for pid in line.split()[1:] for p in process_tree(int(pid))]
    owner.send_signal(signal.SIGKILL)
    await owner.wait()
    # They are orphans now; whether init reaps them is init's business, so count a zombie as gone.
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
