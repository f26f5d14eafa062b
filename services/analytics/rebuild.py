"""Rebuild the analytics read model from the event streams: python -m services.analytics.rebuild.

Every read-model table is emptied and each stream is replayed from its first retained entry through the same
projection the live consumer uses, in one transaction under the rebuild lock (live batches wait for it); the
consumer group is then moved to the last replayed entry, so the live consumer continues without a gap or a
double count. Streams keep their last ~100,000 entries (EventPublisher's MAXLEN); older history is restored from a
snapshot of the schema instead (docs/analytics.md "Rebuild").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import asyncpg
from redis.exceptions import ResponseError

from llmlab.runtime import load_settings
from llmlab.runtime.redis_client import create_redis
from llmlab.runtime.streams import decode_entry, stream_key

from .projector import REBUILD_LOCK, apply_batch
from .settings import AnalyticsSettings

TABLES = ("processed_events", "responses", "experiments", "activity", "daily_model", "daily_experiments",
          "daily_combos", "combo_experiments", "daily_pairs", "usage_hourly", "usage_latency", "failure_minutes",
          "jobs", "combo_totals", "pair_totals")
PAGE = 2000


async def rebuild(settings: AnalyticsSettings, *, out=sys.stdout) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Replay every stream into an emptied read model; returns the events replayed per stream."""
    client = create_redis(settings.redis_url)
    conn = await asyncpg.connect(settings.database_url,
                                 server_settings={"search_path": f"{settings.db_schema},public"})
    counts: dict[str, int] = {}
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", REBUILD_LOCK)
            await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
            for stream in settings.streams:
                key = stream_key(settings.redis_prefix, stream)
                start, last, n = "-", None, 0
                while True:
                    page = await client.xrange(key, min=start, count=PAGE)
                    if not page:
                        break
                    await apply_batch(conn, stream, [decode_entry(i, f) for i, f in page])
                    n += len(page)
                    last = page[-1][0].decode() if isinstance(page[-1][0], bytes) else page[-1][0]
                    start = f"({last}"
                counts[stream] = n
                if last is not None:
                    try:
                        await client.xgroup_setid(key, settings.consumer_group, last)
                    except ResponseError:
                        await client.xgroup_create(key, settings.consumer_group, id=last, mkstream=True)
                print(f"{stream}: {n} events replayed", file=out)
    finally:
        await conn.close()
        await client.aclose()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()  # no options: --help describes the command
    settings = load_settings(AnalyticsSettings, "analytics")
    started = time.perf_counter()
    counts = asyncio.run(rebuild(settings))
    print(f"rebuilt from {sum(counts.values())} events in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
