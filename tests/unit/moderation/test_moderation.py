"""The moderation classifier on its own evaluation set (services/inference/moderation/data/eval.jsonl, written for
this project, no text shared with the training data): per-category precision and recall, printed, with floors; the
request checks of `POST /v1/moderations`."""

from __future__ import annotations

import pytest

from services.inference.moderation import classifier
from services.inference.moderation.service import parse_input, result
from services.inference.openai.validation import ProtocolError


@pytest.fixture(scope="module")
def model() -> classifier.Classifier:
    return classifier.load()


def test_evaluation_set_is_separate_and_covers_every_category() -> None:
    train = {t.lower() for t, _ in classifier.training_set()}
    evaluation = classifier.evaluation_set()
    assert len(evaluation) >= 200
    assert not train & {t.lower() for t, _ in evaluation}
    for category in classifier.CATEGORIES:
        assert sum(category in labels for _, labels in evaluation) >= 10, category
    assert sum(not labels for _, labels in evaluation) >= 60


def test_precision_and_recall_per_category(model, capsys) -> None:
    report = classifier.evaluate(model, classifier.evaluation_set())
    with capsys.disabled():
        print("\n" + report.table())
    for category, precision, recall, _ in report.rows:
        assert precision >= 0.8 and recall >= 0.4, (category, precision, recall)
    assert report.benign_flagged / report.benign <= 0.15
    assert report.harmful_flagged / report.harmful >= 0.7


def test_scores_are_probabilities_and_nest(model) -> None:
    for s in model.scores(["I will stab you tonight", "what a lovely day", "x" * 5000]):
        assert set(s) == set(classifier.CATEGORIES)
        assert all(0.0 <= v <= 1.0 for v in s.values())
        for child, parent in classifier.PARENT.items():
            assert s[parent] >= s[child]
    r = result(model.scores(["I'm going to kill myself tonight"])[0])
    assert r["flagged"] and r["categories"]["self-harm/intent"] and r["categories"]["self-harm"]
    assert not result(model.scores(["Please summarise this meeting for me"])[0])["flagged"]


@pytest.mark.parametrize("value", [None, "", "   ", [], [""], [1], ["ok", None], "x" * 40_000, ["a"] * 33])
def test_bad_input_is_refused(value) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse_input(value)
    assert exc.value.status == 400 and exc.value.param.startswith("input")


def test_input_forms() -> None:
    assert parse_input("hi") == ["hi"]
    assert parse_input(["a", {"type": "text", "text": "b"}]) == ["a", "b"]
