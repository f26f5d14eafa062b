"""The synchronous client: `Client(api_key=..., base_url=...)`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx

from ._transport import DEFAULT_BASE_URL, DEFAULT_TIMEOUT, SyncTransport
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


class Run(RunData):
    """A run of an experiment; `wait_for_completion` polls until it has ended."""

    _client: Client

    def _bind(self, client: Client) -> Run:
        object.__setattr__(self, "_client", client)
        return self

    def _path(self) -> str:
        return f"/experiments/{self.experiment_id}/runs/{self.id}"

    def refresh(self) -> Run:
        fresh = self._client._run(self._client._t.request("GET", self._path()))
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "_client"})
        return self

    def wait_for_completion(self, timeout: float = 3600, poll_interval: float = 1.0,
                            raise_on_failure: bool = True) -> Run:
        """Poll until the run is completed or failed; RunFailedError when it failed (unless raise_on_failure is
        False), WaitTimeoutError when it has not ended within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.refresh().done:
            if time.monotonic() >= deadline:
                raise WaitTimeoutError(f"run {self.id} is still {self.status} after {timeout} s")
            time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))
        if self.status == "failed" and raise_on_failure:
            raise RunFailedError(self)
        return self

    def complete(self) -> Run:
        return self._client._run(self._client._t.request("POST", self._path() + "/complete", json={}))

    def fail(self, error: str) -> Run:
        return self._client._run(self._client._t.request("POST", self._path() + "/fail", json={"error": error}))


class Experiment(ExperimentData):
    """An experiment with its actions."""

    _client: Client

    def _bind(self, client: Client) -> Experiment:
        object.__setattr__(self, "_client", client)
        return self

    def _replace(self, other: ExperimentData) -> Experiment:
        self.__dict__.update({k: v for k, v in other.__dict__.items() if k != "_client"})
        return self

    def refresh(self) -> Experiment:
        return self._replace(self._client.experiments.get(self.id))

    def update(self, **fields: Any) -> Experiment:
        return self._replace(self._client.experiments.update(self.id, **fields))

    def delete(self) -> None:
        self._client.experiments.delete(self.id)

    def start(self) -> Experiment:
        """POST /experiments/{id}/start: status becomes `running` (422 UnprocessableEntityError naming what is
        missing otherwise)."""
        r = self._client._t.request("POST", f"/experiments/{self.id}/start", json={})
        self.status, self.started_at = r["status"], r["started_at"]
        return self

    def create_run(self, config_overrides: dict[str, Any] | None = None) -> Run:
        return self._client._run(self._client._t.request(
            "POST", f"/experiments/{self.id}/runs", json=_body(config_overrides=config_overrides)))

    def get_run(self, run_id: str) -> Run:
        return self._client._run(self._client._t.request("GET", f"/experiments/{self.id}/runs/{run_id}"))

    def runs(self, page_size: int = 20) -> Iterator[Run]:
        for item in self._client._offset_pages(f"/experiments/{self.id}/runs", page_size, {}):
            yield self._client._run(item)

    def get_metrics(self) -> ExperimentMetrics:
        return ExperimentMetrics.from_dict(self._client._t.request("GET", f"/experiments/{self.id}/metrics"))


class Experiments:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, name: str, *, description: str | None = None, hypothesis: str | None = None,
               owner_id: str | None = None, collaborators: list[str] | None = None, tags: list[str] | None = None,
               config: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> Experiment:
        return self._c._experiment(self._c._t.request("POST", "/experiments", json=_body(
            name=name, description=description, hypothesis=hypothesis, owner_id=owner_id,
            collaborators=collaborators, tags=tags, config=config, metadata=metadata)))

    def get(self, experiment_id: str) -> Experiment:
        return self._c._experiment(self._c._t.request("GET", f"/experiments/{experiment_id}"))

    def update(self, experiment_id: str, **fields: Any) -> Experiment:
        return self._c._experiment(self._c._t.request("PUT", f"/experiments/{experiment_id}", json=fields))

    def delete(self, experiment_id: str) -> None:
        self._c._t.request("DELETE", f"/experiments/{experiment_id}")

    def list(self, *, limit: int | None = None, offset: int | None = None, after: str | None = None,
             status: str | None = None, owner_id: str | None = None, tags: list[str] | None = None) -> Page:
        """One page as the API answers it (offset: pagination + links; after: page_info)."""
        raw = self._c._t.request("GET", "/experiments", params=dict(
            limit=limit, offset=offset, after=after, status=status, owner_id=owner_id, tags=tags))
        page = Page.from_dict(raw)
        page.data = [self._c._experiment(x) for x in page.data]
        return page

    def iter(self, *, page_size: int = 20, status: str | None = None, owner_id: str | None = None,
             tags: list[str] | None = None) -> Iterator[Experiment]:
        """Every matching experiment, newest first, following offset pages (links.next)."""
        filters = dict(status=status, owner_id=owner_id, tags=tags)
        for item in self._c._offset_pages("/experiments", page_size, filters):
            yield self._c._experiment(item)

    def iter_cursor(self, *, page_size: int = 20, status: str | None = None, owner_id: str | None = None,
                    tags: list[str] | None = None) -> Iterator[Experiment]:
        """Every matching experiment, newest first, following cursors (page_info.end_cursor): experiments created
        meanwhile are neither repeated nor make others skipped."""
        after = None
        while True:
            page = self.list(limit=page_size, after=after, status=status, owner_id=owner_id, tags=tags)
            yield from page.data
            info = page.page_info or {}
            if not info.get("has_next_page") or not info.get("end_cursor"):
                return
            after = info["end_cursor"]


