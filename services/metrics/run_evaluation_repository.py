"""All SQL of run evaluations (POST /evaluations, GET /experiments/{id}/metrics)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass
class RunEvaluation:
    id: str
    experiment_id: str
    run_id: str
    metrics: dict[str, float]
    metadata: dict[str, Any]
    created_at: Any


def _row(r: asyncpg.Record) -> RunEvaluation:
    return RunEvaluation(str(r["id"]), str(r["experiment_id"]), str(r["run_id"]), json.loads(r["metrics"]),
                         json.loads(r["metadata"]), r["created_at"])


class RunEvaluationRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, experiment_id: str, run_id: str, metrics: dict[str, float],
                     metadata: dict[str, Any]) -> RunEvaluation:
        r = await self._pool.fetchrow(
            "INSERT INTO run_evaluations (experiment_id, run_id, metrics, metadata) "
            "VALUES ($1::uuid, $2::uuid, $3::jsonb, $4::jsonb) RETURNING *",
            experiment_id, run_id, json.dumps(metrics), json.dumps(metadata))
        return _row(r)

    async def latest_per_run(self, experiment_id: str) -> list[RunEvaluation]:
        """Each evaluated run's latest evaluation, the run first evaluated first."""
        rows = await self._pool.fetch(
            """SELECT latest.* FROM (
                   SELECT DISTINCT ON (run_id) *, min(seq) OVER (PARTITION BY run_id) AS first_seq
                   FROM run_evaluations WHERE experiment_id = $1::uuid ORDER BY run_id, seq DESC
               ) latest ORDER BY first_seq""", experiment_id)
        return [_row(r) for r in rows]
