"""Parameter optimisation: a response surface fitted to the tested parameter buckets, the sensitivity of each
parameter, and the quality/cost/speed Pareto frontier (docs/analytics.md "Optimisation")."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.preprocessing import PolynomialFeatures

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


def _design(xs: np.ndarray, n_buckets: int) -> np.ndarray:
    """Quadratic terms when the buckets leave degrees of freedom for them, else linear ones."""
    for degree in (2, 1):
        phi = PolynomialFeatures(degree, include_bias=True).fit_transform(xs)
        if n_buckets - phi.shape[1] >= 1:
            return phi
    return phi


def fit_and_rank(combos: list[Combo], objective: str) -> list[Recommendation]:
    """Fit a weighted least-squares response surface (quadratic in the standardised parameters that vary; scikit-
    learn's Ridge with a negligible penalty, solved by Cholesky; each bucket weighted by its scored responses, since
    a bucket mean of n responses has variance sigma^2/n) and rank the tested buckets by the fitted objective.

    confidence = 1 - se(fit) / sd(bucket means), clipped to 0..1, where se(fit)^2 = s^2 phi' (Phi' W Phi)^-1 phi and
    s^2 = sum(w r^2) / (buckets - terms): high where many consistent observations pin the surface down, 0 when the
    fit has no residual degrees of freedom to judge it by."""
    _, attr, larger, _ = OBJECTIVES[objective]
    x = _features(combos)
    y = np.array([getattr(c, attr) for c in combos], dtype=float)
    w = np.array([c.scored for c in combos], dtype=float)
    varying = x.std(axis=0) > 0  # a parameter held constant carries no information for the surface
    x = x[:, varying] if varying.any() else x[:, :0]
    xs = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0) if x.shape[1] else x
    phi = _design(xs, len(combos)) if x.shape[1] else np.ones((len(combos), 1))
    # Normal equations (Cholesky): ~1 ms at 3,000 buckets, where the SVD least squares took ~45 ms.
    model = Ridge(alpha=1e-9, fit_intercept=False, solver="cholesky").fit(phi, y, sample_weight=w)
    pred = model.predict(phi)
    dof = len(combos) - phi.shape[1]
    spread = math.sqrt(float(np.average((y - np.average(y, weights=w)) ** 2, weights=w)))
    if dof >= 1 and spread > 0:
        s2 = float(np.sum(w * (y - pred) ** 2)) / dof
        cov = np.linalg.pinv(phi.T @ (phi * w[:, None]))
        se = np.sqrt(np.maximum(0.0, np.einsum("ij,jk,ik->i", phi, cov, phi) * s2))
        conf = np.clip(1.0 - se / spread, 0.0, 1.0)
    else:
        conf = np.zeros(len(combos))
    order = np.lexsort((-w, -pred if larger else pred))  # ties: the better-observed bucket first
    return [Recommendation(combos[i], float(pred[i]), round(float(conf[i]), 3)) for i in order[:RECOMMENDATIONS]]


def sensitivity(pairs: dict[tuple[str, str], Sums], combos: list[Combo], objective: str) -> dict[str, dict[str, Any]]:
    """Per parameter: |Pearson r| with the objective's metric over the responses, the optimal range of the
    buckets in the objective's top quartile, and the sensitivity label."""
    _, attr, larger, metric = OBJECTIVES[objective]
    ranges = optimal_ranges(combos, attr, larger)
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
