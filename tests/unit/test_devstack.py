"""The devstack supervisor: prefixed output, readiness, restarts, ordered stop, no process left behind."""

from __future__ import annotations

import asyncio
import ctypes
import io
import os
import re
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from llmlab.devstack import ProcessSpec, Supervisor, SupervisorError, free_port, port_open

LIBS = Path(__file__).resolve().parents[2] / "libs"
_PR_SET_CHILD_SUBREAPER = 36

# A child that says it is up, then reports the signal that stops it.
CHILD = """
import signal, sys, time
name = sys.argv[1]
def stop(sig, frame):
    print(name, "got", signal.Signals(sig).name, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
print(name, "up", flush=True)
while True:
    time.sleep(1)
"""

LISTENER = """
import socket, sys, time
time.sleep(float(sys.argv[2]))
sock = socket.socket()
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
time.sleep(60)
"""


def py(code: str, *args: object) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]


def child(name: str, **kwargs: object) -> ProcessSpec:
    return ProcessSpec(name, py(CHILD, name), **kwargs)  # type: ignore[arg-type]


def started_pids(output: str) -> dict[str, list[int]]:
    pids: dict[str, list[int]] = {}
    for name, pid in re.findall(r"started (\S+) \(pid (\d+)\)", output):
        pids.setdefault(name, []).append(int(pid))
    return pids


def gone(pid: int) -> bool:
    """True once `pid` no longer exists at all: dead and reaped."""
    return not psutil.pid_exists(pid)


async def eventually(predicate: Callable[[], object]) -> None:
    async with asyncio.timeout(10):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


