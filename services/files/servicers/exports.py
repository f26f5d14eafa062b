"""ExportService: seed 000 §8 — experiments as JSON, CSV, XLSX or PDF behind a signed, expiring export_url."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from llmlab.files.v1 import exports_service_pb2 as pb
from llmlab.files.v1 import exports_service_pb2_grpc as pb_grpc
from llmlab.runtime import validation_error
from llmlab.runtime.envelope import meta, utcnow

from .. import domain
from ..exports import source
from ..exports.pdf import render_pdf
from ..exports.tables import Export, reproducibility
from ..exports.tabular import render_csv, render_json
from ..exports.xlsx import render_xlsx
from ..repository import TransferRow
from ..signing import new_token
from .common import Deps, base_url, expiry, owner_id

RENDERERS: dict[str, tuple[Callable[[Export], bytes], str]] = {
    "json": (render_json, "application/json"),
    "csv": (render_csv, "text/csv; charset=utf-8"),
    "xlsx": (render_xlsx, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    "pdf": (render_pdf, "application/pdf"),
}
SYSTEM_OWNER = "system"


class ExportServicer(pb_grpc.ExportServiceServicer):
    def __init__(self, deps: Deps, experiments: grpc.aio.Channel, inference: grpc.aio.Channel) -> None:
        self._d = deps
        self._experiments = experiments
        self._inference = inference

    async def _record(self, exps: list[dict[str, Any]], options: dict[str, Any]) -> dict[str, Any]:
        models, engine = await source.model_facts(self._inference, [e.get("model", "") for e in exps])
        return reproducibility(exps, models, engine, options)

    async def _publish(self, x: Export, fmt: str, stem: str, context: Any) -> pb.ExportData:
        render, content_type = RENDERERS[fmt]
        # Rendering is CPU work (charts, zip): off the event loop, so other RPCs keep being served.
        content = await asyncio.to_thread(render, x)
        filename = f"{stem}_{utcnow():%Y%m%d}.{fmt}"
        export_key = f"exports/{uuid.uuid4().hex}/{filename}"
        await self._d.store.put(export_key, content)
        export_id = await self._d.repo.insert_export(owner_id() or SYSTEM_OWNER, x.kind, fmt, export_key, filename,
                                                     content_type, len(content), x.record)
        expires, expires_at, at = expiry(self._d.settings)
        token = new_token()
        await self._d.repo.insert_transfer(TransferRow(
            token=token, direction="download", target="export", target_id=export_id, blob_key=export_key,
            filename=filename, content_type=content_type, expires_at=at, used_at=None,
        ))
        url = self._d.signer.download_url(base_url(self._d.settings, context), token, filename, expires)
        return pb.ExportData(export_url=url, expires_at=expires_at, file_size=domain.human_size(len(content)),
                             format=fmt)

    async def ExportExperiment(self, request: pb.ExportExperimentRequest, context: Any
                               ) -> pb.ExportExperimentResponse:
        fmt = domain.export_format(request.format, "json")
        if request.id < 1:
            raise validation_error("id", request.id, "must be a positive experiment id")
        include_responses = request.include_responses if request.HasField("include_responses") else True
        include_metrics = request.include_metrics if request.HasField("include_metrics") else True
        exp = await source.experiment(self._experiments, request.id)
        options = {"format": fmt, "include_responses": include_responses, "include_metrics": include_metrics}
        x = Export("experiment", f"Experiment {exp.get('id')}: {exp.get('name', '')}", [exp],
                   include_responses=include_responses, include_metrics=include_metrics,
                   record=await self._record([exp], options), subtitle=f"model {exp.get('model', '')}")
        data = await self._publish(x, fmt, f"experiment_{request.id}", context)
        return pb.ExportExperimentResponse(success=True, data=data, meta=meta())

    async def ExportBatch(self, request: pb.ExportBatchRequest, context: Any) -> pb.ExportBatchResponse:
        fmt = domain.export_format(request.format, "csv")
        ids = domain.experiment_ids(list(request.experiment_ids))
        include_analysis = request.include_analysis if request.HasField("include_analysis") else False
        exps = await source.experiments(self._experiments, ids)
        options = {"format": fmt, "experiment_ids": ids, "include_analysis": include_analysis}
        x = Export("batch", f"Experiments {', '.join(map(str, ids[:10]))}{' …' if len(ids) > 10 else ''}", exps,
                   include_analysis=include_analysis, record=await self._record(exps, options))
        data = await self._publish(x, fmt, f"experiments_{len(ids)}", context)
        return pb.ExportBatchResponse(success=True, data=data, meta=meta())

    async def GenerateReport(self, request: pb.GenerateReportRequest, context: Any) -> pb.GenerateReportResponse:
        report_type = request.report_type or "quality_analysis"
        if report_type not in domain.REPORT_TYPES:
            raise validation_error("report_type", report_type, "must be one of " + ", ".join(domain.REPORT_TYPES))
        fmt = domain.export_format(request.format, "pdf")
        has_range = request.HasField("date_range") and bool(request.date_range.to or getattr(request.date_range,
                                                                                               "from"))
        ids = domain.experiment_ids(list(request.experiment_ids), allow_empty=has_range)
        start, end = (getattr(request.date_range, "from"), request.date_range.to) if has_range else ("", "")
        in_range = await source.ids_in_range(self._experiments, start, end) if has_range else None
        if ids and in_range is not None:
            ids = [i for i in ids if i in set(in_range)]
        elif in_range is not None:
            ids = in_range
        exps = await source.experiments(self._experiments, ids)
        options = {"report_type": report_type, "format": fmt, "experiment_ids": ids,
                   "date_range": {"from": start or None, "to": end or None} if has_range else None}
        subtitle = f"{start or '…'} to {end or '…'}" if has_range else f"{len(ids)} experiment(s)"
        x = Export("report", "Quality analysis report", exps, include_responses=False, include_analysis=True,
                   record=await self._record(exps, options), subtitle=subtitle)
        data = await self._publish(x, fmt, report_type, context)
        return pb.GenerateReportResponse(success=True, data=data, meta=meta())
