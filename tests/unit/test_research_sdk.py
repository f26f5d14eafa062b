"""The Python SDK's own rules (no network): the 429 wait, errors by status with their body, metric attributes."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest
from llm_research_lab import ConflictError, ExperimentMetrics, Page, RunProgress, ValidationError
from llm_research_lab._transport import retry_delay
from llm_research_lab.client import Run
from llm_research_lab.errors import error_for


def _response(headers: dict[str, str], body: dict | None = None) -> httpx.Response:
    return httpx.Response(429, headers=headers, json=body or {})


def test_retry_after_seconds_date_body_and_backoff():
    assert retry_delay(_response({"retry-after": "7"}), 0) == 7
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_delay(_response({"retry-after": future}), 0) <= 30
    assert retry_delay(_response({}, {"retry_after": 3}), 0) == 3
    assert retry_delay(_response({}), 2) == 2.0
    assert retry_delay(_response({"retry-after": "100000"}), 0) == 300  # capped


def test_errors_by_status_carry_their_body():
    e = error_for(409, {"error": "conflict", "message": "exists", "existing_id": "x", "request_id": "r"}, {})
    assert isinstance(e, ConflictError) and e.existing_id == "x" and e.request_id == "r" and "conflict" in str(e)
    v = error_for(400, {"error": "validation_error", "details": {"fields": {"name": "required"}}}, {})
    assert isinstance(v, ValidationError) and v.fields == {"name": "required"}


def test_metrics_attributes_are_the_means():
    m = ExperimentMetrics.from_dict({"experiment_id": "e", "runs": [], "aggregated_metrics": {
        "accuracy": {"mean": 0.75, "std": 0.1, "min": 0.7, "max": 0.8, "count": 2}}})
    assert m.accuracy == 0.75 and m.aggregate("accuracy").count == 2
    with pytest.raises(AttributeError, match="accuracy"):
        _ = m.bleu


def test_objects_keep_unknown_fields_and_type_nested_ones():
    run = Run.from_dict({"id": "r", "status": "running", "progress": {"total": 3, "completed": 1, "failed": 0},
                         "new_field": 1})
    assert run.progress == RunProgress(total=3, completed=1, failed=0) and run.raw["new_field"] == 1
    assert not run.done
    assert Page.from_dict({"data": [], "page_info": {"has_next_page": False}}).pagination is None
