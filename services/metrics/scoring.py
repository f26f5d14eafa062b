"""The quality scorer: six dimensions from three documented factors each (docs/metrics.md), no I/O, deterministic.

Every factor is a measurement with a stated formula mapped linearly onto 0..100 between two anchors (`_scale`):
textstat's readability formulas, VADER's sentiment lexicon, type-token and distinct-n diversity, prompt-keyword
coverage, the finish reason and, when the engine reported logprobs, the text's perplexity under the model that
wrote it. The same text, prompt and inputs always give the same scores under one SCORER_VERSION.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache

import textstat
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

# Bump when a formula, an anchor or a weight changes: stored scores name the version that computed them.
SCORER_VERSION = "lab-scorer/1.0"

DIMENSIONS = ("coherence", "completeness", "readability", "creativity", "specificity", "length_appropriateness")
# overall_quality = the weighted mean of the dimensions (docs/metrics.md "Overall quality").
WEIGHTS = {
    "coherence": 0.20,
    "completeness": 0.20,
    "readability": 0.15,
    "creativity": 0.15,
    "specificity": 0.15,
    "length_appropriateness": 0.15,
}
FACTORS = {
    "coherence": ("logical_flow", "consistency", "transitions"),
    "completeness": ("prompt_coverage", "finish_state", "closure"),
    "readability": ("reading_ease", "grade_level", "sentence_length"),
    "creativity": ("originality", "vocabulary_diversity", "narrative_innovation"),
    "specificity": ("concreteness", "detail_density", "precision"),
    "length_appropriateness": ("target_fit", "paragraphing", "redundancy"),
}

# A compact English stop-word list (function words): what is left of a text are its content words.
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just let me more most my myself no nor not now of off on once
only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves also may might must shall us yet upon
within without via per its it's i'm you're we're they're don't doesn't didn't can't won't isn't aren't wasn't
please write tell give explain describe show make list using use one
""".split())
# Discourse connectives that open a sentence and tie it to the one before (Penn Discourse Treebank's explicit
# connectives, the common ones).
CONNECTIVES = frozenset("""
however therefore thus hence consequently moreover furthermore additionally also besides meanwhile then next
finally first second third firstly secondly lastly afterwards later subsequently instead nevertheless nonetheless
still otherwise similarly likewise accordingly because since although though while whereas yet so and but or
overall indeed specifically notably ultimately eventually initially soon suddenly after before when as
""".split())
# Pronouns that point back to something already said.
REFERRING = frozenset("he she it they him her them his hers its their theirs this that these those such".split())
# Vague words and hedges (Hyland's hedging devices and general nouns): each use makes an answer less precise.
VAGUE = frozenset("""
thing things stuff something somehow somewhat some various many several lots lot kind sort maybe perhaps possibly
probably generally usually often basically really quite rather fairly pretty certain certainly etc stuff whatever
anything everything someone somebody somewhere good bad nice great important interesting different
""".split())

_WORD = re.compile("[A-Za-z0-9]+(?:['\u2019][A-Za-z]+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_NUMBER = re.compile(r"^\d+(?:[.,]\d+)?$")
_TARGET_WORDS = re.compile(r"(\d{1,5})\s*(?:-|\s)?\s*words?\b", re.I)
_TARGET_SENTENCES = re.compile(r"(\d{1,3}|one|two|three|four|five|six|seven|eight|nine|ten)\s*(?:-|\s)?\s*sentences?\b",
                               re.I)
_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
                 "ten": 10}
_TERMINAL = (".", "!", "?", '"', "'", ")", "\u201d", "\u2019", "`", "*")


@cache
def _vader() -> SentimentIntensityAnalyzer:
    # Loading the lexicon takes ~100 ms: once per process, on first use (nothing at import time).
    return SentimentIntensityAnalyzer()


def _scale(x: float, lo: float, hi: float) -> float:
    """x mapped linearly onto 0..100 between the anchors lo (0) and hi (100), clamped; lo > hi reverses it."""
    if hi == lo:
        return 100.0
    return max(0.0, min(100.0, (x - lo) / (hi - lo) * 100.0))


