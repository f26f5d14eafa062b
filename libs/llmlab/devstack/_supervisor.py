"""Supervisor: named child processes with prefixed output, readiness checks, restarts and ordered shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import inspect
import os
import pwd
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from ._net import port_open

ReadyCheck = Callable[[], Awaitable[object] | object]

_PR_SET_PDEATHSIG = 1
_COLOURS = (36, 33, 32, 35, 34, 96, 93, 92, 95, 94)
_SELF = "devstack"
_MAX_LINE = 64 * 1024


class DevstackError(RuntimeError):
    """The local stack cannot start or keep running; the message says why."""


class SupervisorError(DevstackError):
    """A supervised process could not start, become ready, or stay up."""


@dataclass(frozen=True)
class ProcessSpec:
    """One child process: what to run, how to tell it is ready, and how to ask it to stop."""

    name: str
    argv: Sequence[str | Path]
    env: Mapping[str, str] | None = None  # added on top of the supervisor's own environment
    cwd: str | Path | None = None
    ready: int | ReadyCheck | None = None  # a TCP port on 127.0.0.1, or a check that returns true once ready
    ready_timeout: float = 30.0
    stop_signal: signal.Signals = signal.SIGTERM
    user: str | None = None  # run as this account; switching needs root


def describe_exit(code: int) -> str:
    """`exit code 3` or `killed by SIGKILL`, from an asyncio/subprocess return code."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


@functools.cache
def _prctl() -> Callable[..., int] | None:
    return ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn making the kernel SIGKILL the child when this process dies, even if it dies by SIGKILL.

    The kernel ties this to the thread that forks, so the event loop must outlive the children (it does: the
    loop thread is the one that stops them).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent, sigkill = os.getpid(), int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill)
        if os.getppid() != parent:  # we died before prctl took effect
            os._exit(1)

    return preexec


def _account(user: str | None) -> dict[str, Any]:
    """Popen arguments that run a child as `user`, with that account's primary group only."""
    if user is None:
        return {}
    pw = pwd.getpwnam(user)
    if pw.pw_uid == os.geteuid():
        return {}
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


async def spawn(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    user: str | None = None,
) -> asyncio.subprocess.Process:
    """Start a child with stdout+stderr on one pipe, in its own session, set to die with this process.

    Its own session keeps a terminal's Ctrl-C away from it: only the supervisor gets SIGINT, and then stops
    the children in order.
    """
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent(),
        **_account(user),
    )


@dataclass(eq=False)
class _Child:
    spec: ProcessSpec
    colour: int
    proc: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    started: bool = False
    started_at: float = 0.0
    restarts: int = 0


