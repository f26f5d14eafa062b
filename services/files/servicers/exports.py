"""ExportService: `/api/export/...` — experiments as JSON, CSV, XLSX or PDF behind a signed, expiring export_url."""

from __future__ import annotations

from typing import Any

import grpc

from llmlab.files.v1 import exports_service_pb2 as pb
from llmlab.files.v1 import exports_service_pb2_grpc as pb_grpc
from llmlab.runtime import NotFound, validation_error
from llmlab.runtime.envelope import meta

from .. import domain
from ..exports import source
from ..exports.jobs import ExportJobs
from ..exports.tables import Export
from ..repository import ExportRow
from .common import Deps, base_url, expiry, owner_id

SYSTEM_OWNER = "system"


class ExportServicer(pb_grpc.ExportServiceServicer):
    def __init__(self, deps: Deps, experiments: grpc.aio.Channel, jobs: ExportJobs) -> None:
        self._d = deps
        self._experiments = experiments
        self._jobs = jobs

    def _data(self, row: ExportRow, context: Any) -> pb.ExportData:
        """The `data` of every export answer, for an export in any state; the URL is signed afresh each time."""
        expires, expires_at, _ = expiry(self._d.settings)
        url = self._d.signer.download_url(base_url(self._d.settings, context), row.token, row.filename, expires)
        return pb.ExportData(export_url=url, expires_at=expires_at,
                             file_size=domain.human_size(row.size_bytes) if row.size_bytes is not None else "",
                             format=row.format, job_id=row.id, status=row.status, progress=row.progress)

    async def _publish(self, x: Export, fmt: str, stem: str, options: dict[str, Any], context: Any
                       ) -> pb.ExportData:
        row = await self._jobs.start(owner_id() or SYSTEM_OWNER, x, fmt, stem, options)
        return self._data(row, context)

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
                   subtitle=f"model {exp.get('model', '')}")
        data = await self._publish(x, fmt, f"experiment_{request.id}", options, context)
        return pb.ExportExperimentResponse(success=True, data=data, meta=meta())

    async def ExportBatch(self, request: pb.ExportBatchRequest, context: Any) -> pb.ExportBatchResponse:
        fmt = domain.export_format(request.format, "csv")
        ids = domain.experiment_ids(list(request.experiment_ids))
        include_analysis = request.include_analysis if request.HasField("include_analysis") else False
        exps = await source.experiments(self._experiments, ids)
        options = {"format": fmt, "experiment_ids": ids, "include_analysis": include_analysis}
        x = Export("batch", f"Experiments {', '.join(map(str, ids[:10]))}{' …' if len(ids) > 10 else ''}", exps,
                   include_analysis=include_analysis)
        data = await self._publish(x, fmt, f"experiments_{len(ids)}", options, context)
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
                   subtitle=subtitle)
        data = await self._publish(x, fmt, report_type, options, context)
        return pb.GenerateReportResponse(success=True, data=data, meta=meta())

    async def GetExportJob(self, request: pb.GetExportJobRequest, context: Any) -> pb.GetExportJobResponse:
        row = await self._jobs.get(owner_id(), domain.parse_uuid(request.job_id, "job_id"))
        if row is None:
            raise NotFound(f"Export job {request.job_id} not found", reason="EXPORT_NOT_FOUND")
        return pb.GetExportJobResponse(success=True, data=self._data(row, context), meta=meta())

    async def CancelExportJob(self, request: pb.CancelExportJobRequest, context: Any
                              ) -> pb.CancelExportJobResponse:
        row = await self._jobs.cancel(owner_id(), domain.parse_uuid(request.job_id, "job_id"))
        if row is None:
            raise NotFound(f"Export job {request.job_id} not found", reason="EXPORT_NOT_FOUND")
        return pb.CancelExportJobResponse(success=True, data=self._data(row, context), meta=meta())
