"""Reference metrics of generated texts: exact match, BLEU (sacreBLEU), ROUGE-1/2/L (rouge-score), perplexity."""

from __future__ import annotations

import itertools
import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import sacrebleu
from rouge_score import rouge_scorer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


@cache
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def normalise(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


@dataclass
class Sample:
    """One prediction with its references and token logprobs."""

    prediction: str
    references: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)


@dataclass
class SampleResult:
    accuracy: float | None
    bleu: float | None
    rouge_l: float | None
    perplexity: float | None
    length: int


@dataclass
class CorpusResult:
    accuracy: float | None
    bleu: float | None
    rouge_1: float | None
    rouge_2: float | None
    rouge_l: float | None
    perplexity: float | None
    response_diversity: float
    avg_response_length: float
    samples: list[SampleResult]


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def compute(samples: Sequence[Sample]) -> CorpusResult:
    per: list[SampleResult] = []
    exact: list[float] = []
    r1: list[float] = []
    r2: list[float] = []
    rl: list[float] = []
    hyps: list[str] = []
    refs: list[list[str]] = []
    lp_sum, lp_n = 0.0, 0
    bigrams: list[tuple[str, str]] = []
    for s in samples:
        words = s.prediction.split()
        bigrams.extend(itertools.pairwise(words))
        acc = bleu = rouge_l = ppl = None
        if s.references:
            acc = 1.0 if normalise(s.prediction) in {normalise(r) for r in s.references} else 0.0
            exact.append(acc)
            bleu = sacrebleu.sentence_bleu(s.prediction, s.references).score / 100
            best = [_rouge().score(r, s.prediction) for r in s.references]
            r1.append(max(b["rouge1"].fmeasure for b in best))
            r2.append(max(b["rouge2"].fmeasure for b in best))
            rouge_l = max(b["rougeL"].fmeasure for b in best)
            rl.append(rouge_l)
            hyps.append(s.prediction)
            refs.append(list(s.references))
        finite = [lp for lp in s.token_logprobs if math.isfinite(lp)]
        if finite:
            ppl = math.exp(-sum(finite) / len(finite))
            lp_sum += sum(finite)
            lp_n += len(finite)
        per.append(SampleResult(acc, bleu, rouge_l, ppl, len(words)))
    corpus_bleu = None
    if hyps:
        # sacreBLEU wants reference streams: stream j holds every sample's j-th reference ("" where it has fewer).
        width = max(len(r) for r in refs)
        streams = [[r[j] if j < len(r) else "" for r in refs] for j in range(width)]
        corpus_bleu = sacrebleu.corpus_bleu(hyps, streams).score / 100
    return CorpusResult(
        accuracy=_mean(exact), bleu=corpus_bleu, rouge_1=_mean(r1), rouge_2=_mean(r2), rouge_l=_mean(rl),
        perplexity=math.exp(-lp_sum / lp_n) if lp_n else None,
        response_diversity=len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        avg_response_length=_mean([p.length for p in per]) or 0.0,
        samples=per,
    )
