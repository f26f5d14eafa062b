"""All SQL over `training_jobs` and `training_job_events` (migrations/0016_training_jobs.sql).

A job is taken by one worker at a time: `claim` bumps `attempt` and names the worker; every later write of that
worker is conditional on its attempt, so a worker that lost the job (paused, cancelled, reclaimed after it was
presumed dead) notices at its next write and stops. `updated_at` is the worker's heartbeat."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, fields
from typing import Any

import asyncpg

ACTIVE = ("pending", "validating_files", "queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass
class JobRow:
    id: int
    public_id: str
    family: str
    owner_id: str
    model_id: str
    job_name: str
    status: str
    epochs: int
    learning_rate: float
    batch_size: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    seed: int
    max_length: int
    suffix: str | None
    training_file: str | None
    validation_file: str | None
    progress: float
    current_epoch: int
    current_loss: float | None
    step: int
    total_steps: int | None
    trained_tokens: int | None
    logs: str
    metrics: list[dict[str, Any]]
    error: dict[str, Any] | None
    fine_tuned_model: str | None
    result_files: list[str]
    attempt: int
    worker: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    updated_at: dt.datetime

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> JobRow:
        d = {f.name: r[f.name] for f in fields(cls)}
        d["metrics"] = json.loads(d["metrics"]) if isinstance(d["metrics"], str) else d["metrics"]
        d["result_files"] = list(d["result_files"] or [])
        if isinstance(d["error"], str):
            d["error"] = json.loads(d["error"])
        return cls(**d)


@dataclass
class NewJob:
    public_id: str
    family: str
    owner_id: str
    model_id: str
    job_name: str
    status: str
    epochs: int
    learning_rate: float
    batch_size: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    seed: int
    max_length: int
    suffix: str | None
    training_file: str | None
    validation_file: str | None
    training_data: str
    validation_data: str | None


_COLUMNS = ", ".join(f.name for f in fields(JobRow))


@dataclass(frozen=True)
class Event:
    id: int
    level: str
    type: str
    message: str
    data: dict[str, Any] | None
    created_at: dt.datetime


class TrainingRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, job: NewJob) -> JobRow:
        names = [f.name for f in fields(NewJob)]
        sql = (f"INSERT INTO training_jobs ({', '.join(names)}) VALUES "
               f"({', '.join(f'${i + 1}' for i in range(len(names)))}) RETURNING {_COLUMNS}")
        row = await self._pool.fetchrow(sql, *(getattr(job, n) for n in names))
        return JobRow.from_record(row)

    async def list(self, *, family: str | None = None, owner: str | None = None, after: int | None = None,
                   limit: int | None = None) -> list[JobRow]:
        """Newest first; `after` (a job id) pages on from that job."""
        where, args = ["true"], []
        if family is not None:
            args.append(family)
            where.append(f"family = ${len(args)}")
        if owner is not None:
            args.append(owner)
            where.append(f"owner_id = ${len(args)}")
        if after is not None:
            args.append(after)
            where.append(f"(created_at, id) < (SELECT created_at, id FROM training_jobs WHERE id = ${len(args)})")
        sql = f"SELECT {_COLUMNS} FROM training_jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC"
        if limit is not None:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        return [JobRow.from_record(r) for r in await self._pool.fetch(sql, *args)]

    async def get(self, job_id: int) -> JobRow | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM training_jobs WHERE id = $1", job_id)
        return JobRow.from_record(row) if row else None

    async def get_public(self, public_id: str) -> JobRow | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM training_jobs WHERE public_id = $1", public_id)
        return JobRow.from_record(row) if row else None

    async def data(self, job_id: int) -> tuple[str, str | None]:
        row = await self._pool.fetchrow(
            "SELECT training_data, validation_data FROM training_jobs WHERE id = $1", job_id)
        return row["training_data"], row["validation_data"]

    async def counts(self) -> dict[str, int]:
        rows = await self._pool.fetch("SELECT status, count(*) AS n FROM training_jobs GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}

    # --- transitions asked for by the API

    async def transition(self, job_id: int, allowed: tuple[str, ...], to: str, *,
                         finished: bool = False) -> JobRow | None:
        """Move a job from one of `allowed` to `to`; None when it was in another state (the caller says 409)."""
        row = await self._pool.fetchrow(
            f"UPDATE training_jobs SET status = $3, updated_at = now(),"
            f" completed_at = CASE WHEN $4 THEN now() ELSE completed_at END"
            f" WHERE id = $1 AND status = ANY($2::text[]) RETURNING {_COLUMNS}",
            job_id, list(allowed), to, finished)
        return JobRow.from_record(row) if row else None

    # --- the worker's side

    async def claim(self, job_id: int, worker: str, stale_s: float) -> JobRow | None:
        """Take an active job: when nobody holds it, or its holder's heartbeat is older than `stale_s`."""
        row = await self._pool.fetchrow(
            f"UPDATE training_jobs SET status = 'running', attempt = attempt + 1, worker = $2, updated_at = now(),"
            f" started_at = coalesce(started_at, now())"
            f" WHERE id = $1 AND status IN ('pending', 'validating_files', 'queued', 'running')"
            f" AND (worker IS NULL OR worker = $2 OR updated_at < now() - make_interval(secs => $3))"
            f" RETURNING {_COLUMNS}",
            job_id, worker, stale_s)
        return JobRow.from_record(row) if row else None

    async def report(self, job_id: int, attempt: int, **values: Any) -> str | None:
        """Write progress as the holder of `attempt`; returns the job's status, or None when the attempt lost the
        job (another worker took it over). A paused or cancelled job still takes the write (its last figures)."""
        sets, args = ["updated_at = now()"], [job_id, attempt]
        for name, v in values.items():
            args.append(json.dumps(v) if name in ("metrics", "error") else v)
            sets.append(f"{name} = ${len(args)}")
        row = await self._pool.fetchrow(
            f"UPDATE training_jobs SET {', '.join(sets)} WHERE id = $1 AND attempt = $2 RETURNING status", *args)
        return row["status"] if row else None

    async def release(self, job_id: int, attempt: int) -> None:
        """The worker's trainer has exited: the job is free for whoever resumes it."""
        await self._pool.execute(
            "UPDATE training_jobs SET worker = NULL, updated_at = now() WHERE id = $1 AND attempt = $2",
            job_id, attempt)

    async def finish(self, job_id: int, attempt: int, status: str, *, error: dict[str, Any] | None = None,
                     fine_tuned_model: str | None = None, result_files: list[str] | None = None) -> bool:
        """End the job (succeeded / failed) as the holder of `attempt`, unless it was cancelled meanwhile."""
        row = await self._pool.fetchrow(
            "UPDATE training_jobs SET status = $3, error = $4, fine_tuned_model = $5, completed_at = now(),"
            " worker = NULL, updated_at = now(), result_files = $6,"
            " progress = CASE WHEN $3 = 'succeeded' THEN 100 ELSE progress END"
            " WHERE id = $1 AND attempt = $2 AND status IN ('running', 'paused') RETURNING id",
            job_id, attempt, status, json.dumps(error) if error is not None else None, fine_tuned_model,
            result_files or [])
        return row is not None

    async def add_event(self, job_id: int, message: str, *, level: str = "info", type: str = "message",
                        data: dict[str, Any] | None = None, log: bool = True) -> None:
        """An event (OpenAI's events list); `log` also appends it to the lab's `logs`."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO training_job_events (job_id, level, type, message, data) VALUES ($1, $2, $3, $4, $5)",
                job_id, level, type, message, json.dumps(data) if data is not None else None)
            if log:
                await conn.execute(
                    "UPDATE training_jobs SET logs = CASE WHEN logs = '' THEN $2 ELSE logs || E'\\n' || $2 END"
                    " WHERE id = $1", job_id, message)

    async def events(self, job_id: int, *, after: int | None = None, limit: int = 20) -> list[Event]:
        """Newest first, as OpenAI lists them."""
        rows = await self._pool.fetch(
            "SELECT id, level, type, message, data, created_at FROM training_job_events"
            " WHERE job_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
            job_id, after, limit)
        return [Event(r["id"], r["level"], r["type"], r["message"],
                      json.loads(r["data"]) if r["data"] else None, r["created_at"]) for r in rows]
