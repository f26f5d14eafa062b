"""Research-view rules without I/O: body validation naming every field, deep merge, cursors, links, templates,
seeded sampling and run metrics."""

from __future__ import annotations

import datetime as dt

import pytest

from llmlab.runtime import InvalidArgument
from services.experiments.research import domain, templates
from services.experiments.research.measures import Reference, run_metrics, summary
from services.experiments.research.plan import sample
from services.experiments.research.repository import OutputRow


def fields_of(exc: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return dict(exc.value.field_violations)


def test_new_experiment_collects_every_problem():
    with pytest.raises(InvalidArgument) as exc:
        domain.new_experiment({"name": "", "owner_id": "x", "collaborators": ["y"], "config": {
            "parameters": {"temperature": 2.5, "top_k": 1.5, "seed": 1}, "num_samples": 0, "dataset_ids": "z"}}, None)
    f = fields_of(exc)
    assert f["config.parameters.temperature"] == "Temperature must be between 0 and 2"
    assert set(f) == {"name", "owner_id", "collaborators[0]", "config.parameters.temperature",
                      "config.parameters.top_k", "config.parameters.seed", "config.num_samples",
                      "config.dataset_ids"}


def test_new_experiment_normalises_numbers_and_defaults_the_owner():
    e = domain.new_experiment({"name": "n", "config": {"num_samples": 10.0, "parameters": {"max_tokens": 8.0}}},
                              "u1")
    assert e.owner_id == "u1" and e.config["num_samples"] == 10 and isinstance(e.config["parameters"]["max_tokens"],
                                                                               int)


def test_deep_merge_merges_objects_and_replaces_the_rest():
    base = {"parameters": {"temperature": 0.7, "max_tokens": 2048}, "model_ids": ["a", "b"], "num_samples": 5}
    merged = domain.deep_merge(base, {"parameters": {"temperature": 0.5}, "model_ids": ["c"]})
    assert merged == {"parameters": {"temperature": 0.5, "max_tokens": 2048}, "model_ids": ["c"], "num_samples": 5}
    assert base["parameters"]["temperature"] == 0.7  # the experiment's config is not touched


def test_cursors_round_trip_and_refuse_forgeries():
    when = dt.datetime(2025, 1, 15, 10, 30, 0, 123456, tzinfo=dt.UTC)
    assert domain.decode_cursor(domain.encode_cursor(when, 42)) == (when, 42)
    for bad in ("", "!!", "WyJ4IiwxXQ", domain.encode_cursor(when, 1)[:-3]):
        with pytest.raises(ValueError):
            domain.decode_cursor(bad)


def test_links_keep_filters_and_end_with_a_null_next():
    links = domain.offset_links("/experiments", [("status", "running"), ("tags", "a,b")], 20, 40, 45)
    assert links == {"self": "/experiments?limit=20&offset=40&status=running&tags=a%2Cb", "next": None,
                     "first": "/experiments?limit=20&offset=0&status=running&tags=a%2Cb",
                     "last": "/experiments?limit=20&offset=40&status=running&tags=a%2Cb"}


def test_template_variables_must_match_placeholders():
    t = templates.new_template({"name": "t", "template": "{{ a }} and {{b}} and {{a}}"})
    assert t.variables == ["a", "b"]
    with pytest.raises(InvalidArgument) as exc:
        templates.new_template({"name": "t", "template": "{{a}}", "variables": ["a", "c"]})
    assert "c" in fields_of(exc)["variables"]
    with pytest.raises(InvalidArgument) as exc:
        templates.new_template({"name": "t", "template": "{{ a.__class__ }}"})
    assert "is not a placeholder" in fields_of(exc)["template"]


def test_rendering_is_plain_substitution():
    rendered = templates.render("{{x}}|{{y}}|{{z}}", {"x": "{{y}}", "y": {"k": [1, 2.0]}}, {"z": 3})
    assert rendered == '{{y}}|{"k": [1, 2.0]}|3'
    with pytest.raises(InvalidArgument) as exc:
        templates.render("{{x}} {{y}}", {}, {"y": 1})
    assert list(fields_of(exc)) == ["variables.x"]


def test_sampling_is_seeded_and_bounded():
    assert sample(5, 10, 1) == [0, 1, 2, 3, 4]
    assert sample(100, 5, 42) == sample(100, 5, 42) != sample(100, 5, 43)
    assert len(set(sample(100, 50, 7))) == 50


def _out(key: str, out: str, ref: str | None, ms: float, err: str | None = None) -> OutputRow:
    return OutputRow(key, "m", "t", int(key), out, ref, ms, 10, 5, 0.001, err)


def test_run_metrics_count_failures_as_wrong():
    outs = [_out("0", "4", "4", 100), _out("1", " 6 ", "6", 200), _out("2", "", "8", 300, "INTERNAL: x"),
            _out("3", "The 10.", "10", 400)]
    ref = Reference(accuracy=[1.0, 1.0, 0.0], bleu=0.5, rouge_l=0.25)
    m = run_metrics(outs, ref, domain.METRICS)
    assert m["accuracy"] == 0.5 and m["exact_match"] == 0.5  # 2 of 4; the failed one counts as wrong
    assert m["latency_p50_ms"] == 200 and m["total_tokens"] == 45 and m["cost_usd"] == 0.003
    assert m["tokens_per_second"] == pytest.approx(15 / 0.7, rel=1e-3)
    assert m["bleu"] == 0.5 and m["rouge_l"] == 0.25
    s = summary(outs, ref, domain.METRICS, 4)
    assert s["failed"] == 1 and s["by_model_and_template"][0]["metrics"]["accuracy"] == 0.5
    assert run_metrics(outs, ref, ["latency"]).keys() == {"latency_p50_ms", "latency_p95_ms", "latency_p99_ms"}
