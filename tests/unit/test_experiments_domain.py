"""Experiment validation, defaults, filters and bulk semantics (no I/O)."""

import datetime as dt

import pytest

from llmlab.runtime import InvalidArgument
from services.experiments import domain


def _new(**over):
    args = {
        "name": " Story test ",
        "description": "",
        "type": "",
        "model": "smollm2-135m-instruct",
        "prompt": "Write a story",
        "parameters": {"temperature": 0.8},
        "parameter_ranges": None,
        "response_count": None,
        "tags": ["a", "b", "a"],
    }
    args.update(over)
    return domain.new_experiment(**args)


def _details(exc: InvalidArgument) -> dict:
    return exc.details or {}


def test_create_applies_defaults_and_normalises():
    e = _new()
    assert e.name == "Story test" and e.type == "single" and e.response_count == 1
    assert e.parameters == {**domain.DEFAULT_PARAMETERS, "temperature": 0.8}
    assert e.tags == ["a", "b"]


@pytest.mark.parametrize(
    ("params", "field", "value", "constraint"),
    [
        ({"temperature": 3.0}, "temperature", 3.0, "must be between 0 and 2"),
        ({"top_p": 1.5}, "top_p", 1.5, "must be between 0 and 1"),
        ({"max_tokens": 0}, "max_tokens", 0, "must be between 1 and 32768"),
        ({"presence_penalty": -2.5}, "presence_penalty", -2.5, "must be between -2 and 2"),
        ({"temperature": float("nan")}, "temperature", float("nan"), "must be a finite number"),
    ],
)
def test_out_of_range_parameters(params, field, value, constraint):
    with pytest.raises(InvalidArgument) as err:
        _new(parameters=params)
    d = _details(err.value)
    assert d["field"] == field and d["constraint"] == constraint
    assert d["value"] == value or value != value  # NaN never equals itself


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"name": "   "}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"type": "triple"}, "type"),
        ({"model": ""}, "model"),
        ({"prompt": " "}, "prompt"),
        ({"response_count": 0}, "response_count"),
        ({"tags": ["x" * 65]}, "tags"),
        ({"parameter_ranges": {"temperature_min": 1.0, "temperature_max": 0.5}}, "temperature_min"),
        ({"parameter_ranges": {"top_p_step": 0}}, "top_p_step"),
        ({"parameter_ranges": {"bogus_min": 1}}, "bogus_min"),
    ],
)
def test_invalid_fields_name_the_field(over, field):
    with pytest.raises(InvalidArgument) as err:
        _new(**over)
    assert _details(err.value)["field"] == field


def test_patch_merges_ranges_and_validates_the_whole():
    patch = domain.ExperimentPatch(parameter_ranges={"temperature_min": 0.9}).validate()
    with pytest.raises(InvalidArgument):
        patch.merged_ranges({"temperature_min": 0.1, "temperature_max": 0.5})
    assert domain.ExperimentPatch().merged_ranges({"top_p_min": 0.2}) == {"top_p_min": 0.2}
    ok = domain.ExperimentPatch(parameter_ranges={"temperature_max": 0.9}).merged_ranges({"temperature_min": 0.1})
    assert ok == {"temperature_min": 0.1, "temperature_max": 0.9}


def test_list_query_defaults_and_bounds():
    q = domain.list_query(page=None, limit=None)
    assert (q.page, q.limit, q.offset, q.sort_by, q.sort_order) == (1, 20, 0, "created_at", "desc")
    assert domain.list_query(page=3, limit=10).offset == 20
    for kwargs, field in [
        ({"page": 0, "limit": None}, "page"),
        ({"page": None, "limit": 101}, "limit"),
        ({"page": None, "limit": None, "sort_by": "cost"}, "sort_by"),
        ({"page": None, "limit": None, "status": "done"}, "status"),
        ({"page": None, "limit": None, "date_from": "yesterday"}, "date_from"),
        ({"page": None, "limit": None, "date_from": "2024-10-31", "date_to": "2024-10-01"}, "date_from"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            domain.list_query(**kwargs)
        assert _details(err.value)["field"] == field


def test_bare_date_upper_bound_covers_the_whole_day():
    q = domain.list_query(page=None, limit=None, date_from="2024-10-30", date_to="2024-10-30")
    assert q.date_from == dt.datetime(2024, 10, 30, tzinfo=dt.UTC)
    assert q.date_to == dt.datetime(2024, 10, 31, tzinfo=dt.UTC) and q.date_to_exclusive
    q = domain.list_query(page=None, limit=None, date_to="2024-10-30T12:00:00Z")
    assert q.date_to == dt.datetime(2024, 10, 30, 12, tzinfo=dt.UTC) and not q.date_to_exclusive


def test_bulk_actions():
    fav = domain.bulk_action("favorite", [3, 1, 3], favorited=None, archived=None, tags=[], remove_tags=[])
    assert fav.ids == [3, 1] and fav.favorited is True
    # params.favorited overrides what the action implies (seed 000 §7.2 sends both).
    none = {"archived": None, "tags": [], "remove_tags": []}
    assert domain.bulk_action("favorite", [1], favorited=False, **none).favorited is False
    assert domain.bulk_action("unarchive", [1], **{**none, "favorited": None}).archived is False
    tag = domain.bulk_action("tag", [1], favorited=None, archived=None, tags=["x"], remove_tags=["y"])
    assert (tag.add_tags, tag.remove_tags) == (["x"], ["y"])
    for action, ids, tags in [("explode", [1], []), ("delete", [], []), ("delete", [0], []), ("tag", [1], [])]:
        with pytest.raises(InvalidArgument):
            domain.bulk_action(action, ids, favorited=None, archived=None, tags=tags, remove_tags=[])
