"""Running a request's choices concurrently and merging their event streams (n > 1, batch endpoints)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from .domain import GenerationEvent
from .engine import EngineError
from .errors import engine_error

_END = object()


async def merge_streams(
    streams: list[AsyncGenerator[GenerationEvent, None]],
) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """Yield (choice index, event) as events arrive from all streams. An exception raised by a stream (e.g. the
    engine refusing a request) is raised here, mapped to a domain error. Leaving early - a client gone, a task
    cancelled - closes every stream, which frees their engine slots."""
    queue: asyncio.Queue[tuple[int, object, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[GenerationEvent, None]) -> None:
        try:
            async for event in stream:
                await queue.put((index, event, None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await queue.put((index, _END, exc))
            return
        await queue.put((index, _END, None))

    tasks = [asyncio.create_task(pump(i, s), name=f"choice-{i}") for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item, exc = await queue.get()
            if exc is not None:
                raise engine_error(exc) if isinstance(exc, EngineError) else exc
            if item is _END:
                remaining -= 1
                continue
            assert isinstance(item, GenerationEvent)
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()
