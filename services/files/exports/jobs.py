"""Export jobs: every export is a row with a status and progress; small ones render within the request, large ones
(more responses than `export_job_responses`) in the background while the caller polls GET /api/export/jobs/{id}.

A job runs in the replica that accepted it. A replica that stops leaves its jobs "running" without progress; the
next start of any replica marks those failed after ABANDONED_AFTER_S, so nobody waits on them for ever.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from llmlab.runtime import Internal
from llmlab.runtime.envelope import utcnow

from ..repository import ExportRow, TransferRow
from ..servicers.common import Deps, expiry
from ..signing import new_token
from . import source
from .pdf import render_pdf
from .tables import Export, reproducibility
from .tabular import render_csv, render_json
from .xlsx import render_xlsx

log = structlog.get_logger(__name__)

RENDERERS: dict[str, tuple[Callable[[Export], bytes], str]] = {
    "json": (render_json, "application/json"),
    "csv": (render_csv, "text/csv; charset=utf-8"),
    "xlsx": (render_xlsx, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    "pdf": (render_pdf, "application/pdf"),
}
ABANDONED_AFTER_S = 900


class ExportJobs:
    def __init__(self, deps: Deps, inference: grpc.aio.Channel) -> None:
        self._d = deps
        self._inference = inference
        self._running: set[asyncio.Task[None]] = set()

    async def start(self, owner: str, x: Export, fmt: str, stem: str, options: dict[str, Any]) -> ExportRow:
        """Register the export and its download token; render now, or in the background when it is large."""
        export_id = str(uuid.uuid4())
        filename = f"{stem}_{utcnow():%Y%m%d}.{fmt}"
        row = ExportRow(id=export_id, owner_id=owner, kind=x.kind, format=fmt,
                        blob_key=f"exports/{uuid.UUID(export_id).hex}/{filename}", filename=filename,
                        content_type=RENDERERS[fmt][1], token=new_token(), progress=5)
        await self._d.repo.insert_export(row)
        _, _, at = expiry(self._d.settings)
        await self._d.repo.insert_transfer(TransferRow(
            token=row.token, direction="download", target="export", target_id=export_id, blob_key=row.blob_key,
            filename=filename, content_type=row.content_type, expires_at=at, used_at=None,
        ))
        responses = sum(len(e.get("responses", [])) for e in x.experiments)
        if responses > self._d.settings.export_job_responses:
            task = asyncio.create_task(self._run(row, x, options, background=True), name=f"export:{export_id}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        else:
            await self._run(row, x, options, background=False)
        return await self.get(None, export_id)  # type: ignore[return-value]

    async def _run(self, row: ExportRow, x: Export, options: dict[str, Any], *, background: bool) -> None:
        repo = self._d.repo
        try:
            models, engine = await source.model_facts(self._inference, [e.get("model", "") for e in x.experiments])
            x.record = reproducibility(x.experiments, models, engine, options)
            await repo.update_export(row.id, progress=20, record=x.record)
            render = RENDERERS[row.format][0]
            # CPU work (charts, zip) off the event loop, so other RPCs keep being served meanwhile.
            content = await asyncio.to_thread(render, x)
            await repo.update_export(row.id, progress=80)
            await self._d.store.put(row.blob_key, content)
            await repo.update_export(row.id, status="completed", progress=100, size_bytes=len(content))
        except Exception as exc:
            log.exception("export failed", export_id=row.id, format=row.format)
            await repo.update_export(row.id, status="failed", progress=0, error=type(exc).__name__)
            if not background:
                raise Internal("The export could not be rendered") from None

    async def get(self, owner: str | None, export_id: str) -> ExportRow | None:
        return await self._d.repo.get_export(owner, export_id)

    async def sweep(self) -> None:
        failed = await self._d.repo.fail_abandoned_exports(ABANDONED_AFTER_S)
        if failed:
            log.warning("abandoned exports marked failed", count=failed)

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
