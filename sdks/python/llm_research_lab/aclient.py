"""The asynchronous client: `AsyncClient(api_key=..., base_url=...)`, the same resources as `Client` with awaitable
methods and async iterators."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ._transport import DEFAULT_BASE_URL, DEFAULT_TIMEOUT, AsyncTransport
from .errors import RunFailedError, WaitTimeoutError
from .types import (
    Dataset,
    Evaluation,
    ExperimentData,
    ExperimentMetrics,
    Model,
    Page,
    PromptTemplate,
    RunData,
)


def _body(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


class AsyncRun(RunData):
    """A run of an experiment; `wait_for_completion` polls until it has ended."""

    _client: AsyncClient

    def _bind(self, client: AsyncClient) -> AsyncRun:
        object.__setattr__(self, "_client", client)
        return self

    def _path(self) -> str:
        return f"/experiments/{self.experiment_id}/runs/{self.id}"

    async def refresh(self) -> AsyncRun:
        fresh = self._client._run(await self._client._t.request("GET", self._path()))
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "_client"})
        return self

    async def wait_for_completion(self, timeout: float = 3600, poll_interval: float = 1.0,  # noqa: ASYNC109
                            raise_on_failure: bool = True) -> AsyncRun:
        """Poll until the run is completed or failed; RunFailedError when it failed (unless raise_on_failure is
        False), WaitTimeoutError when it has not ended within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (await self.refresh()).done:
            if time.monotonic() >= deadline:
                raise WaitTimeoutError(f"run {self.id} is still {self.status} after {timeout} s")
            await asyncio.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))
        if self.status == "failed" and raise_on_failure:
            raise RunFailedError(self)
        return self

    async def complete(self) -> AsyncRun:
        return self._client._run(await self._client._t.request("POST", self._path() + "/complete", json={}))

    async def fail(self, error: str) -> AsyncRun:
        return self._client._run(await self._client._t.request("POST", self._path() + "/fail", json={"error": error}))


class AsyncExperiment(ExperimentData):
    """An experiment with its actions."""

    _client: AsyncClient

    def _bind(self, client: AsyncClient) -> AsyncExperiment:
        object.__setattr__(self, "_client", client)
        return self

    def _replace(self, other: ExperimentData) -> AsyncExperiment:
        self.__dict__.update({k: v for k, v in other.__dict__.items() if k != "_client"})
        return self

    async def refresh(self) -> AsyncExperiment:
        return self._replace(await self._client.experiments.get(self.id))

    async def update(self, **fields: Any) -> AsyncExperiment:
        return self._replace(await self._client.experiments.update(self.id, **fields))

    async def delete(self) -> None:
        await self._client.experiments.delete(self.id)

    async def start(self) -> AsyncExperiment:
        """POST /experiments/{id}/start: status becomes `running` (422 UnprocessableEntityError naming what is
        missing otherwise)."""
        r = await self._client._t.request("POST", f"/experiments/{self.id}/start", json={})
        self.status, self.started_at = r["status"], r["started_at"]
        return self

    async def create_run(self, config_overrides: dict[str, Any] | None = None) -> AsyncRun:
        return self._client._run(await self._client._t.request(
            "POST", f"/experiments/{self.id}/runs", json=_body(config_overrides=config_overrides)))

    async def get_run(self, run_id: str) -> AsyncRun:
        return self._client._run(await self._client._t.request("GET", f"/experiments/{self.id}/runs/{run_id}"))

    async def runs(self, page_size: int = 20) -> AsyncIterator[AsyncRun]:
        async for item in self._client._offset_pages(f"/experiments/{self.id}/runs", page_size, {}):
            yield self._client._run(item)

    async def get_metrics(self) -> ExperimentMetrics:
        return ExperimentMetrics.from_dict(await self._client._t.request("GET", f"/experiments/{self.id}/metrics"))


