"""JSON and CSV renderings of an export."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from .tables import Export, analysis_table, experiment_table, response_table

# Key facts of the reproducibility record repeated on every CSV row: a CSV has one table and no place for a
# document beside it, so each row carries what it came from (the whole record is in JSON, XLSX and PDF exports).
CSV_RECORD_COLUMNS = ("platform_version", "generated_at", "model_artifact_sha256", "seed", "scorer_version")


def render_json(x: Export) -> bytes:
    exps = []
    step = x.ticker()
    done = 0
    for e in x.experiments:
        e = dict(e)
        responses = []
        for r in e.get("responses", []):
            step(done)
            done += 1
            r = dict(r)
            if not x.include_responses:
                r.pop("content", None)
            if not x.include_metrics:
                r.pop("quality_metrics", None)
            responses.append(r)
        e["responses"] = responses
        exps.append(e)
    doc: dict[str, Any] = {"export": {"kind": x.kind, "title": x.title}, "reproducibility": x.record,
                           "experiments": exps}
    if x.include_analysis:
        headers, rows = analysis_table(x.experiments)
        doc["analysis"] = [dict(zip(headers, row, strict=True)) for row in rows]
    return json.dumps(doc, indent=2, ensure_ascii=False).encode()


def _record_values(x: Export, experiment_id: Any) -> list[Any]:
    rec = x.record
    models = {m.get("id"): m for m in rec.get("models", [])}
    exp = next((e for e in rec.get("experiments", []) if e.get("id") == experiment_id), {})
    scorer = rec.get("scorer_version")
    return [rec.get("platform_version"), rec.get("generated_at"),
            (models.get(exp.get("model")) or {}).get("artifact_sha256"), exp.get("seed"),
            ",".join(scorer) if isinstance(scorer, list) else scorer]


def _cell(v: Any) -> Any:
    return "" if v is None else v


def render_csv(x: Export) -> bytes:
    """RFC 4180: CRLF line ends, fields with commas, quotes or line breaks quoted, quotes doubled; a header row.

    One row per response (experiment columns repeated); an experiment without responses gets one row of its own.
    """
    out = io.StringIO(newline="")
    writer = csv.writer(out, dialect="excel", lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    r_headers, r_rows = response_table(x)
    e_headers, e_rows = experiment_table(x.experiments)
    with_responses = {row[0] for row in r_rows}
    extra = [h for h in ("type", "status", "quality_score", "total_cost", "created_at") if h in e_headers]
    writer.writerow([*r_headers, *(f"experiment_{h}" for h in extra), *CSV_RECORD_COLUMNS])
    by_id = {row[0]: dict(zip(e_headers, row, strict=True)) for row in e_rows}
    step = x.ticker(0.5, 0.5)
    for i, row in enumerate(r_rows):
        step(i)
        exp = by_id[row[0]]
        writer.writerow([*map(_cell, row), *(_cell(exp[h]) for h in extra),
                         *map(_cell, _record_values(x, row[0]))])
    for e_id, exp in by_id.items():
        if e_id in with_responses:
            continue
        base = {"experiment_id": e_id, "experiment_name": exp["name"], "model": exp["model"],
                "temperature": exp["temperature"], "top_p": exp["top_p"]}
        writer.writerow([*(_cell(base.get(h)) for h in r_headers), *(_cell(exp[h]) for h in extra),
                         *map(_cell, _record_values(x, e_id))])
    return out.getvalue().encode("utf-8")
