"""All SQL over `batches` and `batch_lines` (migrations/0006_batches.sql). `owner` None means an internal caller.

The rules that make a batch exact: a line's result is written by one conditional UPDATE (`outcome IS NULL`) in the
same transaction as the count it moves, and only while the batch is not sealed; the finalizer seals the batch
before it reads the lines into files, and completes it with one UPDATE fenced by its attempt.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from .domain import Line, chunk_of

_OWNER = "($1::text IS NULL OR owner_id = $1)"
RUNNING = ("in_progress", "cancelling")


@dataclass
class BatchRow:
    id: str
    owner_id: str
    principal: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    metadata: dict[str, str]
    errors: dict[str, Any] | None
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    chunks: int
    attempt: int
    sealed: bool
    created_at: dt.datetime
    expires_at: dt.datetime
    in_progress_at: dt.datetime | None
    finalizing_at: dt.datetime | None
    completed_at: dt.datetime | None
    failed_at: dt.datetime | None
    expired_at: dt.datetime | None
    cancelling_at: dt.datetime | None
    cancelled_at: dt.datetime | None


@dataclass
class LineRow:
    line_index: int
    custom_id: str | None
    request: dict[str, Any] | None
    outcome: str | None
    result: dict[str, Any] | None


def _batch(r: asyncpg.Record) -> BatchRow:
    d = dict(r)
    d.pop("lease_until", None)
    d["metadata"] = json.loads(d["metadata"]) if d["metadata"] else {}
    d["errors"] = json.loads(d["errors"]) if d["errors"] else None
    return BatchRow(**d)


def _line(r: asyncpg.Record) -> LineRow:
    return LineRow(r["line_index"], r["custom_id"], json.loads(r["request"]) if r["request"] else None,
                   r["outcome"], json.loads(r["result"]) if r["result"] else None)


class BatchRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- the API's side ------------------------------------------------------------------------------------------

    async def insert(self, batch_id: str, owner: str, principal: str, endpoint: str, input_file_id: str,
                     window: str, window_s: int, metadata: dict[str, str]) -> BatchRow:
        r = await self._pool.fetchrow(
            """INSERT INTO batches (id, owner_id, principal, endpoint, input_file_id, completion_window, metadata,
                                  expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, now() + make_interval(secs => $8)) RETURNING *""",
            batch_id, owner, principal, endpoint, input_file_id, window, json.dumps(metadata), window_s,
        )
        return _batch(r)

    async def get(self, owner: str | None, batch_id: str) -> BatchRow | None:
        r = await self._pool.fetchrow(f"SELECT * FROM batches WHERE {_OWNER} AND id = $2", owner, batch_id)
        return _batch(r) if r else None

    async def list(self, owner: str | None, limit: int, after: str) -> tuple[list[BatchRow], bool]:
        """Newest first; `after` is the last id of the previous page (an unknown id gives an empty page)."""
        if after:
            rows = await self._pool.fetch(
                f"""SELECT * FROM batches WHERE {_OWNER} AND (created_at, id) <
                        (SELECT created_at, id FROM batches WHERE id = $3)
                    ORDER BY created_at DESC, id DESC LIMIT $2""", owner, limit + 1, after)
        else:
            rows = await self._pool.fetch(
                f"SELECT * FROM batches WHERE {_OWNER} ORDER BY created_at DESC, id DESC LIMIT $2", owner, limit + 1)
        return [_batch(r) for r in rows[:limit]], len(rows) > limit

    async def cancel(self, owner: str | None, batch_id: str) -> BatchRow | None:
        """validating or in_progress -> cancelling; other states are returned unchanged (the caller refuses them)."""
        r = await self._pool.fetchrow(
            f"""UPDATE batches SET status = 'cancelling', cancelling_at = now()
                WHERE {_OWNER} AND id = $2 AND status IN ('validating', 'in_progress') RETURNING *""",
            owner, batch_id)
        return _batch(r) if r else await self.get(owner, batch_id)

    async def fail_unqueued(self, batch_id: str, message: str) -> None:
        await self._pool.execute(
            """UPDATE batches SET status = 'failed', failed_at = now(), sealed = true,
                      errors = jsonb_build_object('object', 'list', 'data', jsonb_build_array(jsonb_build_object(
                          'code', 'server_error', 'message', $2::text, 'param', NULL, 'line', NULL)))
               WHERE id = $1 AND status = 'validating'""", batch_id, message)

    # -- validation ----------------------------------------------------------------------------------------------

    async def claim_validation(self, batch_id: str) -> BatchRow | None:
        r = await self._pool.fetchrow(
            "UPDATE batches SET attempt = attempt + 1 WHERE id = $1 AND status = 'validating' RETURNING *", batch_id)
        return _batch(r) if r else None

    async def start(self, batch_id: str, attempt: int, lines: list[Line], chunk_lines: int) -> int | None:
        """Store the lines and move validating -> in_progress, in one transaction fenced by the attempt; the number
        of chunks, or None when the attempt no longer counts (cancelled, or another worker's)."""
        chunks = chunk_of(len(lines) - 1, chunk_lines) + 1 if lines else 0
        async with self._pool.acquire() as conn, conn.transaction():
            ok = await conn.fetchval(
                """UPDATE batches SET status = 'in_progress', in_progress_at = now(), total = $3, chunks = $4
                   WHERE id = $1 AND attempt = $2 AND status = 'validating' RETURNING 1""",
                batch_id, attempt, len(lines), chunks)
            if ok is None:
                return None
            await conn.copy_records_to_table(
                "batch_lines", columns=["batch_id", "line_index", "chunk", "custom_id", "request"],
                records=[(batch_id, ln.index, chunk_of(ln.index, chunk_lines), ln.custom_id,
                          json.dumps(ln.body) if ln.body is not None else None) for ln in lines])
            # Lines that cannot run are decided now: their error lines are written with the others.
            bad = [(ln.index, json.dumps(ln.error)) for ln in lines if ln.error is not None]
            if bad:
                await conn.executemany(
                    """UPDATE batch_lines SET outcome = 'failed', result = jsonb_build_object('error', $3::jsonb),
                              finished_at = now() WHERE batch_id = $1 AND line_index = $2""",
                    [(batch_id, i, e) for i, e in bad])
                await conn.execute("UPDATE batches SET failed = $2 WHERE id = $1", batch_id, len(bad))
        return chunks

    async def fail_validation(self, batch_id: str, attempt: int, errors: list[dict[str, Any]]) -> bool:
        done = await self._pool.fetchval(
            """UPDATE batches SET status = 'failed', failed_at = now(), sealed = true,
                      errors = jsonb_build_object('object', 'list', 'data', $3::jsonb)
               WHERE id = $1 AND attempt = $2 AND status = 'validating' RETURNING 1""",
            batch_id, attempt, json.dumps(errors))
        return done is not None

    async def pending_chunks(self, batch_id: str) -> list[int]:
        rows = await self._pool.fetch(
            "SELECT DISTINCT chunk FROM batch_lines WHERE batch_id = $1 AND outcome IS NULL ORDER BY chunk", batch_id)
        return [r["chunk"] for r in rows]

    # -- lines ---------------------------------------------------------------------------------------------------

    async def chunk_lines(self, batch_id: str, chunk: int) -> list[LineRow]:
        """The chunk's lines still to run, marked as running now."""
        rows = await self._pool.fetch(
            """UPDATE batch_lines SET started_at = now()
               WHERE batch_id = $1 AND chunk = $2 AND outcome IS NULL RETURNING *""", batch_id, chunk)
        return sorted((_line(r) for r in rows), key=lambda ln: ln.line_index)

    async def renew(self, batch_id: str, indices: list[int]) -> str | None:
        """Keep the running lines marked as running; the batch's status (None when it is sealed)."""
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.fetchval("SELECT status FROM batches WHERE id = $1 AND NOT sealed", batch_id)
            if status is not None and indices:
                await conn.execute(
                    """UPDATE batch_lines SET started_at = now()
                       WHERE batch_id = $1 AND line_index = ANY($2::int[]) AND outcome IS NULL""", batch_id, indices)
            return status

    async def finish_line(self, batch_id: str, index: int, outcome: str, result: dict[str, Any]) -> bool:
        """Write a line's result once, with its count; False when it was written already or the batch is sealed."""
        column = "completed" if outcome == "completed" else "failed"
        try:
            return await self._finish_line(batch_id, index, column, outcome, result)
        except _AlreadyWritten:
            return False

    async def _finish_line(self, batch_id: str, index: int, column: str, outcome: str, result: dict[str, Any]
                           ) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            # The batch row first: its lock orders this write against the finalizer's seal.
            ok = await conn.fetchval(
                f"""UPDATE batches SET {column} = {column} + 1
                    WHERE id = $1 AND NOT sealed AND status = ANY($2::text[]) RETURNING 1""", batch_id, list(RUNNING))
            if ok is None:
                return False
            written = await conn.fetchval(
                """UPDATE batch_lines SET outcome = $3, result = $4::jsonb, finished_at = now()
                   WHERE batch_id = $1 AND line_index = $2 AND outcome IS NULL RETURNING 1""",
                batch_id, index, outcome, json.dumps(result))
            if written is None:
                raise _AlreadyWritten  # rolls the count back
        return True

    # -- finalizing ----------------------------------------------------------------------------------------------

    async def due(self, lease_s: float) -> list[tuple[str, str]]:
        """Batches a finalizer should take now, with the status they end in: in_progress with every line written
        (completed), past their window (expired), cancelling with no line running (cancelled), or a finalizing
        one whose finalizer's lease ran out."""
        rows = await self._pool.fetch(
            """SELECT b.id, CASE
                   WHEN b.status = 'finalizing' THEN 'completed'
                   WHEN b.status = 'cancelling' THEN 'cancelled'
                   WHEN b.expires_at <= now() THEN 'expired'
                   ELSE 'completed' END AS target
               FROM batches b
               WHERE (b.lease_until IS NULL OR b.lease_until < now()) AND (
                   (b.status = 'finalizing')
                OR (b.status = 'in_progress' AND (b.expires_at <= now() OR NOT EXISTS (
                        SELECT 1 FROM batch_lines l WHERE l.batch_id = b.id AND l.outcome IS NULL)))
                OR (b.status = 'cancelling' AND NOT EXISTS (
                        SELECT 1 FROM batch_lines l WHERE l.batch_id = b.id AND l.outcome IS NULL
                        AND l.started_at > now() - make_interval(secs => $1))))
               LIMIT 50""", lease_s)
        return [(r["id"], r["target"]) for r in rows]

    async def seal(self, batch_id: str, target: str, lease_s: float, unrun: dict[str, Any]) -> BatchRow | None:
        """Claim the batch for finalizing (a lease and a new attempt) and seal it: no line is written after this;
        lines that never ran get `unrun` as their error (expired, cancelled). None when another finalizer holds it
        or it has ended."""
        async with self._pool.acquire() as conn, conn.transaction():
            r = await conn.fetchrow(
                """UPDATE batches SET attempt = attempt + 1, sealed = true,
                          lease_until = now() + make_interval(secs => $2),
                          status = CASE WHEN status = 'in_progress' AND $3 = 'completed' THEN 'finalizing'
                                        ELSE status END,
                          finalizing_at = CASE WHEN status = 'in_progress' AND $3 = 'completed' THEN now()
                                               ELSE finalizing_at END
                   WHERE id = $1 AND status IN ('in_progress', 'finalizing', 'cancelling')
                     AND (lease_until IS NULL OR lease_until < now()) RETURNING *""", batch_id, lease_s, target)
            if r is None:
                return None
            n = await conn.fetchval(
                """WITH u AS (UPDATE batch_lines SET outcome = 'failed', finished_at = now(),
                                     result = jsonb_build_object('error', $2::jsonb)
                              WHERE batch_id = $1 AND outcome IS NULL RETURNING 1)
                   SELECT count(*) FROM u""", batch_id, json.dumps(unrun))
            if n:
                r = await conn.fetchrow("UPDATE batches SET failed = failed + $2 WHERE id = $1 RETURNING *",
                                        batch_id, n)
        return _batch(r)

    async def all_lines(self, batch_id: str) -> list[LineRow]:
        rows = await self._pool.fetch("SELECT * FROM batch_lines WHERE batch_id = $1 ORDER BY line_index", batch_id)
        return [_line(r) for r in rows]

    async def finish(self, batch_id: str, attempt: int, status: str, output_file_id: str | None,
                     error_file_id: str | None) -> BatchRow | None:
        """The finalizer's result becomes the batch's, once (fenced by its attempt)."""
        stamp = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}[status]
        r = await self._pool.fetchrow(
            f"""UPDATE batches SET status = $3, {stamp} = now(), output_file_id = $4, error_file_id = $5,
                       lease_until = NULL
                WHERE id = $1 AND attempt = $2 AND sealed AND status IN ('finalizing', 'in_progress', 'cancelling')
                RETURNING *""", batch_id, attempt, status, output_file_id, error_file_id)
        return _batch(r) if r else None


class _AlreadyWritten(Exception):
    """The line's result exists: the transaction that counted it again is rolled back."""