class AsyncExperiments:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, name: str, *, description: str | None = None, hypothesis: str | None = None,
               owner_id: str | None = None, collaborators: list[str] | None = None, tags: list[str] | None = None,
               config: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> AsyncExperiment:
        return self._c._experiment(await self._c._t.request("POST", "/experiments", json=_body(
            name=name, description=description, hypothesis=hypothesis, owner_id=owner_id,
            collaborators=collaborators, tags=tags, config=config, metadata=metadata)))

    async def get(self, experiment_id: str) -> AsyncExperiment:
        return self._c._experiment(await self._c._t.request("GET", f"/experiments/{experiment_id}"))

    async def update(self, experiment_id: str, **fields: Any) -> AsyncExperiment:
        return self._c._experiment(await self._c._t.request("PUT", f"/experiments/{experiment_id}", json=fields))

    async def delete(self, experiment_id: str) -> None:
        await self._c._t.request("DELETE", f"/experiments/{experiment_id}")

    async def list(self, *, limit: int | None = None, offset: int | None = None, after: str | None = None,
             status: str | None = None, owner_id: str | None = None, tags: list[str] | None = None) -> Page:
        """One page as the API answers it (offset: pagination + links; after: page_info)."""
        raw = await self._c._t.request("GET", "/experiments", params=dict(
            limit=limit, offset=offset, after=after, status=status, owner_id=owner_id, tags=tags))
        page = Page.from_dict(raw)
        page.data = [self._c._experiment(x) for x in page.data]
        return page

    async def iter(self, *, page_size: int = 20, status: str | None = None, owner_id: str | None = None,
             tags: list[str] | None = None) -> AsyncIterator[AsyncExperiment]:
        """Every matching experiment, newest first, following offset pages (links.next)."""
        filters = dict(status=status, owner_id=owner_id, tags=tags)
        async for item in self._c._offset_pages("/experiments", page_size, filters):
            yield self._c._experiment(item)

    async def iter_cursor(self, *, page_size: int = 20, status: str | None = None, owner_id: str | None = None,
                    tags: list[str] | None = None) -> AsyncIterator[AsyncExperiment]:
        """Every matching experiment, newest first, following cursors (page_info.end_cursor): experiments created
        meanwhile are neither repeated nor make others skipped."""
        after = None
        while True:
            page = await self.list(limit=page_size, after=after, status=status, owner_id=owner_id, tags=tags)
            for item in page.data:
                yield item
            info = page.page_info or {}
            if not info.get("has_next_page") or not info.get("end_cursor"):
                return
            after = info["end_cursor"]


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, name: str, provider: str, model_identifier: str, *, version: str | None = None,
               config: dict[str, Any] | None = None) -> Model:
        return Model.from_dict(await self._c._t.request("POST", "/models", json=_body(
            name=name, provider=provider, model_identifier=model_identifier, version=version, config=config)))

    async def iter(self, *, page_size: int = 20, provider: str | None = None) -> AsyncIterator[Model]:
        async for item in self._c._offset_pages("/models", page_size, {"provider": provider}):
            yield Model.from_dict(item)

    async def list(self, *, limit: int | None = None, offset: int | None = None, provider: str | None = None) -> Page:
        page = Page.from_dict(await self._c._t.request("GET", "/models", params=dict(limit=limit, offset=offset,
                                                                              provider=provider)))
        page.data = [Model.from_dict(x) for x in page.data]
        return page

    async def update(self, model_id: str, **fields: Any) -> Model:
        return Model.from_dict(await self._c._t.request("PUT", f"/models/{model_id}", json=fields))


