"""Export renderers (services/files/exports/): RFC 4180 CSV, XLSX with native charts, PDF pages, the record."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile

from services.files.exports.pdf import render_pdf
from services.files.exports.tables import Export, dimension_means, reproducibility
from services.files.exports.tabular import render_csv, render_json
from services.files.exports.xlsx import render_xlsx


def experiment(exp_id: int, n: int, temperature: float = 0.5) -> dict:
    return {
        "id": exp_id, "name": f"exp {exp_id}", "type": "single", "status": "completed", "model": "m",
        "parameters": {"temperature": temperature, "top_p": 0.9, "seed": 7}, "quality_score": 80.0,
        "response_count": n, "total_cost": 0.01 * n, "created_at": "2024-10-30T10:15:00Z",
        "updated_at": "2024-10-30T10:18:00Z", "tags": ["a", "b"],
        "responses": [{"id": i, "content": f'=HYPERLINK("x"), "quoted", comma\nnew line {i}',
                       "quality_metrics": {"coherence": 70.0 + i, "creativity": 90.0 - i, "scorer_version": "1"},
                       "response_time": 100 * i, "token_count": 10, "cost": 0.01} for i in range(1, n + 1)],
    }


def export(exps: list[dict], **kw) -> Export:
    x = Export("batch", "Title", exps, **kw)
    x.record = reproducibility(exps, {"m": {"id": "m", "artifact_sha256": "ab" * 32}}, {"backend": "onnxruntime"},
                               {"format": "csv"})
    return x


def test_record_names_what_reproduces_the_file():
    rec = export([experiment(1, 2)]).record
    assert rec["platform_version"] and rec["generated_at"].endswith("Z") and rec["scorer_version"] == "1"
    assert rec["models"][0]["artifact_sha256"] == "ab" * 32 and rec["experiments"][0]["seed"] == 7
    assert rec["time_range"] == {"from": "2024-10-30T10:15:00Z", "to": "2024-10-30T10:18:00Z"}


def test_csv_is_rfc4180():
    data = render_csv(export([experiment(1, 2), experiment(2, 0)]))
    text = data.decode()
    assert text.endswith("\r\n") and "\n" not in text.split("\r\n")[0]
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header = rows[0]
    assert len(rows) == 1 + 2 + 1  # two responses, and one row for the experiment without any
    assert all(len(r) == len(header) for r in rows)
    content = rows[1][header.index("content")]
    assert content == '=HYPERLINK("x"), "quoted", comma\nnew line 1'
    assert rows[1][header.index("model_artifact_sha256")] == "ab" * 32 and rows[3][header.index("seed")] == "7"


def test_json_options_drop_content_and_metrics():
    doc = json.loads(render_json(export([experiment(1, 2)], include_responses=False, include_metrics=False,
                                        include_analysis=True)))
    assert all(set(r) == {"id", "response_time", "token_count", "cost"} for r in doc["experiments"][0]["responses"])
    assert doc["analysis"][0]["responses"] == 2 and doc["reproducibility"]["platform"] == "llmlab"


def test_xlsx_has_sheets_and_native_charts():
    with zipfile.ZipFile(io.BytesIO(render_xlsx(export([experiment(1, 5, 0.2), experiment(2, 5, 0.9)])))) as z:
        names = z.namelist()
        workbook = z.read("xl/workbook.xml").decode()
        charts = [z.read(n).decode() for n in names if n.startswith("xl/charts/chart")]
    for sheet in ("Charts", "Experiments", "Responses", "Metrics", "Analysis", "Reproducibility"):
        assert f'name="{sheet}"' in workbook
    kinds = {k for c in charts for k in ("barChart", "lineChart", "scatterChart") if f"<c:{k}>" in c}
    assert len(charts) == 4 and kinds == {"barChart", "lineChart", "scatterChart"}
    assert any("Responses!$" in c for c in charts)  # charts read the sheets' cells


def test_xlsx_never_turns_content_into_formulas():
    with zipfile.ZipFile(io.BytesIO(render_xlsx(export([experiment(1, 1)])))) as z:
        sheets = "".join(z.read(n).decode() for n in z.namelist() if n.startswith("xl/worksheets/"))
    assert "<f>" not in sheets


def test_pdf_without_data_still_reads():
    pdf = render_pdf(export([experiment(1, 0)]))
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf)) == 4


def test_dimension_means_leave_out_the_overall_figure():
    e = experiment(1, 2)
    e["responses"][0]["quality_metrics"]["overall_quality"] = 50.0
    assert set(dimension_means([e])) == {"coherence", "creativity"}
