"""Python client for the llmlab research API (docs/research.md).

    from llm_research_lab import Client
    client = Client(api_key="...", base_url="http://127.0.0.1:8080")
    experiment = client.experiments.create(name="My Experiment", config={...})
    experiment.start()
    run = experiment.create_run(config_overrides={"parameters": {"temperature": 0.5}})
    run.wait_for_completion(timeout=3600)
    print(experiment.get_metrics().accuracy)
"""

from .aclient import AsyncClient, AsyncExperiment, AsyncRun
from .client import Client, Experiment, Run
from .errors import (
    APIError,
    AuthenticationError,
    ConflictError,
    LLMResearchError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RunFailedError,
    ServerError,
    UnprocessableEntityError,
    ValidationError,
    WaitTimeoutError,
)
from .types import Dataset, Evaluation, ExperimentMetrics, MetricAggregate, Model, Page, PromptTemplate, RunProgress

__version__ = "0.1.0"

__all__ = [
    "APIError", "AsyncClient", "AsyncExperiment", "AsyncRun", "AuthenticationError", "Client", "ConflictError",
    "Dataset", "Evaluation", "Experiment", "ExperimentMetrics", "LLMResearchError", "MetricAggregate", "Model",
    "NotFoundError", "Page", "PermissionDeniedError", "PromptTemplate", "RateLimitError", "Run", "RunFailedError",
    "RunProgress", "ServerError", "UnprocessableEntityError", "ValidationError", "WaitTimeoutError",
]
