"""Postgres and Redis for one machine: the configured server if it answers, else an embedded one we start."""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import signal
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._supervisor import DevstackError, ProcessSpec, Supervisor, describe_exit, spawn

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
EMBEDDED_POSTGRES_PORT = 5433
EMBEDDED_REDIS_PORT = 6380

_PG_INSTALL_ROOT = Path("/usr/lib/postgresql")
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


@dataclass(kw_only=True)
class _ServerHandle:
    owned: bool  # True when we started the server, so stop() shuts it down
    _supervisor: Supervisor | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        """The embedded server's pid while it runs; None for a server we did not start."""
        pids = {} if self._supervisor is None else self._supervisor.pids()
        return next(iter(pids.values()), None)

    async def stop(self) -> None:
        """Stop the embedded server; a server we did not start is left alone."""
        if self._supervisor is not None:
            await self._supervisor.stop()

    async def __aenter__(self) -> _ServerHandle:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


@dataclass(kw_only=True)
class PostgresHandle(_ServerHandle):
    """A Postgres server to use: `dsn` points at the requested database, which exists."""

    dsn: str


@dataclass(kw_only=True)
class RedisHandle(_ServerHandle):
    """A Redis server to use at `url`."""

    url: str


def _echo(message: str) -> None:
    print(f"devstack | {message}", flush=True)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


async def ensure_postgres(
    url: str | None,
    data_dir: Path,
    *,
    database: str = "llmlab",
    port: int = EMBEDDED_POSTGRES_PORT,
) -> PostgresHandle:
    """Use the Postgres at `url` if it answers, else one already on `port`, else start an embedded one there.

    The embedded server keeps its data in `data_dir/postgres` (initialised once, trust auth, superuser
    `postgres`) and listens on 127.0.0.1:`port` and a unix socket in its data dir. `database` is created if
    missing. Stop the returned handle to shut down a server this call started.
    """
    url = url or DEFAULT_POSTGRES_URL
    supervisor = None
    if await _postgres_answers(url):
        _echo(f"postgres: using {_redact(url)}")
    else:
        embedded = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        if await _postgres_answers(embedded):
            _echo(f"postgres: {_redact(url)} does not answer; using the server already on port {port}")
        else:
            _echo(f"postgres: {_redact(url)} does not answer; starting an embedded server on port {port}")
            supervisor = await _start_postgres(Path(data_dir) / "postgres", port, embedded)
        url = embedded
    try:
        dsn = await _create_database(url, database)
    except BaseException:
        if supervisor is not None:
            await supervisor.stop()
        raise
    return PostgresHandle(dsn=dsn, owned=supervisor is not None, _supervisor=supervisor)


async def ensure_redis(url: str | None, data_dir: Path, *, port: int = EMBEDDED_REDIS_PORT) -> RedisHandle:
    """Use the Redis at `url` if it answers, else one already on `port`, else start an embedded one there.

    The embedded server persists nothing (its working dir is `data_dir/redis`) and listens on
    127.0.0.1:`port`.
    """
    url = url or DEFAULT_REDIS_URL
    if await _redis_answers(url):
        _echo(f"redis: using {_redact(url)}")
        return RedisHandle(url=url, owned=False)
    embedded = urlunsplit(("redis", f"127.0.0.1:{port}", urlsplit(url).path or "/0", "", ""))
    if await _redis_answers(embedded):
        _echo(f"redis: {_redact(url)} does not answer; using the server already on port {port}")
        return RedisHandle(url=embedded, owned=False)
    _echo(f"redis: {_redact(url)} does not answer; starting an embedded server on port {port}")
    binary = shutil.which("redis-server")
    if binary is None:
        raise DevstackError(
            "redis-server is not installed; install redis or give the url of a running server"
        )
    workdir = Path(data_dir) / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    ready = functools.partial(_redis_answers, embedded)
    supervisor = Supervisor([ProcessSpec("redis", [*argv, "--dir", str(workdir)], cwd=workdir, ready=ready)])
    await supervisor.start()
    _echo(f"redis: embedded server ready at {embedded}")
    return RedisHandle(url=embedded, owned=True, _supervisor=supervisor)


async def _postgres_answers(url: str) -> bool:
    """True if a Postgres server accepts us at `url`, False if nothing usable listens there."""
    try:
        conn = await asyncpg.connect(url, timeout=2)
    except (OSError, TimeoutError, asyncpg.CannotConnectNowError):
        return False
    except asyncpg.PostgresError as exc:
        raise DevstackError(f"postgres at {_redact(url)} answers but refuses us: {exc}") from exc
    await conn.close()
    return True


