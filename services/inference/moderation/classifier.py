"""The moderation classifier (docs/batches.md "Moderations"): TF-IDF features over character n-grams (3..5, within
word boundaries) and word unigrams and bigrams, and one logistic regression per category (scikit-learn), trained on
`data/train.json`, a labelled set written for this project.

Training takes about a second; it happens on first use and the fitted model is cached under
`~/.cache/llmlab/moderation/` keyed by the training data's and scikit-learn's versions, so a process normally loads
it. Scores are the regressions' probabilities, with one documented rule on top: a subcategory implies its parent
(OpenAI's categories nest: "hate/threatening" is hate), so a parent's score is at least its children's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pathlib
import pickle
import random
import threading
from dataclasses import dataclass
from typing import Any

CATEGORIES = (
    "hate", "hate/threatening", "harassment", "harassment/threatening", "self-harm", "self-harm/intent",
    "self-harm/instructions", "sexual", "sexual/minors", "violence", "violence/graphic",
)
PARENT = {"hate/threatening": "hate", "harassment/threatening": "harassment", "self-harm/intent": "self-harm",
          "self-harm/instructions": "self-harm", "sexual/minors": "sexual", "violence/graphic": "violence"}
THRESHOLD = 0.5  # a category is flagged at this score or above
DATA = pathlib.Path(__file__).parent / "data"
TRAIN = DATA / "train.json"
EVAL = DATA / "eval.jsonl"
SEED = 1234


def training_set(path: pathlib.Path = TRAIN) -> list[tuple[str, frozenset[str]]]:
    """(text, categories) pairs: each group's combinations (sampled down to its count), the written-out texts, and
    the benign combinations. Deterministic."""
    spec = json.loads(path.read_text())
    rng = random.Random(SEED)
    out: list[tuple[str, frozenset[str]]] = []

    def expand(parts: list[list[str]], count: int) -> list[str]:
        combos = [" ".join(w for w in combo if w) for combo in itertools.product(*parts)]
        rng.shuffle(combos)
        return combos[:count]

    for group in spec["groups"]:
        labels = frozenset(group["labels"])
        unknown = labels - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories in training data: {sorted(unknown)}")
        out += [(t, labels) for t in expand(group["parts"], group["count"])]
    out += [(t["text"], frozenset(t["labels"])) for t in spec["texts"]]
    out += [(t, frozenset()) for t in expand(spec["benign"]["parts"], spec["benign"]["count"])]
    # Benign texts built from the same frames and fillers as the harmful groups ("I am going to ... tonight"),
    # so that those words alone carry no weight.
    for group in spec.get("benign_more", []):
        out += [(t, frozenset()) for t in expand(group["parts"], group["count"])]
    return out


def evaluation_set(path: pathlib.Path = EVAL) -> list[tuple[str, frozenset[str]]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["text"], frozenset(r["categories"])) for r in rows]


@dataclass
class Classifier:
    """The fitted vectorizers and one regression per category."""

    features: Any  # sklearn FeatureUnion
    models: dict[str, Any]  # category -> LogisticRegression

    def scores(self, texts: list[str]) -> list[dict[str, float]]:
        x = self.features.transform(texts)
        columns = {c: self.models[c].predict_proba(x)[:, 1] for c in CATEGORIES}
        out = []
        for i in range(len(texts)):
            s = {c: float(columns[c][i]) for c in CATEGORIES}
            for child, parent in PARENT.items():  # a subcategory implies its parent
                s[parent] = max(s[parent], s[child])
            out.append({c: min(1.0, max(0.0, round(v, 6))) for c, v in s.items()})
        return out


def train(data: list[tuple[str, frozenset[str]]]) -> Classifier:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion

    texts = [t.lower() for t, _ in data]
    features = FeatureUnion([
        ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=1, sublinear_tf=True)),
        ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=1, sublinear_tf=True)),
    ])
    x = features.fit_transform(texts)
    models = {}
    for category in CATEGORIES:
        y = [int(category in labels) for _, labels in data]
        model = LogisticRegression(C=8.0, class_weight="balanced", max_iter=2000)
        model.fit(x, y)
        models[category] = model
    return Classifier(features, models)


@dataclass(frozen=True)
class Report:
    """Precision and recall per category on a labelled set, and how many texts were flagged at all."""

    rows: list[tuple[str, float, float, int]]  # category, precision, recall, support
    harmful_flagged: int
    harmful: int
    benign_flagged: int
    benign: int

    def table(self) -> str:
        lines = [f"{'category':24s} precision recall support"]
        lines += [f"{c:24s} {p:9.2f} {r:6.2f} {n:7d}" for c, p, r, n in self.rows]
        lines.append(f"flagged: {self.harmful_flagged}/{self.harmful} harmful texts, "
                     f"{self.benign_flagged}/{self.benign} benign ones")
        return "\n".join(lines)


def evaluate(model: Classifier, data: list[tuple[str, frozenset[str]]]) -> Report:
    scores = model.scores([t for t, _ in data])
    labels = [labels for _, labels in data]
    rows = []
    for c in CATEGORIES:
        hit = [s[c] >= THRESHOLD for s in scores]
        tp = sum(h and c in ls for h, ls in zip(hit, labels, strict=True))
        fp = sum(h and c not in ls for h, ls in zip(hit, labels, strict=True))
        fn = sum(not h and c in ls for h, ls in zip(hit, labels, strict=True))
        rows.append((c, tp / max(1, tp + fp), tp / max(1, tp + fn), tp + fn))
    flagged = [any(v >= THRESHOLD for v in s.values()) for s in scores]
    benign = [not ls for ls in labels]
    return Report(rows, sum(f and not b for f, b in zip(flagged, benign, strict=True)), benign.count(False),
                  sum(f and b for f, b in zip(flagged, benign, strict=True)), benign.count(True))


def _cache_path() -> pathlib.Path:
    import sklearn

    digest = hashlib.sha256(TRAIN.read_bytes() + sklearn.__version__.encode()).hexdigest()[:16]
    root = pathlib.Path(os.environ.get("LLMLAB_MODERATION_CACHE") or pathlib.Path.home() / ".cache/llmlab/moderation")
    return root / f"classifier-{digest}.pkl"


_lock = threading.Lock()
_loaded: Classifier | None = None


def load() -> Classifier:
    """The classifier: this process's, the cached one, or trained now (and cached)."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        path = _cache_path()
        if path.exists():
            try:
                # Our own cache file, written below from this code's training; not input from elsewhere.
                _loaded = pickle.loads(path.read_bytes())
                return _loaded
            except Exception:  # a cache from a broken write: train again
                pass
        classifier = train(training_set())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(pickle.dumps(classifier))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home: train in each process
        _loaded = classifier
        return classifier


def _main() -> None:
    """`python -m services.inference.moderation.classifier`: train and cache now (the `make moderation` step)."""
    c = load()
    print(f"moderation classifier ready: {len(c.models)} categories, cached at {_cache_path()}")


if __name__ == "__main__":
    _main()