class Models:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, name: str, provider: str, model_identifier: str, *, version: str | None = None,
               config: dict[str, Any] | None = None) -> Model:
        return Model.from_dict(self._c._t.request("POST", "/models", json=_body(
            name=name, provider=provider, model_identifier=model_identifier, version=version, config=config)))

    def iter(self, *, page_size: int = 20, provider: str | None = None) -> Iterator[Model]:
        for item in self._c._offset_pages("/models", page_size, {"provider": provider}):
            yield Model.from_dict(item)

    def list(self, *, limit: int | None = None, offset: int | None = None, provider: str | None = None) -> Page:
        page = Page.from_dict(self._c._t.request("GET", "/models", params=dict(limit=limit, offset=offset,
                                                                              provider=provider)))
        page.data = [Model.from_dict(x) for x in page.data]
        return page

    def update(self, model_id: str, **fields: Any) -> Model:
        return Model.from_dict(self._c._t.request("PUT", f"/models/{model_id}", json=fields))


class Datasets:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, name: str, *, description: str | None = None, format: str | None = None,
               schema: dict[str, Any] | None = None, tags: list[str] | None = None,
               metadata: dict[str, Any] | None = None) -> Dataset:
        return Dataset.from_dict(self._c._t.request("POST", "/datasets", json=_body(
            name=name, description=description, format=format, schema=schema, tags=tags, metadata=metadata)))

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.from_dict(self._c._t.request("GET", f"/datasets/{dataset_id}"))

    def iter(self, *, page_size: int = 20) -> Iterator[Dataset]:
        for item in self._c._offset_pages("/datasets", page_size, {}):
            yield Dataset.from_dict(item)

    def upload(self, dataset_id: str, data: bytes, *, filename: str = "data.jsonl",
               content_type: str = "application/jsonl") -> dict[str, Any]:
        """Get a signed upload URL and PUT the file to it; the upload's report (size_bytes, row_count)."""
        slot = self._c._t.request("POST", f"/datasets/{dataset_id}/upload",
                                  json={"filename": filename, "content_type": content_type})
        return self._c._t.put_bytes(slot["upload_url"], data, content_type)

    def download_url(self, dataset_id: str) -> dict[str, Any]:
        return self._c._t.request("GET", f"/datasets/{dataset_id}/download")

    def create_version(self, dataset_id: str, version: str, *, description: str | None = None,
                       changelog: str | None = None) -> dict[str, Any]:
        return self._c._t.request("POST", f"/datasets/{dataset_id}/versions", json=_body(
            version=version, description=description, changelog=changelog))

    def versions(self, dataset_id: str, *, page_size: int = 20) -> Iterator[dict[str, Any]]:
        yield from self._c._offset_pages(f"/datasets/{dataset_id}/versions", page_size, {})


class Prompts:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, name: str, template: str, *, variables: list[str] | None = None,
               default_values: dict[str, Any] | None = None, description: str | None = None,
               tags: list[str] | None = None, metadata: dict[str, Any] | None = None) -> PromptTemplate:
        return PromptTemplate.from_dict(self._c._t.request("POST", "/prompts", json=_body(
            name=name, template=template, variables=variables, default_values=default_values,
            description=description, tags=tags, metadata=metadata)))

    def get(self, prompt_id: str) -> PromptTemplate:
        return PromptTemplate.from_dict(self._c._t.request("GET", f"/prompts/{prompt_id}"))

    def iter(self, *, page_size: int = 20) -> Iterator[PromptTemplate]:
        for item in self._c._offset_pages("/prompts", page_size, {}):
            yield PromptTemplate.from_dict(item)

    def render(self, prompt_id: str, variables: dict[str, Any] | None = None) -> str:
        return self._c._t.request("POST", f"/prompts/{prompt_id}/render",
                                  json={"variables": variables or {}})["rendered"]


class Evaluations:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, experiment_id: str, run_id: str, metrics: dict[str, float],
               metadata: dict[str, Any] | None = None) -> Evaluation:
        return Evaluation.from_dict(self._c._t.request("POST", "/evaluations", json=_body(
            experiment_id=experiment_id, run_id=run_id, metrics=metrics, metadata=metadata)))


class Client:
    """The research API. `api_key` is sent as X-API-Key, `access_token` (a JWT) as a Bearer token. A 429 is retried
    up to `max_retries` times after the Retry-After the API gives; any other error raises an APIError subclass
    carrying the error body."""

    def __init__(self, api_key: str | None = None, base_url: str = DEFAULT_BASE_URL, *,
                 access_token: str | None = None, timeout: float = DEFAULT_TIMEOUT, max_retries: int = 3,
                 http_client: httpx.Client | None = None) -> None:
        self._t = SyncTransport(base_url, api_key, access_token, timeout, max_retries, http_client)
        self.experiments = Experiments(self)
        self.models = Models(self)
        self.datasets = Datasets(self)
        self.prompts = Prompts(self)
        self.evaluations = Evaluations(self)

    def _experiment(self, raw: dict[str, Any]) -> Experiment:
        return Experiment.from_dict(raw)._bind(self)

    def _run(self, raw: dict[str, Any]) -> Run:
        return Run.from_dict(raw)._bind(self)

    def _offset_pages(self, path: str, page_size: int, filters: dict[str, Any]) -> Iterator[dict[str, Any]]:
        page = self._t.request("GET", path, params={"limit": page_size, "offset": 0, **filters})
        while True:
            yield from page["data"]
            nxt = (page.get("links") or {}).get("next")
            if not nxt:
                return
            page = self._t.request("GET", nxt)

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
