"""llmlab.sampling: the one table of sampling bounds and its checker (`validation_error`)."""

from __future__ import annotations

import math

import pytest

from llmlab.runtime import InvalidArgument
from llmlab.sampling import BOUNDS, MAX_STOP_SEQUENCES, check_sampling, violation


@pytest.mark.parametrize("name, ok, bad, constraint", [
    ("temperature", [0, 0.7, 2], [-0.1, 2.01, math.nan, True, "1"], "must be between 0 and 2"),
    ("top_p", [0.01, 1], [0, 1.5], "must be greater than 0 and at most 1"),
    ("top_k", [0, 50], [-1, 1.5], "must be an integer at least 0"),
    ("max_tokens", [1, 4096], [0, 2.5], "must be an integer at least 1"),
    ("frequency_penalty", [-2, 0, 2], [-2.5, 3], "must be between -2 and 2"),
    ("presence_penalty", [-2, 2], [2.1], "must be between -2 and 2"),
    ("repetition_penalty", [0.5, 1, 3], [0, -1], "must be greater than 0"),
    ("top_logprobs", [0, 20], [21, -1], "must be an integer between 0 and 20"),
    ("n", [1, 16], [0, 17], "must be an integer between 1 and 16"),
])
def test_each_bound_and_its_wording(name, ok, bad, constraint):
    assert BOUNDS[name].constraint == constraint
    for v in ok:
        assert violation(name, v) is None, v
    for v in bad:
        assert violation(name, v) == constraint, v


def test_check_raises_the_validation_error_for_the_first_bad_value():
    check_sampling({"temperature": 1.0, "top_p": None, "stop": ["a"]})
    with pytest.raises(InvalidArgument) as exc:
        check_sampling({"temperature": 3.0, "top_p": 0})
    assert exc.value.details == {"field": "temperature", "value": 3.0, "constraint": "must be between 0 and 2"}


def test_prefix_aliases_and_stop_count():
    with pytest.raises(InvalidArgument) as exc:
        check_sampling({"max_length": 0}, prefix="parameters.", aliases={"max_length": "max_tokens"})
    assert exc.value.field_violations == [("parameters.max_length", "must be an integer at least 1")]
    with pytest.raises(InvalidArgument) as exc:
        check_sampling({"stop": ["x"] * (MAX_STOP_SEQUENCES + 1)})
    assert exc.value.details["field"] == "stop"


def test_fields_without_a_bound_are_passed_over():
    # The native API hands every sampling field it read, seed included (found by the fuzz suite: KeyError -> 500).
    check_sampling({"seed": -3, "ignore_eos": True, "top_k": 3, "stop": [""]})