def _band(x: float, lo: float, hi: float, slack: float) -> float:
    """100 inside [lo, hi], falling linearly to 0 at `slack` (relative) beyond either end."""
    if lo <= x <= hi:
        return 100.0
    edge = lo if x < lo else hi
    return max(0.0, 100.0 - abs(x - edge) / max(edge * slack, 1e-9) * 100.0)


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    """A crude suffix strip so that "stories"/"story", "running"/"run" meet in coverage and overlap counts."""
    w = word.lower().replace("\u2019", "'")
    for suffix in ("'s", "ies", "ing", "ed", "es", "s", "ly"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            return w[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return w


@dataclass(frozen=True)
class Text:
    """A text split once for every factor."""

    raw: str
    words: list[str]
    sentences: list[str]
    paragraphs: list[str]

    @classmethod
    def of(cls, raw: str) -> Text:
        stripped = raw.strip()
        sentences = [s.strip() for s in _SENTENCE_END.split(stripped) if s and _WORD.search(s)]
        paragraphs = [p for p in re.split(r"\n\s*\n", stripped) if p.strip()]
        return cls(stripped, _WORD.findall(stripped), sentences, paragraphs)

    @property
    def lower_words(self) -> list[str]:
        return [w.lower() for w in self.words]

    def content(self, sentence: str | None = None) -> set[str]:
        words = _WORD.findall(sentence) if sentence is not None else self.words
        return {_stem(w) for w in words if w.lower() not in STOP_WORDS and len(w) > 2}


@dataclass
class Dimension:
    """One dimension: its factors (0..100), its score (their mean) and a sentence derived from them."""

    name: str
    factors: dict[str, float]
    score: float = 0.0
    feedback: str = ""


@dataclass
class Score:
    """Everything the scorer says about one text."""

    dimensions: dict[str, Dimension]
    overall_quality: float
    perplexity: float | None
    mean_logprob: float | None
    word_count: int
    type_token_ratio: float
    sentiment: float
    version: str = SCORER_VERSION
    extra: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """overall_quality and the six dimensions (+ perplexity and mean_logprob when known)."""
        out = {"overall_quality": self.overall_quality, **{d: self.dimensions[d].score for d in DIMENSIONS}}
        if self.perplexity is not None:
            out["perplexity"] = self.perplexity
            out["mean_logprob"] = self.mean_logprob  # type: ignore[assignment]
        return out


# -- factors -----------------------------------------------------------------------------------------------------


def _refers_back(sentence: str) -> bool:
    """The sentence opens (first five words) with a third-person or demonstrative pronoun: a referential tie to
    what came before (Halliday & Hasan's reference cohesion)."""
    return any(w.lower() in REFERRING for w in _WORD.findall(sentence)[:5])


def _adjacent_overlap(t: Text) -> float:
    """Share of adjacent sentence pairs that are tied: they share a content word (Coh-Metrix's adjacent argument
    overlap) or the second refers back with a pronoun."""
    if len(t.sentences) < 2:
        return 1.0
    sets = [t.content(s) for s in t.sentences]
    tied = sum(1 for i, (a, b) in enumerate(itertools.pairwise(sets)) if a & b or _refers_back(t.sentences[i + 1]))
    return tied / (len(t.sentences) - 1)


def _fluency(mean_logprob: float | None) -> float | None:
    """Perplexity 2 -> 100, 100 -> 0, linear in log-perplexity (= -mean logprob): how natural the text is to the
    model that wrote it. Anchors: SmolLM2-135M's own sampled answers measure 3-20 at temperature 0.7."""
    if mean_logprob is None:
        return None
    return _scale(-mean_logprob, math.log(100), math.log(2))


def sentence_sentiments(t: Text) -> list[float]:
    """VADER compound sentiment of each sentence, -1..1 (VADER is built for sentences; once per text)."""
    return [_vader().polarity_scores(s)["compound"] for s in t.sentences]


def _tone_consistency(scores: Sequence[float]) -> float:
    """1 - the spread (population std) of the sentences' VADER compound sentiment, on 0..1."""
    if len(scores) < 2:
        return 1.0
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    return 1.0 - min(1.0, std)


def _connective_share(t: Text) -> float:
    """Share of sentences after the first that open with a discourse connective."""
    if len(t.sentences) < 2:
        return 1.0
    opened = 0
    for s in t.sentences[1:]:
        first = _WORD.findall(s[:40])
        if first and first[0].lower() in CONNECTIVES:
            opened += 1
    return opened / (len(t.sentences) - 1)


def coherence(t: Text, mean_logprob: float | None, sentiments: Sequence[float]) -> Dimension:
    flow = _scale(_adjacent_overlap(t), 0.2, 0.8)
    tone = _scale(_tone_consistency(sentiments), 0.4, 0.9)
    fluency = _fluency(mean_logprob)
    return Dimension("coherence", {
        "logical_flow": flow,
        # The engine's perplexity, when known, weighs as much as the tone: a text the model finds unlikely reads
        # as disjointed even when its sentences agree in tone.
        "consistency": tone if fluency is None else (tone + fluency) / 2,
        "transitions": _scale(_connective_share(t), 0.0, 0.3),
    })


def prompt_keywords(prompt: str) -> set[str]:
    return Text.of(prompt).content()


def completeness(t: Text, prompt: str, finish_reason: str) -> Dimension:
    keywords = prompt_keywords(prompt)
    coverage = len(keywords & t.content()) / len(keywords) if keywords else 1.0
    ends_clean = t.raw.endswith(_TERMINAL)
    if finish_reason == "length":
        finished = 20.0
    elif finish_reason == "stop":
        finished = 100.0 if ends_clean else 70.0
    else:
        finished = 100.0 if ends_clean else 30.0
    closed = sum(1 for p in t.paragraphs if p.rstrip().endswith(_TERMINAL)) / len(t.paragraphs) if t.paragraphs else 0
    return Dimension("completeness", {
        "prompt_coverage": _scale(coverage, 0.0, 0.6),
        "finish_state": finished,
        "closure": 100.0 * closed,
    })


def readability(t: Text) -> Dimension:
    if not t.words:
        return Dimension("readability", {"reading_ease": 0.0, "grade_level": 0.0, "sentence_length": 0.0})
    words_per_sentence = len(t.words) / max(1, len(t.sentences))
    return Dimension("readability", {
        "reading_ease": _scale(textstat.flesch_reading_ease(t.raw), 10.0, 80.0),
        "grade_level": _scale(textstat.flesch_kincaid_grade(t.raw), 18.0, 8.0),
        "sentence_length": _band(words_per_sentence, 8.0, 22.0, 1.0),
    })


def _mattr(words: Sequence[str], window: int = 50) -> float:
    """Moving-average type-token ratio (Covington & McFall 2010): TTR averaged over every window of 50 words, so
    that long texts are not punished for being long; plain TTR for shorter texts."""
    if not words:
        return 0.0
    if len(words) <= window:
        return len(set(words)) / len(words)
    counts = Counter(words[:window])
    total = len(counts)
    for i in range(window, len(words)):
        out, new = words[i - window], words[i]
        counts[out] -= 1
        if counts[out] == 0:
            del counts[out]
        counts[new] += 1
        total += len(counts)
    return total / (len(words) - window + 1)


def _distinct(words: Sequence[str], n: int) -> float:
    grams = list(zip(*(words[i:] for i in range(n)), strict=False))
    return len(set(grams)) / len(grams) if grams else 0.0


def creativity(t: Text, prompt: str) -> Dimension:
    words = t.lower_words
    prompt_trigrams = set(zip(*(Text.of(prompt).lower_words[i:] for i in range(3)), strict=False))
    trigrams = list(zip(*(words[i:] for i in range(3)), strict=False))
    copied = sum(1 for g in trigrams if g in prompt_trigrams) / len(trigrams) if trigrams else 0.0
    rare = textstat.difficult_words(t.raw) / len(words) if words else 0.0
    openings = [(_WORD.findall(s) or [""])[0].lower() for s in t.sentences]
    varied = len(set(openings)) / len(openings) if openings else 0.0
    return Dimension("creativity", {
        # Distinct-2 (Li et al. 2016) less the share of trigrams copied from the prompt.
        "originality": _scale(_distinct(words, 2) * (1.0 - copied), 0.3, 0.95),
        "vocabulary_diversity": _scale(_mattr(words), 0.35, 0.8),
        # Words outside the Dale-Chall familiar list and varied sentence openings, equally.
        "narrative_innovation": (_scale(rare, 0.0, 0.25) + _scale(varied, 0.3, 1.0)) / 2,
    })


def specificity(t: Text) -> Dimension:
    n = len(t.words)
    if not n:
        return Dimension("specificity", {"concreteness": 0.0, "detail_density": 0.0, "precision": 0.0})
    concrete = 0
    for sentence in t.sentences:
        for i, w in enumerate(_WORD.findall(sentence)):
            # Numbers anywhere; capitalised words not opening a sentence (names, places, titles); not "I".
            if _NUMBER.match(w) or (i > 0 and w[0].isupper() and w not in ("I", "I'm")):
                concrete += 1
    content = sum(1 for w in t.lower_words if w not in STOP_WORDS and len(w) > 2)
    vague = sum(1 for w in t.lower_words if w in VAGUE)
    return Dimension("specificity", {
        "concreteness": _scale(concrete / n * 100, 0.0, 8.0),
        "detail_density": _scale(content / n, 0.3, 0.6),
        "precision": _scale(vague / n, 0.08, 0.0),
    })


def target_words(prompt: str, max_tokens: int | None) -> tuple[float, float]:
    """The word range the prompt asks for: an explicit "N words" (±25 %), "N sentences" (12-25 words each), "brief"
    or "one sentence" cues; else 40-400 words, capped by what max_tokens allows (~0.75 words per token)."""
    m = _TARGET_WORDS.search(prompt)
    if m:
        n = int(m.group(1))
        return n * 0.75, n * 1.25
    m = _TARGET_SENTENCES.search(prompt)
    if m:
        k = _NUMBER_WORDS.get(m.group(1).lower()) or int(m.group(1))
        return 8.0 * k, 30.0 * k
    lowered = prompt.lower()
    if any(cue in lowered for cue in ("brief", "briefly", "short answer", "in a word", "one word", "concise")):
        lo, hi = 3.0, 80.0
    elif any(cue in lowered for cue in ("detailed", "in depth", "comprehensive", "essay", "thorough")):
        lo, hi = 200.0, 1200.0
    else:
        lo, hi = 40.0, 400.0
    if max_tokens:
        hi = min(hi, max(max_tokens * 0.75, 1.0))
        lo = min(lo, hi * 0.5)
    return lo, hi


def length_appropriateness(t: Text, prompt: str, max_tokens: int | None) -> Dimension:
    lo, hi = target_words(prompt, max_tokens)
    n = len(t.words)
    expected_paragraphs = max(1, n // 150)
    normalised = [re.sub(r"\W+", " ", s.lower()).strip() for s in t.sentences]
    repeated = (len(normalised) - len(set(normalised))) / len(normalised) if normalised else 0.0
    return Dimension("length_appropriateness", {
        "target_fit": _band(n, lo, hi, 1.0),
        "paragraphing": _scale(min(len(t.paragraphs), expected_paragraphs) / expected_paragraphs, 0.0, 1.0),
        "redundancy": _scale(repeated, 0.5, 0.0),
    })


# -- feedback ----------------------------------------------------------------------------------------------------

_LABELS = {
    "logical_flow": "logical flow", "consistency": "consistency", "transitions": "transitions",
    "prompt_coverage": "coverage of the prompt", "finish_state": "a finished ending", "closure": "closed paragraphs",
    "reading_ease": "reading ease", "grade_level": "grade level", "sentence_length": "sentence length",
    "originality": "originality", "vocabulary_diversity": "vocabulary diversity",
    "narrative_innovation": "narrative innovation", "concreteness": "concrete details",
    "detail_density": "detail density", "precision": "precise wording", "target_fit": "fit to the requested length",
    "paragraphing": "paragraphing", "redundancy": "freedom from repetition",
}


def _level(score: float) -> str:
    return "Strong" if score >= 80 else "Good" if score >= 60 else "Fair" if score >= 40 else "Weak"


def feedback(d: Dimension) -> str:
    """One sentence from the factors: the level, the strongest and the weakest factor with their numbers."""
    ordered = sorted(d.factors.items(), key=lambda kv: (-kv[1], kv[0]))
    (best, best_v), (worst, worst_v) = ordered[0], ordered[-1]
    name = d.name.replace("_", " ")
    if best_v - worst_v < 5:
        return f"{_level(d.score)} {name} ({d.score:.1f}), even across its factors ({worst_v:.1f}-{best_v:.1f})."
    return (f"{_level(d.score)} {name} ({d.score:.1f}): {_LABELS[best]} is its strongest factor ({best_v:.1f}), "
            f"{_LABELS[worst]} its weakest ({worst_v:.1f}).")


# -- the scorer --------------------------------------------------------------------------------------------------


def mean_logprob(token_logprobs: Sequence[float]) -> float | None:
    finite = [lp for lp in token_logprobs if math.isfinite(lp)]
    return sum(finite) / len(finite) if finite else None


def score(
    content: str,
    prompt: str = "",
    *,
    max_tokens: int | None = None,
    finish_reason: str = "",
    token_logprobs: Sequence[float] = (),
) -> Score:
    """Score one text for its prompt (docs/metrics.md). Scores are rounded to 0.1, so equal inputs compare equal."""
    t = Text.of(content)
    lp = mean_logprob(token_logprobs)
    sentiments = sentence_sentiments(t)
    dims = [
        coherence(t, lp, sentiments),
        completeness(t, prompt, finish_reason),
        readability(t),
        creativity(t, prompt),
        specificity(t),
        length_appropriateness(t, prompt, max_tokens),
    ]
    out: dict[str, Dimension] = {}
    for d in dims:
        d.factors = {k: round(v, 1) for k, v in d.factors.items()}
        d.score = round(sum(d.factors.values()) / len(d.factors), 1)
        d.feedback = feedback(d)
        out[d.name] = d
    overall = round(sum(WEIGHTS[n] * out[n].score for n in DIMENSIONS), 1)
    words = t.lower_words
    return Score(
        dimensions=out,
        overall_quality=overall,
        perplexity=round(math.exp(-lp), 3) if lp is not None else None,
        mean_logprob=round(lp, 4) if lp is not None else None,
        word_count=len(words),
        type_token_ratio=round(len(set(words)) / len(words), 4) if words else 0.0,
        sentiment=round(sum(sentiments) / len(sentiments), 4) if sentiments else 0.0,
    )
