"""Parameter optimisation: a Gaussian process fitted to the tested parameter buckets, the sensitivity of each
parameter, and the quality/cost/speed Pareto frontier (docs/analytics.md "Optimisation")."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from llmlab.runtime import validation_error

from . import stats
from .analysis import optimal_ranges
from .readmodel import PARAMETERS
from .repository import Combo
from .stats import Sums

# objective -> (recommendation name, combo attribute, larger is better, the metric its sensitivity pairs with)
OBJECTIVES = {
    "quality": ("maximize_quality", "quality", True, "overall_quality"),
    "cost": ("minimize_cost", "mean_cost", False, "cost"),
    "speed": ("maximize_speed", "mean_seconds", False, "response_time_ms"),
    "creativity": ("maximize_creativity", "creativity", True, "creativity"),
}
CONSTRAINT_KEYS = (*PARAMETERS, "max_cost", "max_response_time", "min_quality", "model")
MIN_BUCKETS = 3  # a surface fitted to fewer tested combinations would only echo them
RECOMMENDATIONS = 3


@dataclass
class Constraints:
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_cost: float | None = None
    max_response_time_ms: float | None = None
    min_quality: float | None = None
    model: str | None = None

    def admits(self, c: Combo) -> bool:
        for p, (lo, hi) in self.bounds.items():
            if not lo <= c.parameters[p] <= hi:
                return False
        if self.max_cost is not None and c.mean_cost > self.max_cost:
            return False
        if self.max_response_time_ms is not None and c.mean_seconds * 1000 > self.max_response_time_ms:
            return False
        return self.min_quality is None or c.quality >= self.min_quality


def _number(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise validation_error(f"constraints.{key}", v, "must be a finite number")
    return float(v)


def parse_constraints(raw: str) -> Constraints:
    """The `constraints` query parameter: a JSON object of the documented keys (proto GetOptimizationInsights)."""
    if not raw.strip():
        return Constraints()
    try:
        obj = json.loads(raw)
    except ValueError:
        raise validation_error("constraints", raw, "must be a JSON object") from None
    if not isinstance(obj, dict):
        raise validation_error("constraints", raw, "must be a JSON object")
    out = Constraints()
    for key, v in obj.items():
        if key not in CONSTRAINT_KEYS:
            raise validation_error(f"constraints.{key}", v, f"unknown constraint; one of {', '.join(CONSTRAINT_KEYS)}")
        if key in PARAMETERS:
            if not isinstance(v, dict) or not set(v) <= {"min", "max"}:
                raise validation_error(f"constraints.{key}", v, 'must be an object {"min", "max"}')
            lo = _number(f"{key}.min", v["min"]) if "min" in v else -math.inf
            hi = _number(f"{key}.max", v["max"]) if "max" in v else math.inf
            if lo > hi:
                raise validation_error(f"constraints.{key}", v, "min must not exceed max")
            out.bounds[key] = (lo, hi)
        elif key == "model":
            if not isinstance(v, str) or not v:
                raise validation_error("constraints.model", v, "must be a model id")
            out.model = v
        else:
            n = _number(key, v)
            if n < 0:
                raise validation_error(f"constraints.{key}", v, "must not be negative")
            setattr(out, "max_response_time_ms" if key == "max_response_time" else key, n)
    return out


def objective_of(raw: str) -> str:
    raw = raw or "quality"
    if raw not in OBJECTIVES:
        raise validation_error("objective", raw, f"must be one of {', '.join(OBJECTIVES)}")
    return raw


@dataclass
class Recommendation:
    combo: Combo
    predicted: float
    confidence: float


@dataclass
class Insights:
    recommendations: list[Recommendation]
    sensitivity: dict[str, dict[str, Any]]
    frontier: list[Combo]
    notes: list[str]


def _features(combos: list[Combo]) -> np.ndarray:
    return np.array([[c.parameters[p] for p in PARAMETERS] for c in combos], dtype=float)


def fit_and_rank(combos: list[Combo], objective: str) -> list[Recommendation]:
    """Fit a GP (constant x RBF + white noise, on standardised parameters) to the buckets' mean objective, each
    bucket's noise shrinking with its number of scored responses; rank the tested buckets by the posterior mean.
    confidence = 1 - posterior sd / sd of the observed means (0..1): high where the data pin the surface down."""
    _, attr, larger, _ = OBJECTIVES[objective]
    x = _features(combos)
    y = np.array([getattr(c, attr) for c in combos], dtype=float)
    scale = float(y.std())
    varying = x.std(axis=0) > 0  # a parameter held constant carries no information for the surface
    x = x[:, varying] if varying.any() else x[:, :1]
    xs = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    if scale == 0:
        pred, post = y, np.zeros_like(y)
    else:
        ys = (y - y.mean()) / scale
        weights = np.array([c.scored for c in combos], dtype=float)
        kernel = ConstantKernel(1.0, (1e-2, 1e2)) * RBF(np.ones(x.shape[1]), (1e-2, 1e2)) + WhiteKernel(
            0.1, (1e-5, 1e1))
        gp = GaussianProcessRegressor(kernel, alpha=1.0 / weights, normalize_y=False, random_state=0)
        with warnings.catch_warnings():
            # A noise level at its bound means the buckets' means are fitted almost exactly: expected, not an error.
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(xs, ys)
        m, s = gp.predict(xs, return_std=True)
        pred, post = m * scale + y.mean(), s * scale
    order = np.argsort(-pred if larger else pred, kind="stable")
    out = []
    for i in order[:RECOMMENDATIONS]:
        conf = 0.0 if scale == 0 else max(0.0, min(1.0, 1.0 - float(post[i]) / scale))
        if scale == 0:
            conf = min(1.0, combos[i].scored / (combos[i].scored + 10))
        out.append(Recommendation(combos[i], float(pred[i]), round(conf, 3)))
    return out


def sensitivity(pairs: dict[tuple[str, str], Sums], combos: list[Combo], objective: str) -> dict[str, dict[str, Any]]:
    """Per parameter: |Pearson r| with the objective's metric over the responses, the optimal range of the
    buckets in the objective's top quartile, and the sensitivity label."""
    _, attr, larger, metric = OBJECTIVES[objective]
    if larger:
        ranges = optimal_ranges(combos, attr)
    else:  # the top quartile of "lower is better": rank by the negated mean
        flipped = [Combo(c.model, c.parameters, c.responses, -c.cost, -c.time_ms, c.scored, c.quality_sum,
                         c.quality_sq, c.creativity_sum, c.experiments) for c in combos]
        ranges = optimal_ranges(flipped, attr)
    out = {}
    for p in PARAMETERS:
        s = pairs.get((p, metric))
        c = stats.pearson(s) if s is not None else None
        if c is None or p not in ranges:
            continue
        impact = round(abs(c.r), 3)
        out[p] = {"impact_on_quality": impact, "optimal_range": list(ranges[p]),
                  "sensitivity": stats.sensitivity(impact)}
    return out


def insights(combos: list[Combo], pairs: dict[tuple[str, str], Sums], objective: str,
             constraints: Constraints) -> Insights:
    admitted = [c for c in combos if constraints.admits(c)]
    notes = []
    if len(admitted) < MIN_BUCKETS:
        notes.append(f"Too little data to fit a model: {len(admitted)} tested parameter combination(s) meet the "
                     f"constraints; at least {MIN_BUCKETS} are needed.")
        recs: list[Recommendation] = []
    else:
        recs = fit_and_rank(admitted, objective)
    frontier = stats.pareto_frontier(admitted, key=lambda c: (c.quality, c.mean_cost, c.mean_seconds))
    sens = sensitivity(pairs, admitted, objective)
    if not sens and admitted:
        notes.append("No parameter sensitivity: no parameter varied over at least 3 scored responses.")
    return Insights(recs, sens, frontier, notes)
