"""The API's objects as typed dataclasses (unknown fields are kept in `raw`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T", bound="APIObject")


@dataclass
class APIObject:
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)} - {"raw"}
        return cls(raw=dict(data), **{k: v for k, v in data.items() if k in names})  # type: ignore[call-arg]


@dataclass
class ExperimentData(APIObject):
    id: str = ""
    name: str = ""
    description: str = ""
    hypothesis: str = ""
    owner_id: str = ""
    collaborators: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    status: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""
    archived_at: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None


@dataclass
class RunProgress(APIObject):
    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass
class RunData(APIObject):
    id: str = ""
    experiment_id: str = ""
    status: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    completed_at: str | None = None
    error: str | None = None
    progress: RunProgress | dict[str, Any] = field(default_factory=RunProgress)
    outputs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.progress, dict):
            self.progress = RunProgress.from_dict(self.progress)

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed")


@dataclass
class MetricAggregate(APIObject):
    mean: float = 0.0
    std: float = 0.0
    min: float = 0.0
    max: float = 0.0
    count: int = 0


@dataclass
class ExperimentMetrics(APIObject):
    """GET /experiments/{id}/metrics. `metrics.accuracy` is the mean of `accuracy` over the runs;
    `metrics.aggregate("accuracy")` is its full aggregate; `runs` lists each run's metrics."""

    experiment_id: str = ""
    aggregated_metrics: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.aggregated_metrics = {k: v if isinstance(v, MetricAggregate) else MetricAggregate.from_dict(v)
                                   for k, v in self.aggregated_metrics.items()}

    def aggregate(self, name: str) -> MetricAggregate:
        return self.aggregated_metrics[name]

    def __getattr__(self, name: str) -> float:
        aggregated = self.__dict__.get("aggregated_metrics") or {}
        if name in aggregated:
            return aggregated[name].mean
        raise AttributeError(f"no metric {name!r} (have: {', '.join(aggregated) or 'none'})")


@dataclass
class Dataset(APIObject):
    id: str = ""
    name: str = ""
    description: str = ""
    format: str = ""
    schema: dict[str, Any] | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    size_bytes: int | None = None
    row_count: int | None = None
    created_at: str = ""
    updated_at: str = ""


@dataclass
class PromptTemplate(APIObject):
    id: str = ""
    name: str = ""
    description: str = ""
    template: str = ""
    variables: list[str] = field(default_factory=list)
    default_values: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""


@dataclass
class Evaluation(APIObject):
    id: str = ""
    experiment_id: str = ""
    run_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""


@dataclass
class Model(APIObject):
    id: str = ""
    name: str = ""
    provider: str = ""
    model_identifier: str = ""
    version: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""


@dataclass
class Page(APIObject):
    """One page of a list: `data`, and `pagination`/`links` (offset paging) and/or `page_info` (cursor paging)."""

    data: list[Any] = field(default_factory=list)
    pagination: dict[str, Any] | None = None
    links: dict[str, Any] | None = None
    page_info: dict[str, Any] | None = None
