"""What a run will do, checked before anything starts (docs/research.md "Runs"): the models, prompt templates and
seeded sample of dataset rows of a config, or 422 `unprocessable_entity` naming what is missing."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from llmlab.runtime import FailedPrecondition

from . import domain
from .peers import Gone, Model, Peers
from .repository import ResearchRepository, TemplateRow
from .templates import placeholders, render, text_of


@dataclass(frozen=True)
class Generation:
    """One planned generation: a sampled row rendered through a template, sent to a model."""

    key: str
    model: Model
    template_id: str
    row_index: int
    prompt: str
    reference: str | None


@dataclass
class Plan:
    models: list[Model]
    templates: list[TemplateRow]
    rows: list[tuple[int, dict[str, Any]]]  # (index in the concatenated datasets, row)
    metrics: list[str]
    answer_field: str
    parameters: dict[str, Any]
    seed: int | None

    def generations(self) -> list[Generation]:
        out = []
        for model in self.models:
            for t in self.templates:
                for index, row in self.rows:
                    prompt = render(t.template, row, t.default_values)
                    answer = row.get(self.answer_field)
                    out.append(Generation(f"{model.uuid}/{t.id}/{index}", model, t.id, index, prompt,
                                          None if answer is None else text_of(answer)))
        return out


def unprocessable(message: str) -> FailedPrecondition:
    return FailedPrecondition(message)


def sample(n: int, k: int, seed: int | None) -> list[int]:
    """k of range(n) in order, drawn with `seed` (all of them when k >= n): the same seed, the same rows."""
    if k >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), k))


async def prepare(config: dict[str, Any], peers: Peers, repo: ResearchRepository, what: str = "experiment") -> Plan:
    """Resolve and check everything a run of `config` needs; 422 naming the first thing missing."""
    prefix = f"Cannot start {what}: "
    missing = domain.missing_config(config)
    if missing:
        raise unprocessable(prefix + missing)
    models = []
    for model_id in config["model_ids"]:
        try:
            models.append(await peers.model(model_id))
        except Gone:
            raise unprocessable(f"{prefix}model {model_id} is not registered (GET /models lists them)") from None
    params = dict(config.get("parameters") or {})
    for m in models:
        if m.max_output_tokens and int(params.get("max_tokens", 0)) > m.max_output_tokens:
            raise unprocessable(f"{prefix}parameters.max_tokens {params['max_tokens']} exceeds the "
                                f"{m.max_output_tokens} tokens model {m.uuid} can generate")
    templates = []
    for template_id in config["prompt_template_ids"]:
        t = await repo.get_template(template_id)
        if t is None:
            raise unprocessable(f"{prefix}prompt template {template_id} does not exist")
        templates.append(t)
    metrics = domain.effective_metrics(config)
    answer = domain.answer_field(config)
    all_rows: list[dict[str, Any]] = []
    for dataset_id in config["dataset_ids"]:
        try:
            ds = await peers.dataset(dataset_id)
        except Gone:
            raise unprocessable(f"{prefix}dataset {dataset_id} does not exist") from None
        rows = await peers.dataset_rows(dataset_id, ds.format or "jsonl")
        if not rows:
            raise unprocessable(f"{prefix}dataset {dataset_id} has no data (upload a file to it first)")
        if domain.needs_answers(config):
            lacking = sum(1 for r in rows if r.get(answer) in (None, ""))
            if lacking:
                wanted = [m for m in metrics if m in domain.REFERENCE_METRICS]
                raise unprocessable(f"{prefix}{lacking} of {len(rows)} rows of dataset {dataset_id} lack the answer "
                                    f"field {answer!r} that {', '.join(wanted)} compare against")
        all_rows.extend(rows)
    chosen = sample(len(all_rows), domain.num_samples(config), config.get("random_seed"))
    rows = [(i, all_rows[i]) for i in chosen]
    for t in templates:
        for name in placeholders(t.template):
            if name in t.default_values:
                continue
            lacking = sum(1 for _, r in rows if name not in r)
            if lacking:
                raise unprocessable(f"{prefix}prompt template {t.id} needs {{{{{name}}}}}, which {lacking} sampled "
                                    "rows lack and the template has no default for")
    total = len(models) * len(templates) * len(rows)
    if total > domain.MAX_RUN_GENERATIONS:
        raise unprocessable(f"{prefix}{total} generations planned (models x templates x samples); at most "
                            f"{domain.MAX_RUN_GENERATIONS} per run")
    return Plan(models, templates, rows, metrics, answer, params, config.get("random_seed"))