class Supervisor:
    """Runs processes in order, restarts those that die, and stops them all in reverse order.

    `async with Supervisor([...]) as sup:` starts every process (each once the previous one is ready) and
    stops them on exit; `await Supervisor([...]).run()` does the same until SIGINT/SIGTERM or a failure.
    A process that dies is restarted after `backoff`, doubling up to `max_backoff`; one that still dies after
    `max_restarts` restarts (counted afresh once it has stayed up `stable_after` seconds) fails the stack.
    """

    def __init__(
        self,
        specs: Iterable[ProcessSpec] = (),
        *,
        grace: float = 10.0,
        max_restarts: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        stable_after: float = 60.0,
        output: TextIO | None = None,
    ) -> None:
        self.grace = grace
        self.max_restarts = max_restarts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self._out = output or sys.stdout
        self._colour = self._out.isatty() and "NO_COLOR" not in os.environ
        self._children: list[_Child] = []
        self._watchers: set[asyncio.Task[None]] = set()
        self._start_lock = asyncio.Lock()
        self._stop_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._failure: str | None = None
        for spec in specs:
            self.add(spec)

    @property
    def _stopping(self) -> bool:
        return self._stop_task is not None

    def add(self, spec: ProcessSpec) -> None:
        """Register a process; the next `start()` starts it after those already registered."""
        if self._stopping:
            raise SupervisorError(f"cannot add {spec.name}: the supervisor is stopping")
        if any(child.spec.name == spec.name for child in self._children):
            raise ValueError(f"a process named {spec.name!r} is already registered")
        self._children.append(_Child(spec, _COLOURS[len(self._children) % len(_COLOURS)]))

    def pids(self) -> dict[str, int]:
        """The pid of each process that is running now, by name."""
        return {
            child.spec.name: child.proc.pid
            for child in self._children
            if child.proc is not None and child.proc.returncode is None
        }

    async def start(self) -> None:
        """Start every process not yet started, in order, each once the previous one is ready.

        Raises SupervisorError, after stopping the whole stack, if one exits or is not ready in time.
        Returns early, starting nothing more, if the stack is stopped meanwhile.
        """
        try:
            async with self._start_lock:
                await self._start_pending()
        except SupervisorError as exc:
            self._fail(str(exc))
            await self.stop()
            raise

    async def _start_pending(self) -> None:
        for child in self._children:
            if self._stopping:
                return
            if child.started:
                continue
            child.started = True
            port = child.spec.ready
            if isinstance(port, int) and await port_open(port):
                raise SupervisorError(f"cannot start {child.spec.name}: port {port} is already in use")
            await self._launch(child)
            await self._until_ready(child)
            watcher = asyncio.create_task(self._watch(child), name=f"devstack-watch-{child.spec.name}")
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)

    async def wait(self) -> None:
        """Return once the stack has stopped; raise SupervisorError if it stopped because a process failed."""
        await self._stopped.wait()
        if self._failure is not None:
            raise SupervisorError(self._failure)

    async def stop(self) -> None:
        """Stop every process in reverse start order: its stop signal, `grace` seconds, then SIGKILL."""
        self._begin_stop()
        assert self._stop_task is not None
        await asyncio.shield(self._stop_task)

    async def run(self) -> None:
        """Start everything and keep it running until SIGINT or SIGTERM (returns) or a failure (raises)."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.start()
            await self.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            await self.stop()

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
        if exc_type is None and self._failure is not None:
            raise SupervisorError(self._failure)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self._stopping:
            self._say(f"received {sig.name}; stopping")
        self._begin_stop()

    def _fail(self, message: str) -> None:
        if self._failure is None:
            self._failure = message
            self._say(message)
        self._begin_stop()

    def _begin_stop(self) -> None:
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._shutdown(), name="devstack-shutdown")

    async def _shutdown(self) -> None:
        async with self._start_lock:  # a start in progress sees _stopping and returns within a poll
            pass
        watchers = list(self._watchers)
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        for child in reversed(self._children):
            await self._terminate(child)
        self._stopped.set()

    async def _launch(self, child: _Child) -> None:
        spec = child.spec
        # Python children would otherwise hold their output in a pipe buffer until it fills.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(spec.env or {})}
        try:
            child.proc = await spawn(spec.argv, env=env, cwd=spec.cwd, user=spec.user)
        except OSError as exc:
            raise SupervisorError(f"cannot start {spec.name}: {exc}") from exc
        child.started_at = time.monotonic()
        assert child.proc.stdout is not None
        child.pump = asyncio.create_task(self._pump(child, child.proc.stdout))
        self._say(f"started {spec.name} (pid {child.proc.pid})")

    async def _until_ready(self, child: _Child) -> None:
        """Return once the child is ready or the stack is stopping; raise if it exits or times out first."""
        spec, proc = child.spec, child.proc
        assert proc is not None
        if spec.ready is None:
            return
        check = functools.partial(port_open, spec.ready) if isinstance(spec.ready, int) else spec.ready
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.ready_timeout
        problem = "no check has passed"
        while not self._stopping:
            if proc.returncode is not None:
                how = describe_exit(proc.returncode)
                raise SupervisorError(f"{spec.name} exited ({how}) before it was ready; its output is above")
            try:
                result = check()
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, max(deadline - loop.time(), 0.1))
                if result:
                    self._say(f"{spec.name} is ready ({time.monotonic() - child.started_at:.1f}s)")
                    return
                problem = "the readiness check returned false"
            except Exception as exc:
                problem = f"last check: {exc!r}"
            if loop.time() >= deadline:
                raise SupervisorError(f"{spec.name} was not ready within {spec.ready_timeout:g}s ({problem})")
            await asyncio.sleep(0.1)

    async def _watch(self, child: _Child) -> None:
        """Restart the child whenever it exits on its own; fail the stack once it runs out of restarts."""
        name = child.spec.name
        while True:
            assert child.proc is not None
            how = describe_exit(await child.proc.wait())
            if self._stopping:
                return
            await self._reap(child)
            if time.monotonic() - child.started_at >= self.stable_after:
                child.restarts = 0
            if child.restarts >= self.max_restarts:
                self._fail(f"{name} exited ({how}) after {child.restarts} restarts; stopping the stack")
                return
            child.restarts += 1
            delay = min(self.backoff * 2 ** (child.restarts - 1), self.max_backoff)
            self._say(f"{name} exited ({how}); restart {child.restarts}/{self.max_restarts} in {delay:g}s")
            await asyncio.sleep(delay)
            try:
                await self._launch(child)
                await self._until_ready(child)
            except SupervisorError as exc:
                if child.proc is not None and child.proc.returncode is not None:
                    continue  # it died again before it was ready: that counts as the next restart
                self._fail(f"{exc}; stopping the stack")
                return

    async def _terminate(self, child: _Child) -> None:
        proc, spec = child.proc, child.spec
        if proc is None:
            return
        if proc.returncode is None:
            self._say(f"stopping {spec.name} ({signal.Signals(spec.stop_signal).name})")
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(spec.stop_signal)
            try:
                await asyncio.wait_for(proc.wait(), self.grace)
            except TimeoutError:
                self._say(f"{spec.name} did not stop within {self.grace:g}s; sending SIGKILL")
        await self._reap(child)

    async def _reap(self, child: _Child) -> None:
        """Kill what is left of the child's process group, collect the child, flush its output, forget it."""
        proc = child.proc
        assert proc is not None
        # The group outlives its leader while any member lives, so this also catches orphaned grandchildren.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if child.pump is not None:
            try:
                await asyncio.wait_for(child.pump, 1.0)
            except TimeoutError:
                pass  # something outside the group holds the pipe open; its output no longer matters
        child.proc = child.pump = None  # so its pid, free for reuse now, is never signalled again

    async def _pump(self, child: _Child, stream: asyncio.StreamReader) -> None:
        pending = b""
        while chunk := await stream.read(_MAX_LINE):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._emit(child.spec.name, child.colour, line)
            if len(pending) >= _MAX_LINE:
                self._emit(child.spec.name, child.colour, pending)
                pending = b""
        if pending:
            self._emit(child.spec.name, child.colour, pending)

    def _say(self, message: str) -> None:
        self._emit(_SELF, 1, message.encode())

    def _emit(self, name: str, colour: int, line: bytes) -> None:
        width = max([len(_SELF), *(len(child.spec.name) for child in self._children)])
        label = f"{name:<{width}}"
        if self._colour:
            label = f"\x1b[{colour}m{label}\x1b[0m"
        self._out.write(f"{label} | {line.decode(errors='replace').rstrip(chr(13))}\n")
        self._out.flush()
