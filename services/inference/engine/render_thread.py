"""The engine's render thread: batch.py renders a decode step's events while the model runs the next one."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class RenderThread:
    """The thread that renders a decode step while the next one runs: `prepare` a job, `start` it right before the
    model runs, `finish` waits for it (or runs it in place if it never started). Errors are logged, never raised."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[object, ...]] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._job: tuple[Callable[..., None], tuple[object, ...]] | None = None
        self._running = False
        self._thread = threading.Thread(target=self._work, name="engine-render", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            _call(*job)
            self._done.put(None)

    def prepare(self, fn: Callable[..., None], *args: object) -> None:
        self._job = (fn, args)

    def start(self) -> None:
        if self._job is not None:
            self._jobs.put(self._job)
            self._job = None
            self._running = True

    def finish(self) -> None:
        if self._running:
            self._done.get()
            self._running = False
        elif self._job is not None:
            job, self._job = self._job, None
            _call(*job)

    def close(self) -> None:
        self.finish()
        self._jobs.put(None)
        self._thread.join()


def _call(fn: Callable[..., None], args: tuple[object, ...]) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("rendering a decode step failed")