@pytest.fixture
def subreaper() -> Iterator[Callable[[int], object]]:
    """Make this process adopt orphaned descendants (PID 1 here never reaps), and return a reaper for them."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    assert prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0

    async def reap(pid: int) -> int | None:
        """Wait for the adopted `pid` to die; its wait status, or None if its own parent reaped it first."""
        async with asyncio.timeout(5):
            while True:
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG never blocks
                except ChildProcessError:
                    assert gone(pid)
                    return None
                if done:
                    return status
                await asyncio.sleep(0.02)

    yield reap
    prctl(_PR_SET_CHILD_SUBREAPER, 0)


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


async def test_output_lines_are_prefixed_with_padded_names() -> None:
    out = io.StringIO()
    printer = py("import time; print('one'); print('two'); print('no newline', end=''); time.sleep(60)")
    async with Supervisor([ProcessSpec("a", printer), child("a-longer-name")], output=out):
        await eventually(lambda: "two" in out.getvalue() and "a-longer-name up" in out.getvalue())
        assert "no newline" not in out.getvalue()  # a partial line waits for its newline, or for EOF
    lines = out.getvalue().splitlines()
    assert "a             | one" in lines
    assert "a             | two" in lines
    assert "a             | no newline" in lines
    assert "a-longer-name | a-longer-name up" in lines
    assert any(line.startswith("devstack      | started a (pid ") for line in lines)
    assert "\x1b[" not in out.getvalue()


async def test_names_are_coloured_only_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Terminal()
    async with Supervisor([child("a")], output=out):
        await eventually(lambda: "a up" in out.getvalue())
    assert "\x1b[36ma       \x1b[0m | a up" in out.getvalue().splitlines()


async def test_env_and_cwd_reach_the_child(tmp_path: Path) -> None:
    out = io.StringIO()
    code = (
        "import os, time; print(os.environ['DEVSTACK_X'], os.getcwd(), 'PATH' in os.environ); time.sleep(60)"
    )
    spec = ProcessSpec("a", py(code), env={"DEVSTACK_X": "hello"}, cwd=tmp_path)
    async with Supervisor([spec], output=out):
        await eventually(lambda: "hello" in out.getvalue())
    assert f"a        | hello {tmp_path} True" in out.getvalue().splitlines()


async def test_children_run_in_their_own_session() -> None:
    async with Supervisor([child("a")], output=io.StringIO()) as sup:
        pid = sup.pids()["a"]
        assert os.getsid(pid) == pid
        assert os.getpgid(pid) == pid
        assert os.getsid(pid) != os.getsid(0)


async def test_start_waits_for_each_port_before_starting_the_next() -> None:
    out = io.StringIO()
    port = free_port()
    specs = [ProcessSpec("slow", py(LISTENER, port, 0.5), ready=port), child("next")]
    async with Supervisor(specs, output=out):
        assert await port_open(port)
    text = out.getvalue()
    assert text.index("slow is ready") < text.index("started next")


async def test_start_waits_for_a_readiness_callable(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    code = "import pathlib, sys, time; time.sleep(0.3); pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"

    async def flag_exists() -> bool:
        return flag.exists()

    specs = [
        ProcessSpec("sync", py(code, flag), ready=flag.exists),
        ProcessSpec("async", py("import time; time.sleep(60)"), ready=flag_exists),
    ]
    async with Supervisor(specs, output=io.StringIO()) as sup:
        assert flag.exists()
        assert set(sup.pids()) == {"sync", "async"}


async def test_start_fails_and_stops_the_rest_when_a_process_exits_before_ready() -> None:
    out = io.StringIO()
    specs = [child("a"), ProcessSpec("b", py("import sys; sys.exit(3)"), ready=free_port())]
    with pytest.raises(SupervisorError, match=r"b exited \(exit code 3\) before it was ready"):
        async with Supervisor(specs, output=out):
            pytest.fail("the body must not run")
    assert all(gone(pid) for pids in started_pids(out.getvalue()).values() for pid in pids)


async def test_start_fails_when_a_process_is_not_ready_in_time() -> None:
    out = io.StringIO()
    spec = ProcessSpec("stuck", py("import time; time.sleep(60)"), ready=lambda: False, ready_timeout=0.3)
    sup = Supervisor([spec], output=out, grace=1)
    with pytest.raises(SupervisorError, match=r"stuck was not ready within 0.3s"):
        await sup.start()
    await sup.stop()
    [pid] = started_pids(out.getvalue())["stuck"]
    assert gone(pid)


async def test_start_refuses_a_port_already_in_use() -> None:
    out = io.StringIO()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(SupervisorError, match=f"port {port} is already in use"):
            await Supervisor([ProcessSpec("a", py(LISTENER, port, 0), ready=port)], output=out).start()
    assert "started a" not in out.getvalue()


async def test_a_process_that_dies_is_restarted(tmp_path: Path) -> None:
    out = io.StringIO()
    marker = tmp_path / "crashed-once"
    code = """
    import pathlib, sys, time
    marker = pathlib.Path(sys.argv[1])
    if not marker.exists():
        marker.touch()
        sys.exit(1)
    print("second life", flush=True)
    time.sleep(60)
    """
    async with Supervisor([ProcessSpec("a", py(code, marker))], backoff=0.05, output=out) as sup:
        await eventually(lambda: "second life" in out.getvalue())
        first, second = started_pids(out.getvalue())["a"]
        assert sup.pids() == {"a": second}
        assert gone(first)
    assert "a exited (exit code 1); restart 1/3 in 0.05s" in out.getvalue()


async def test_the_stack_fails_after_max_restarts_with_backoff() -> None:
    out = io.StringIO()
    specs = [child("steady"), ProcessSpec("flaky", py("import sys; sys.exit(2)"))]
    sup = Supervisor(specs, max_restarts=3, backoff=0.01, max_backoff=0.02, output=out)
    with pytest.raises(SupervisorError, match=r"flaky exited \(exit code 2\) after 3 restarts"):
        async with sup:
            await asyncio.wait_for(sup.wait(), 10)
    text = out.getvalue()
    assert "restart 1/3 in 0.01s" in text
    assert "restart 2/3 in 0.02s" in text
    assert "restart 3/3 in 0.02s" in text
    assert "restart 4/3" not in text
    assert "steady got SIGTERM" in text
    pids = started_pids(text)
    assert len(pids["flaky"]) == 4
    assert all(gone(pid) for group in pids.values() for pid in group)


async def test_stop_goes_in_reverse_start_order() -> None:
    out = io.StringIO()
    async with Supervisor([child("a"), child("b"), child("c")], output=out):
        await eventually(lambda: "c up" in out.getvalue())
    text = out.getvalue()
    assert text.index("c got SIGTERM") < text.index("b got SIGTERM") < text.index("a got SIGTERM")
    assert all(gone(pid) for [pid] in started_pids(text).values())


async def test_stop_signal_is_configurable() -> None:
    out = io.StringIO()
    async with Supervisor([child("a", stop_signal=signal.SIGINT)], output=out):
        await eventually(lambda: "a up" in out.getvalue())
    assert "a got SIGINT" in out.getvalue()


async def test_a_process_ignoring_its_stop_signal_is_killed_after_the_grace_period() -> None:
    out = io.StringIO()
    code = (
        "import signal as s, time; s.signal(s.SIGTERM, s.SIG_IGN); print('armed', flush=True); time.sleep(60)"
    )
    async with Supervisor([ProcessSpec("stubborn", py(code))], grace=0.3, output=out) as sup:
        await eventually(lambda: "armed" in out.getvalue())
        pid = sup.pids()["stubborn"]
        began = time.monotonic()
        await sup.stop()
        assert 0.3 <= time.monotonic() - began < 3
    assert "stubborn did not stop within 0.3s; sending SIGKILL" in out.getvalue()
    assert gone(pid)


async def test_grandchildren_are_killed_with_their_parent(subreaper: Callable[..., object]) -> None:
    out = io.StringIO()
    async with Supervisor(
        [ProcessSpec("shell", ["bash", "-c", "sleep 60 & echo grandchild $!; wait"])], output=out
    ):
        await eventually(lambda: "grandchild" in out.getvalue())
    grandchild = int(re.search(r"grandchild (\d+)", out.getvalue())[1])  # type: ignore[index]
    status = await subreaper(grandchild)  # type: ignore[misc]
    assert status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


STACK = """
import asyncio, sys
from llmlab.devstack import ProcessSpec, Supervisor
specs = [ProcessSpec(name, [sys.executable, "-c", sys.argv[1], name]) for name in ("a", "b")]
asyncio.run(Supervisor(specs, grace=5).run())
print("supervisor returned", flush=True)
"""


async def _start_stack() -> tuple[asyncio.subprocess.Process, dict[str, int], list[str]]:
    """Run a two-child supervisor in its own process (and process group, like a shell job)."""
    env = {**os.environ, "PYTHONPATH": str(LIBS), "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        *py(STACK, textwrap.dedent(CHILD)), stdout=asyncio.subprocess.PIPE, env=env, process_group=0
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while not {"a | a up", "b | b up"} <= {" ".join(line.split()) for line in lines}:
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line, f"supervisor ended early: {lines}"
        lines.append(line.decode().rstrip("\n"))
    pids = {name: pids[0] for name, pids in started_pids("\n".join(lines)).items()}
    return proc, pids, lines


async def _finish(proc: asyncio.subprocess.Process, lines: list[str]) -> str:
    assert proc.stdout is not None
    rest, _ = await asyncio.wait_for(proc.communicate(), 15)
    return "\n".join(lines) + "\n" + rest.decode()


async def test_sigterm_to_the_supervisor_stops_children_in_order_and_reaps_them() -> None:
    proc, pids, lines = await _start_stack()
    proc.send_signal(signal.SIGTERM)
    text = await _finish(proc, lines)
    assert proc.returncode == 0
    assert "received SIGTERM; stopping" in text
    assert text.index("b got SIGTERM") < text.index("a got SIGTERM")
    assert "supervisor returned" in text
    assert gone(pids["a"]) and gone(pids["b"])


async def test_ctrl_c_reaches_only_the_supervisor_which_stops_the_children() -> None:
    proc, pids, lines = await _start_stack()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: SIGINT to the foreground group
    text = await _finish(proc, lines)
    assert proc.returncode == 0
    assert "received SIGINT; stopping" in text
    assert "a got SIGTERM" in text and "b got SIGTERM" in text
    assert "got SIGINT" not in text
    assert gone(pids["a"]) and gone(pids["b"])


async def test_killing_the_supervisor_outright_kills_its_children(subreaper: Callable[..., object]) -> None:
    proc, pids, _ = await _start_stack()
    proc.kill()
    await proc.wait()
    statuses = [await subreaper(pid) for pid in pids.values()]  # type: ignore[misc]
    # A child can die while a dying supervisor thread still waits on it, which then reaps it itself.
    assert all(os.WTERMSIG(status) == signal.SIGKILL for status in statuses if status is not None)
