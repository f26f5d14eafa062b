"""Training jobs' rules without I/O (services/inference/training/domain.py, loop.metrics_csv)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from llmlab.runtime import InvalidArgument
from services.inference.training import domain
from services.inference.training.jobs import resolve_hyper
from services.inference.training.loop import metrics_csv


def line(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


def test_a_good_file_is_normalised_and_counted() -> None:
    text = "\n".join([line(("user", "hi"), ("assistant", "hello")), "",
                      line(("system", "be brief"), ("user", "2+2?"), ("assistant", "4"))])
    ex = domain.parse_examples(text, "training_file")
    assert ex.count == 2 and ex.assistant_chars == len("hello") + 1
    assert [json.loads(x)["messages"][-1]["content"] for x in ex.jsonl.splitlines()] == ["hello", "4"]


def test_every_bad_line_is_reported_with_its_number() -> None:
    text = "\n".join([
        line(("user", "hi"), ("assistant", "hello")),
        "{not json",
        json.dumps({"prompt": "x"}),
        line(("user", "only a question")),
        line(("robot", "beep"), ("assistant", "x")),
        json.dumps({"messages": [{"role": "assistant", "content": 5}]}),
    ])
    with pytest.raises(InvalidArgument) as info:
        domain.parse_examples(text, "training_file")
    errors = info.value.details["errors"]
    assert [e.split(":")[0] for e in errors] == ["line 2", "line 3", "line 4", "line 5", "line 6"]
    assert "not valid JSON" in errors[0] and "no assistant message" in errors[2]
    assert "messages[0].role" in errors[3] and "messages[0].content must be a string" in errors[4]
    assert info.value.details["invalid_lines"] == 5 and info.value.field_violations[0][0] == "training_file"


def test_legacy_prompt_completion_lines_become_a_chat() -> None:
    ex = domain.parse_examples(json.dumps({"prompt": "2+2?", "completion": "4"}), "training_file")
    assert json.loads(ex.jsonl) == {"messages": [{"role": "user", "content": "2+2?"},
                                                 {"role": "assistant", "content": "4"}]}


def test_an_empty_file_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        domain.parse_examples("\n\n", "training_file")


def test_the_builtin_set_is_valid() -> None:
    assert domain.builtin_examples().count == 24


@pytest.mark.parametrize(("name", "bad"), [("epochs", 0), ("epochs", 51), ("learning_rate", 2.0),
                                           ("lora_r", 0), ("lora_r", 300), ("lora_dropout", 0.99),
                                           ("batch_size", 1000)])
def test_out_of_range_hyperparameters_name_their_field(name: str, bad: float) -> None:
    with pytest.raises(InvalidArgument) as info:
        domain.check_range(name, bad)
    assert info.value.details["field"] == name


def test_openai_hyperparameters_auto_and_numbers() -> None:
    assert resolve_hyper("auto", "epochs", 3, int) == 3
    assert resolve_hyper(None, "epochs", 3, int) == 3
    assert resolve_hyper(5.0, "epochs", 3, int) == 5
    with pytest.raises(InvalidArgument):
        resolve_hyper(2.5, "epochs", 3, int)
    with pytest.raises(InvalidArgument):
        resolve_hyper("many", "epochs", 3, int)
    with pytest.raises(InvalidArgument):
        resolve_hyper(True, "batch_size", 8, int)
    assert resolve_hyper(2, "learning_rate_multiplier", 1.0, float) == 2.0


def test_fine_tuned_model_ids_and_suffixes() -> None:
    assert domain.fine_tuned_model_id("smollm2-135m-instruct", "vault", "ftjob-abc", "openai") == \
        "ft:smollm2-135m-instruct:vault:abc"
    assert domain.fine_tuned_model_id("smollm2-135m-instruct", None, "ftjob-abc", "lab") == \
        "smollm2-135m-instruct-ft-abc"
    assert domain.check_suffix("") is None and domain.check_suffix("my-model") == "my-model"
    with pytest.raises(InvalidArgument):
        domain.check_suffix("Bad Suffix!")


def test_statuses_are_spelled_per_family() -> None:
    assert domain.LAB_STATUS["succeeded"] == "COMPLETED" and domain.OPENAI_STATUS["succeeded"] == "succeeded"
    assert domain.LAB_STATUS["queued"] == "PENDING" and domain.OPENAI_STATUS["pending"] == "queued"


def test_metrics_csv_has_step_train_and_validation_loss() -> None:
    rows = list(csv.reader(io.StringIO(metrics_csv([
        {"step": 1, "epoch": 1, "train_loss": 2.5, "valid_loss": None},
        {"step": 2, "epoch": 1, "train_loss": 2.0, "valid_loss": 2.25}]).decode())))
    assert rows == [["step", "epoch", "train_loss", "valid_loss"], ["1", "1", "2.500000", ""],
                    ["2", "1", "2.000000", "2.250000"]]
