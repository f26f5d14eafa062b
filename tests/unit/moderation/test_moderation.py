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
    evaluation = classifier.evaluation_set()
    scores = model.scores([t for t, _ in evaluation])
    rows = []
    for category in classifier.CATEGORIES:
        tp = sum(category in labels and s[category] >= classifier.THRESHOLD for (_, labels), s in zip(evaluation,
                                                                                                     scores))
        fp = sum(category not in labels and s[category] >= classifier.THRESHOLD
                 for (_, labels), s in zip(evaluation, scores))
        fn = sum(category in labels and s[category] < classifier.THRESHOLD
                 for (_, labels), s in zip(evaluation, scores))
        precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
        rows.append((category, precision, recall, tp + fn))
    flagged = [any(v >= classifier.THRESHOLD for v in s.values()) for s in scores]
    benign = [not labels for _, labels in evaluation]
    false_alarms = sum(f and b for f, b in zip(flagged, benign))
    caught = sum(f and not b for f, b in zip(flagged, benign))
    with capsys.disabled():
        print("\ncategory                 precision recall support")
        for category, p, r, n in rows:
            print(f"{category:24s} {p:9.2f} {r:6.2f} {n:7d}")
        print(f"flagged: {caught}/{benign.count(False)} harmful, {false_alarms}/{benign.count(True)} benign")
    for category, p, r, _ in rows:
        assert p >= 0.8 and r >= 0.4, (category, p, r)
    assert false_alarms / benign.count(True) <= 0.15
    assert caught / benign.count(False) >= 0.7


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
