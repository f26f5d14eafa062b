"""ResearchExperimentService and PromptService: the research family's `/experiments` and `/prompts` routes (bare
objects, UUID ids; docs/research.md). Translation between protos and the research domain only."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from llmlab.common.v1 import common_pb2
from llmlab.experiments.v1 import prompts_service_pb2 as ppb
from llmlab.experiments.v1 import prompts_service_pb2_grpc as ppb_grpc
from llmlab.experiments.v1 import research_experiments_service_pb2 as pb
from llmlab.experiments.v1 import research_experiments_service_pb2_grpc as pb_grpc
from llmlab.runtime import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from llmlab.runtime.context import current_principal, principal_var
from llmlab.runtime.envelope import iso, value
from llmlab.runtime.httprules import CREATED_METADATA
from llmlab.runtime.streams import EventPublisher

from . import domain, templates
from .peers import Gone, Peers
from .plan import prepare
from .repository import ResearchRepository, ResearchRow, RunRow, TemplateRow

RUNS_QUEUE = "research-runs"  # run.created: {"run_id"}; consumed by the experiments worker (runner.py)


def _dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _opt(msg: Message, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def experiment_pb(row: ResearchRow) -> pb.ResearchExperiment:
    out = pb.ResearchExperiment(
        id=row.id, name=row.name, description=row.description, hypothesis=row.hypothesis, owner_id=row.owner_id,
        collaborators=row.collaborators, tags=row.tags, status=row.status, created_at=iso(row.created_at),
        updated_at=iso(row.updated_at), archived_at=value(iso(row.archived_at) if row.archived_at else None),
    )
    out.config.SetInParent()  # `{}` rather than absent when empty
    out.config.update(row.config)
    out.metadata.SetInParent()
    out.metadata.update(row.metadata)
    return out


def run_pb(run: RunRow) -> pb.ExperimentRun:
    out = pb.ExperimentRun(
        id=run.id, experiment_id=run.experiment_id, status=run.status, started_at=iso(run.started_at),
        completed_at=value(iso(run.completed_at) if run.completed_at else None), error=value(run.error),
        progress=pb.RunProgress(total=run.total, completed=run.done, failed=run.failed),
        outputs=value(run.outputs),
    )
    out.config.SetInParent()
    out.config.update(run.config)
    return out


def template_pb(t: TemplateRow) -> ppb.PromptTemplate:
    out = ppb.PromptTemplate(id=t.id, name=t.name, description=t.description, template=t.template,
                             variables=t.variables, tags=t.tags, created_at=iso(t.created_at),
                             updated_at=iso(t.updated_at))
    out.default_values.SetInParent()
    out.default_values.update(t.default_values)
    out.metadata.SetInParent()
    out.metadata.update(t.metadata)
    return out


def _offset_page(path: str, limit: int, offset: int, total: int) -> tuple[common_pb2.OffsetPagination,
                                                                          common_pb2.PageLinks]:
    links = domain.offset_links(path, [], limit, offset, total)
    return (common_pb2.OffsetPagination(total=total, limit=limit, offset=offset, has_more=offset + limit < total),
            common_pb2.PageLinks(self=links["self"], next=value(links["next"]), first=links["first"],
                                 last=links["last"]))


def experiment_not_found(experiment_id: str) -> NotFound:
    return NotFound(f"Experiment with ID {experiment_id} not found")


class ResearchExperimentServicer(pb_grpc.ResearchExperimentServiceServicer):
    def __init__(self, repo: ResearchRepository, peers: Peers, events: EventPublisher | None) -> None:
        self._repo = repo
        self._peers = peers
        self._events = events

    async def _model_slugs(self, config: dict[str, Any]) -> str:
        """The lab view's `model` (the first model's slug); 400 naming an unregistered model id."""
        slug = ""
        for i, model_id in enumerate(config.get("model_ids") or []):
            try:
                m = await self._peers.model(model_id)
            except Gone:
                raise domain.invalid({f"config.model_ids[{i}]": "is not a registered model (GET /models)"}) from None
            slug = slug or m.slug
        return slug

    async def _experiment(self, experiment_id: str) -> ResearchRow:
        row = await self._repo.get(domain.parse_uuid("id", experiment_id))
        if row is None:
            raise experiment_not_found(experiment_id)
        return row

    async def CreateResearchExperiment(self, request: pb.CreateResearchExperimentRequest,
                                       context: Any) -> pb.ResearchExperiment:
        principal = current_principal()
        new = domain.new_experiment(_dict(request), principal.user_id if principal else None)
        row, existing = await self._repo.create(new, await self._model_slugs(new.config))
        if row is None:
            raise AlreadyExists("An experiment with this name already exists", metadata={"existing_id": existing})
        await context.send_initial_metadata(CREATED_METADATA)
        return experiment_pb(row)

    async def ListResearchExperiments(self, request: pb.ListResearchExperimentsRequest,
                                      context: Any) -> pb.ListResearchExperimentsResponse:
        q = domain.list_query(_opt(request, "limit"), _opt(request, "offset"), _opt(request, "after") or "",
                              request.status, request.owner_id, list(request.tags))
        rows, total, has_more = await self._repo.list(q)
        out = pb.ListResearchExperimentsResponse(data=[experiment_pb(r) for r in rows])
        if total is not None:
            start = q.offset or 0
            links = domain.offset_links("/experiments", q.link_query(), q.limit, start, total.value)
            out.pagination.CopyFrom(common_pb2.OffsetPagination(total=total.value, limit=q.limit, offset=start,
                                                                has_more=has_more))
            if total.estimated:
                out.pagination.total_estimated = True
            out.links.CopyFrom(common_pb2.PageLinks(self=links["self"], next=value(links["next"]),
                                                    first=links["first"], last=links["last"]))
        if q.offset is None:
            out.page_info.CopyFrom(common_pb2.PageInfo(
                has_next_page=has_more, has_previous_page=q.after is not None,
                start_cursor=domain.encode_cursor(rows[0].created_at, rows[0].seq) if rows else "",
                end_cursor=domain.encode_cursor(rows[-1].created_at, rows[-1].seq) if rows else ""))
        return out

    async def GetResearchExperiment(self, request: pb.GetResearchExperimentRequest,
                                    context: Any) -> pb.ResearchExperiment:
        return experiment_pb(await self._experiment(request.id))

    async def UpdateResearchExperiment(self, request: pb.UpdateResearchExperimentRequest,
                                       context: Any) -> pb.ResearchExperiment:
        experiment_id = domain.parse_uuid("id", request.id)
        body = _dict(request)
        body.pop("id", None)
        for name in ("collaborators", "tags"):  # ListValues: absent and [] differ
            if request.HasField(name):
                body[name] = list(json_format.MessageToDict(getattr(request, name)))
        changes = domain.patch(body)
        slug = await self._model_slugs(changes["config"]) if "config" in changes else None
        row, existing = await self._repo.update(experiment_id, changes, slug)
        if existing is not None:
            raise AlreadyExists("An experiment with this name already exists", metadata={"existing_id": existing})
        if row is None:
            raise experiment_not_found(request.id)
        return experiment_pb(row)

    async def DeleteResearchExperiment(self, request: pb.DeleteResearchExperimentRequest,
                                       context: Any) -> pb.DeleteResearchExperimentResponse:
        if not await self._repo.delete(domain.parse_uuid("id", request.id)):
            raise experiment_not_found(request.id)
        return pb.DeleteResearchExperimentResponse()

    async def StartResearchExperiment(self, request: pb.StartResearchExperimentRequest,
                                      context: Any) -> pb.StartResearchExperimentResponse:
        row = await self._experiment(request.id)
        if row.status != "draft":
            raise FailedPrecondition(f"Cannot start experiment: it is {row.status}; only a draft experiment starts")
        await prepare(row.config, self._peers, self._repo)
        started = await self._repo.start(row.id)
        if started is None:
            raise FailedPrecondition("Cannot start experiment: it was started or changed meanwhile")
        return pb.StartResearchExperimentResponse(id=started.id, status=started.status,
                                                  started_at=iso(started.started_at))

    async def CreateExperimentRun(self, request: pb.CreateExperimentRunRequest, context: Any) -> pb.ExperimentRun:
        row = await self._experiment(request.id)
        if row.status in ("completed", "failed"):
            raise FailedPrecondition(f"Cannot create a run: the experiment is {row.status}")
        overrides = _dict(request.config_overrides) if request.HasField("config_overrides") else {}
        fields = domain.Fields()
        overrides = domain.normalise_config(overrides, fields, "config_overrides.")
        fields.raise_if_any()
        config = domain.deep_merge(row.config, overrides)
        await prepare(config, self._peers, self._repo, "run")
        if self._events is None:
            raise Unavailable("The run queue is not configured; nothing was created")
        run = await self._repo.create_run(row.seq, config, principal_var.get(), executed=True)
        try:
            await self._events.publish(RUNS_QUEUE, "run.created", {"run_id": run.id})
        except Exception:
            # Nothing half-created: a run nobody will execute is removed again.
            await self._repo.finish_run(run.id, "failed", "the run could not be queued")
            raise Unavailable("The run queue cannot be reached; the run was not started, please retry") from None
        await context.send_initial_metadata(CREATED_METADATA)
        return run_pb(run)

    async def ListExperimentRuns(self, request: pb.ListExperimentRunsRequest,
                                 context: Any) -> pb.ListExperimentRunsResponse:
        row = await self._experiment(request.id)
        limit, offset = domain.page_bounds(_opt(request, "limit"), _opt(request, "offset"))
        runs, total = await self._repo.list_runs(row.seq, limit, offset or 0)
        pagination, links = _offset_page(f"/experiments/{row.id}/runs", limit, offset or 0, total)
        return pb.ListExperimentRunsResponse(data=[run_pb(r) for r in runs], pagination=pagination, links=links)

    async def _run(self, experiment_id: str, run_id: str) -> RunRow:
        experiment_id = domain.parse_uuid("id", experiment_id)
        run_uuid = domain.parse_uuid("run_id", run_id)
        run = await self._repo.get_run(experiment_id, run_uuid)
        if run is None:
            if await self._repo.get(experiment_id) is None:
                raise experiment_not_found(experiment_id)
            raise NotFound(f"Run with ID {run_id} not found in experiment {experiment_id}")
        return run

    async def GetExperimentRun(self, request: pb.GetExperimentRunRequest, context: Any) -> pb.ExperimentRun:
        return run_pb(await self._run(request.id, request.run_id))

    async def CompleteExperimentRun(self, request: pb.CompleteExperimentRunRequest,
                                    context: Any) -> pb.ExperimentRun:
        return await self._finish(request.id, request.run_id, "completed", None)

    async def FailExperimentRun(self, request: pb.FailExperimentRunRequest, context: Any) -> pb.ExperimentRun:
        error = request.error.strip()
        if not error:
            raise domain.invalid({"error": "is required"})
        return await self._finish(request.id, request.run_id, "failed", error[:10_000])

    async def _finish(self, experiment_id: str, run_id: str, status: str, error: str | None) -> pb.ExperimentRun:
        run = await self._run(experiment_id, run_id)
        finished = await self._repo.finish_run(run.id, status, error, run.outputs)
        if finished is None:
            raise FailedPrecondition(f"Cannot {'complete' if status == 'completed' else 'fail'} the run: it is "
                                     f"already {(await self._run(experiment_id, run_id)).status}")
        return run_pb(finished)


class PromptServicer(ppb_grpc.PromptServiceServicer):
    def __init__(self, repo: ResearchRepository) -> None:
        self._repo = repo

    async def CreatePrompt(self, request: ppb.CreatePromptRequest, context: Any) -> ppb.PromptTemplate:
        new = templates.new_template(_dict(request))
        principal = current_principal()
        row = await self._repo.create_template(new, principal.user_id if principal else None)
        await context.send_initial_metadata(CREATED_METADATA)
        return template_pb(row)

    async def ListPrompts(self, request: ppb.ListPromptsRequest, context: Any) -> ppb.ListPromptsResponse:
        limit, offset = domain.page_bounds(_opt(request, "limit"), _opt(request, "offset"))
        rows, total = await self._repo.list_templates(limit, offset or 0)
        pagination, links = _offset_page("/prompts", limit, offset or 0, total)
        return ppb.ListPromptsResponse(data=[template_pb(r) for r in rows], pagination=pagination, links=links)

    async def _template(self, template_id: str) -> TemplateRow:
        row = await self._repo.get_template(domain.parse_uuid("id", template_id))
        if row is None:
            raise NotFound(f"Prompt template with ID {template_id} not found")
        return row

    async def GetPrompt(self, request: ppb.GetPromptRequest, context: Any) -> ppb.PromptTemplate:
        return template_pb(await self._template(request.id))

    async def RenderPrompt(self, request: ppb.RenderPromptRequest, context: Any) -> ppb.RenderPromptResponse:
        t = await self._template(request.id)
        variables = _dict(request.variables) if request.HasField("variables") else {}
        return ppb.RenderPromptResponse(rendered=templates.render(t.template, variables, t.default_values))
