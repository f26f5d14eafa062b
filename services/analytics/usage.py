"""Usage and billing from the one usage ledger (docs/analytics.md "Usage and billing"): who may see whose usage,
the date range, the buckets with their latency percentiles, and the billing period."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from llmlab.runtime import PermissionDenied
from llmlab.runtime.context import ADMIN, Principal
from llmlab.runtime.errors import serving_validation_error as invalid

from . import stats
from .usage_repository import UsageRepository

GRANULARITIES = ("day", "hour")
DEFAULT_DAYS = 30


def subject(caller: Principal | None, requested: str) -> str | None:
    """The user whose usage is read: the caller's own; another's only for an admin. None (everything) for an
    internal caller (no gateway principal) that names nobody."""
    if caller is None:
        return requested or None
    if requested and requested != caller.user_id:
        if not caller.allows(ADMIN):
            raise PermissionDenied("Only an admin may read another user's usage", reason="FORBIDDEN",
                                   metadata={"user_id": requested})
        return requested
    return caller.user_id


def _date(field: str, raw: str) -> dt.date:
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise invalid(field, raw, "must be a date YYYY-MM-DD") from None


@dataclass(frozen=True)
class Range:
    start: dt.date
    end: dt.date
    granularity: str

    @classmethod
    def parse(cls, start: str, end: str, granularity: str, today: dt.date) -> Range:
        granularity = granularity or "day"
        if granularity not in GRANULARITIES:
            raise invalid("granularity", granularity, "must be day or hour")
        e = _date("end_date", end) if end else today
        s = _date("start_date", start) if start else e - dt.timedelta(days=DEFAULT_DAYS - 1)
        if e < s:
            raise invalid("end_date", end, "must not be before start_date")
        return cls(s, e, granularity)

    @property
    def since(self) -> dt.datetime:
        return dt.datetime.combine(self.start, dt.time(), dt.UTC)

    @property
    def until(self) -> dt.datetime:
        return dt.datetime.combine(self.end + dt.timedelta(days=1), dt.time(), dt.UTC)


def bucket_label(at: dt.datetime, granularity: str) -> str:
    at = at.astimezone(dt.UTC)
    return at.date().isoformat() if granularity == "day" else at.strftime("%Y-%m-%dT%H:00:00Z")


async def usage(repo: UsageRepository, user_id: str | None, r: Range, model: str | None) -> dict[str, Any]:
    rows = await repo.buckets(user_id, r.since, r.until, r.granularity, model)
    sketches = await repo.sketches(user_id, r.since, r.until, r.granularity, model)
    data = []
    for row in rows:
        sketch = sketches.get((row["bucket"], row["model"]), {})
        prompt, completion = row["prompt_tokens"], row["completion_tokens"]
        data.append({
            "date": bucket_label(row["bucket"], r.granularity), "model": row["model"], "requests": row["requests"],
            "tokens": {"prompt_tokens": prompt, "completion_tokens": completion,
                       "total_tokens": prompt + completion},
            "cost": {"amount": round(row["cost"], 8), "currency": "USD"},
            "latency": {f"p{q}_ms": round(stats.sketch_percentile(sketch, q / 100), 1) for q in (50, 95, 99)},
        })
    total = {"requests": sum(d["requests"] for d in data),
             "tokens": sum(d["tokens"]["total_tokens"] for d in data),
             "cost": round(sum(row["cost"] for row in rows), 8)}
    return {"data": data, "total": total}


def month_bounds(today: dt.date) -> tuple[dt.date, dt.date, dt.date]:
    """(first day, last day, first day of the next month) of today's UTC calendar month."""
    first = today.replace(day=1)
    following = (first + dt.timedelta(days=32)).replace(day=1)
    return first, following - dt.timedelta(days=1), following