async def _redis_answers(url: str) -> bool:
    """True if a Redis server answers PING at `url`, False if nothing listens there."""
    no_retry = Retry(NoBackoff(), 0)
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2, retry=no_retry)
    try:
        return bool(await client.ping())
    except AuthenticationError as exc:
        raise DevstackError(f"redis at {_redact(url)} answers but refuses us: {exc}") from exc
    except (RedisConnectionError, RedisTimeoutError, OSError):
        return False
    except RedisError as exc:
        raise DevstackError(f"redis at {_redact(url)} answers but refuses us: {exc}") from exc
    finally:
        await client.aclose()


async def _create_database(url: str, database: str) -> str:
    """Create `database` on the server of `url` if missing; return the DSN for it."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            _echo(f"postgres: creating database {database}")
            quoted = '"' + database.replace('"', '""') + '"'
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # a concurrent start made it first
                await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(database)))


async def _start_postgres(pgdata: Path, port: int, dsn: str) -> Supervisor:
    bindir = _pg_bindir(pgdata)
    user = _pg_account()
    _prepare_pgdata(pgdata, user)
    if not (pgdata / "PG_VERSION").exists():
        _echo(f"postgres: initialising {pgdata} with {bindir / 'initdb'}")
        # --no-sync: a throwaway dev cluster need not survive a power cut, and initdb is several times faster.
        initdb = [bindir / "initdb", "-D", pgdata, "-U", "postgres", "--auth=trust", "--no-sync"]
        await _run_once([*initdb, "--encoding=UTF8", "--locale=C"], user=user, cwd=pgdata)
    socket_dir = str(pgdata)
    if len(f"{pgdata}/.s.PGSQL.{port}") > _SOCKET_PATH_MAX:
        _echo(f"postgres: {pgdata} is too long a path for a unix socket; listening on TCP only")
        socket_dir = ""
    argv = [bindir / "postgres", "-D", pgdata, "-p", str(port), "-k", socket_dir]
    supervisor = Supervisor(
        [
            ProcessSpec(
                "postgres",
                [*argv, "-c", "listen_addresses=127.0.0.1"],
                cwd=pgdata,
                user=user,
                ready=functools.partial(_postgres_answers, dsn),
                ready_timeout=60.0,
                stop_signal=signal.SIGINT,  # "fast" shutdown: SIGTERM would wait for every client to leave
            )
        ]
    )
    await supervisor.start()
    _echo(f"postgres: embedded server ready on 127.0.0.1:{port} (data in {pgdata})")
    return supervisor


def _pg_bindir(pgdata: Path) -> Path:
    """Server binaries matching an existing data dir's major version, else the newest installed."""
    installed = {p.parent.name: p for p in _PG_INSTALL_ROOT.glob("*/bin") if (p / "initdb").exists()}
    version_file = pgdata / "PG_VERSION"
    wanted = version_file.read_text().strip() if version_file.exists() else None
    if wanted in installed:
        return installed[wanted]
    if installed:
        return installed[max(installed, key=lambda v: int(v) if v.isdigit() else -1)]
    if found := shutil.which("initdb"):
        return Path(found).parent
    raise DevstackError("no PostgreSQL server binaries (initdb, postgres) found; install postgresql")


def _pg_account() -> str | None:
    """The account to run initdb and postgres as: None (ourselves) unless we are root, which both refuse."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    raise DevstackError("running as root, and there is no postgres or nobody account to run postgres as")


def _prepare_pgdata(pgdata: Path, user: str | None) -> None:
    """Create the data dir, owned by `user`, and check that `user` can reach it."""
    pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
    if user is None:
        return
    pw = pwd.getpwnam(user)
    if not (pgdata / "PG_VERSION").exists():
        os.chown(pgdata, pw.pw_uid, pw.pw_gid)
    for parent in pgdata.parents:
        st = parent.stat()
        if st.st_uid == pw.pw_uid:
            searchable = st.st_mode & stat.S_IXUSR
        elif st.st_gid == pw.pw_gid:
            searchable = st.st_mode & stat.S_IXGRP
        else:
            searchable = st.st_mode & stat.S_IXOTH
        if not searchable:
            raise DevstackError(
                f"postgres runs as {user!r} (it refuses root), which cannot enter {parent}; "
                f"choose a data dir it can reach, or `chmod o+x {parent}`"
            )


async def _run_once(argv: list[str | Path], *, user: str | None, cwd: Path) -> None:
    proc = await spawn(argv, user=user, cwd=cwd)
    try:
        output, _ = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode:
        text = output.decode(errors="replace").strip()
        raise DevstackError(f"{Path(argv[0]).name} failed ({describe_exit(proc.returncode)}):\n{text}")
