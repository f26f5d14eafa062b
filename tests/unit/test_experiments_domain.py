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
        ({"top_p": 1.5}, "top_p", 1.5, "must be greater than 0 and at most 1"),
        ({"max_tokens": 0}, "max_tokens", 0, "must be an integer at least 1"),
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
    fav = domain.bulk_action("favorite", [3, 1, 3], None)
    assert fav.ids == [3, 1] and fav.favorited is True
    # params.favorited overrides what the action implies (a client may send both).
    assert domain.bulk_action("favorite", [1], {"favorited": False}).favorited is False
    assert domain.bulk_action("unarchive", [1], {}).archived is False
    # Ids arrive as JSON numbers (floats once they are google.protobuf.Values).
    assert domain.bulk_action("delete", [1.0, 2.0], None).ids == [1, 2]
    tag = domain.bulk_action("tag", [1], {"tags": ["x"], "remove_tags": ["y"]})
    assert (tag.add_tags, tag.remove_tags) == (["x"], ["y"])
    for action, ids, params in [("explode", [1], None), ("delete", [], None), ("delete", [0], None),
                                ("tag", [1], None), ("tag", [1], {"tags": []})]:
        with pytest.raises(InvalidArgument):
            domain.bulk_action(action, ids, params)


@pytest.mark.parametrize(
    ("ids", "field", "value"),
    [
        ([5, None], "experiment_ids[1]", None),  # null: the whole request is refused, not the null skipped
        ([5, "7"], "experiment_ids[1]", "7"),
        ([5, 1.5], "experiment_ids[1]", 1.5),
        ([True], "experiment_ids[0]", True),
        ([5, 0], "experiment_ids[1]", 0),
        ([-3], "experiment_ids[0]", -3),
        ([2**31], "experiment_ids[0]", 2**31),
        ([5, [6]], "experiment_ids[1]", "a list"),
        (None, "experiment_ids", None),
        ([], "experiment_ids", 0),
        (list(range(1, domain.MAX_BULK_IDS + 2)), "experiment_ids", domain.MAX_BULK_IDS + 1),
    ],
)
def test_every_bulk_id_is_checked(ids, field, value):
    with pytest.raises(InvalidArgument) as err:
        domain.bulk_action("delete", ids, None)
    assert _details(err.value)["field"] == field and _details(err.value)["value"] == value


@pytest.mark.parametrize(
    ("action", "params", "field", "constraint"),
    [
        ("favorite", {"favourite": True}, "params.favourite",
         "is not a parameter of the favorite action; it takes favorited"),
        ("favorite", {"favorited": "yes"}, "params.favorited", "must be true or false"),
        ("archive", {"archived": None}, "params.archived", "must be true or false"),
        ("archive", {"favorited": True}, "params.favorited",
         "is not a parameter of the archive action; it takes archived"),
        ("delete", {"force": True}, "params.force", "is not a parameter of the delete action; it takes no parameters"),
        ("tag", {"tags": "x"}, "params.tags", "must be a list of tags"),
        ("tag", {"tags": ["ok", None]}, "params.tags", "must be a string"),
        ("tag", {"tags": ["\u200b"]}, "params.tags",
         "must contain a visible character (not only spaces, zero-width or control characters)"),
        ("tag", {"remove_tags": ["x" * 65]}, "params.remove_tags", "must be at most 64 characters"),
        ("favorite", ["favorited"], "params", "must be an object"),
    ],
)
def test_bulk_params_are_checked_not_ignored(action, params, field, constraint):
    with pytest.raises(InvalidArgument) as err:
        domain.bulk_action(action, [1], params)
    assert _details(err.value)["field"] == field and _details(err.value)["constraint"] == constraint


def test_long_values_are_never_quoted_whole():
    for call in (lambda: domain.bulk_action("a" * 60_000, [1], None),
                 lambda: domain.bulk_action("tag", [1], {"tags": ["t" * 60_000]}),
                 lambda: domain.bulk_action("favorite", [1], {"k" * 60_000: True}),
                 lambda: _new(name="n" * 60_000),
                 lambda: _new(model="m" * 60_000),
                 lambda: _new(prompt=" " * 300_000),
                 lambda: domain.list_query(page=None, limit=None, sort_by="s" * 60_000)):
        with pytest.raises(InvalidArgument) as err:
            call()
        assert len(repr(err.value.details)) < 300 and len(err.value.message) < 300


@pytest.mark.parametrize(
    "over",
    [{"name": "\u200b\u200b\u200b"}, {"name": "\u2060\ufeff "}, {"name": "\x00\x01"},
     {"model": "\u200b"}, {"tags": ["ok", "\u200d"]}],
)
def test_names_of_invisible_characters_are_refused(over):
    with pytest.raises(InvalidArgument) as err:
        _new(**over)
    assert _details(err.value)["field"] == next(iter(over))
    assert "visible character" in _details(err.value)["constraint"]


def test_patch_trims_and_bounds_like_create():
    patch = domain.ExperimentPatch(name="  Renamed\u200b", model=" smollm2-135m-instruct ", tags=[" a "]).validate()
    assert (patch.name, patch.model, patch.tags) == ("Renamed", "smollm2-135m-instruct", ["a"])
    for bad in ({"name": "\u200b"}, {"description": "d" * (domain.MAX_DESCRIPTION_CHARS + 1)},
                {"model": "x" * (domain.MAX_MODEL_CHARS + 1)}, {"tags": [str(i) for i in range(domain.MAX_TAGS + 1)]}):
        with pytest.raises(InvalidArgument) as err:
            domain.ExperimentPatch(**bad).validate()
        assert _details(err.value)["field"] == next(iter(bad))


def test_timeline_groups_a_page_by_utc_day_newest_first():
    from types import SimpleNamespace as Row

    def row(i: int, ts: str, q: float | None) -> Row:
        return Row(id=i, created_at=dt.datetime.fromisoformat(ts), quality_score=q)

    rows = [row(5, "2024-10-31T01:00:00+02:00", None),   # 2024-10-30 in UTC
            row(3, "2024-10-30T10:00:00+00:00", 90.0),
            row(9, "2024-11-02T08:00:00+00:00", None),
            row(4, "2024-10-30T10:00:00+00:00", 80.0)]
    days = domain.timeline(rows)
    assert [(d.date, d.ids, d.average_quality, d.count) for d in days] == [
        ("2024-11-02", [9], None, 1),
        ("2024-10-30", [3, 4, 5], 85.0, 3),
    ]
    assert domain.timeline([]) == []


def test_pagination_flags_an_estimated_total_and_takes_a_known_has_next():
    from llmlab.runtime.envelope import pagination

    exact = pagination(2, 20, 45)
    assert (exact.total_pages, exact.has_next, exact.has_previous, exact.HasField("total_estimated")) == (
        3, True, True, False)
    est = pagination(1, 20, 1_000_000, estimated=True, has_next=True)
    assert est.total_estimated and est.has_next
    assert not pagination(3, 20, 45, has_next=False).has_next