class AsyncDatasets:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, name: str, *, description: str | None = None, format: str | None = None,
               schema: dict[str, Any] | None = None, tags: list[str] | None = None,
               metadata: dict[str, Any] | None = None) -> Dataset:
        return Dataset.from_dict(await self._c._t.request("POST", "/datasets", json=_body(
            name=name, description=description, format=format, schema=schema, tags=tags, metadata=metadata)))

    async def get(self, dataset_id: str) -> Dataset:
        return Dataset.from_dict(await self._c._t.request("GET", f"/datasets/{dataset_id}"))

    async def iter(self, *, page_size: int = 20) -> AsyncIterator[Dataset]:
        async for item in self._c._offset_pages("/datasets", page_size, {}):
            yield Dataset.from_dict(item)

    async def upload(self, dataset_id: str, data: bytes, *, filename: str = "data.jsonl",
               content_type: str = "application/jsonl") -> dict[str, Any]:
        """Get a signed upload URL and PUT the file to it; the upload's report (size_bytes, row_count)."""
        slot = await self._c._t.request("POST", f"/datasets/{dataset_id}/upload",
                                  json={"filename": filename, "content_type": content_type})
        return await self._c._t.put_bytes(slot["upload_url"], data, content_type)

    async def download_url(self, dataset_id: str) -> dict[str, Any]:
        return await self._c._t.request("GET", f"/datasets/{dataset_id}/download")

    async def create_version(self, dataset_id: str, version: str, *, description: str | None = None,
                       changelog: str | None = None) -> dict[str, Any]:
        return await self._c._t.request("POST", f"/datasets/{dataset_id}/versions", json=_body(
            version=version, description=description, changelog=changelog))

    async def versions(self, dataset_id: str, *, page_size: int = 20) -> AsyncIterator[dict[str, Any]]:
        async for item in self._c._offset_pages(f"/datasets/{dataset_id}/versions", page_size, {}):
            yield item


class AsyncPrompts:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, name: str, template: str, *, variables: list[str] | None = None,
               default_values: dict[str, Any] | None = None, description: str | None = None,
               tags: list[str] | None = None, metadata: dict[str, Any] | None = None) -> PromptTemplate:
        return PromptTemplate.from_dict(await self._c._t.request("POST", "/prompts", json=_body(
            name=name, template=template, variables=variables, default_values=default_values,
            description=description, tags=tags, metadata=metadata)))

    async def get(self, prompt_id: str) -> PromptTemplate:
        return PromptTemplate.from_dict(await self._c._t.request("GET", f"/prompts/{prompt_id}"))

    async def iter(self, *, page_size: int = 20) -> AsyncIterator[PromptTemplate]:
        async for item in self._c._offset_pages("/prompts", page_size, {}):
            yield PromptTemplate.from_dict(item)

    async def render(self, prompt_id: str, variables: dict[str, Any] | None = None) -> str:
        rendered = await self._c._t.request("POST", f"/prompts/{prompt_id}/render",
                                            json={"variables": variables or {}})
        return rendered["rendered"]


class AsyncEvaluations:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, experiment_id: str, run_id: str, metrics: dict[str, float],
               metadata: dict[str, Any] | None = None) -> Evaluation:
        return Evaluation.from_dict(await self._c._t.request("POST", "/evaluations", json=_body(
            experiment_id=experiment_id, run_id=run_id, metrics=metrics, metadata=metadata)))


class AsyncClient:
    """The research API. `api_key` is sent as X-API-Key, `access_token` (a JWT) as a Bearer token. A 429 is retried
    up to `max_retries` times after the Retry-After the API gives; any other error raises an APIError subclass
    carrying the error body."""

    def __init__(self, api_key: str | None = None, base_url: str = DEFAULT_BASE_URL, *,
                 access_token: str | None = None, timeout: float = DEFAULT_TIMEOUT, max_retries: int = 3,
                 http_client: httpx.AsyncClient | None = None) -> None:
        self._t = AsyncTransport(base_url, api_key, access_token, timeout, max_retries, http_client)
        self.experiments = AsyncExperiments(self)
        self.models = AsyncModels(self)
        self.datasets = AsyncDatasets(self)
        self.prompts = AsyncPrompts(self)
        self.evaluations = AsyncEvaluations(self)

    def _experiment(self, raw: dict[str, Any]) -> AsyncExperiment:
        return AsyncExperiment.from_dict(raw)._bind(self)

    def _run(self, raw: dict[str, Any]) -> AsyncRun:
        return AsyncRun.from_dict(raw)._bind(self)

    async def _offset_pages(self, path: str, page_size: int, filters: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        page = await self._t.request("GET", path, params={"limit": page_size, "offset": 0, **filters})
        while True:
            for item in page["data"]:
                yield item
            nxt = (page.get("links") or {}).get("next")
            if not nxt:
                return
            page = await self._t.request("GET", nxt)

    async def close(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
