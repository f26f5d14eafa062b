"""XLSX rendering with XlsxWriter: one sheet per table and native Excel charts that read those sheets' cells."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import xlsxwriter

from .tables import Export, analysis_table, dimension_means, experiment_table, record_rows, response_table

MAX_CELL = 32767  # Excel's limit on one cell's text


def _value(v: Any) -> Any:
    if isinstance(v, str) and len(v) > MAX_CELL:
        return v[: MAX_CELL - 1] + "…"
    if isinstance(v, dict | list):
        return json.dumps(v)
    return v


def _sheet(book: Any, name: str, headers: list[str], rows: list[list[Any]], bold: Any,
           step: Callable[[int], None] | None = None) -> Any:
    ws = book.add_worksheet(name)
    ws.write_row(0, 0, headers, bold)
    for i, row in enumerate(rows, start=1):
        if step is not None:
            step(i)
        for j, v in enumerate(row):
            if v is None:
                continue
            ws.write(i, j, _value(v))
    ws.freeze_panes(1, 0)
    if rows:
        ws.autofilter(0, 0, len(rows), len(headers) - 1)
    ws.set_column(0, len(headers) - 1, 14)
    return ws


def render_xlsx(x: Export) -> bytes:
    out = io.BytesIO()
    # Text is never turned into formulas or links: response content is untrusted (CSV/formula injection).
    book = xlsxwriter.Workbook(out, {"in_memory": True, "strings_to_urls": False, "strings_to_formulas": False,
                                     "nan_inf_to_errors": True})
    bold = book.add_format({"bold": True})
    charts_ws = book.add_worksheet("Charts")
    e_headers, e_rows = experiment_table(x.experiments)
    _sheet(book, "Experiments", e_headers, e_rows, bold)
    r_headers, r_rows = response_table(x)
    _sheet(book, "Responses", r_headers, r_rows, bold, x.ticker(0.5, 0.5))
    means = dimension_means(x.experiments) if x.include_metrics else {}
    _sheet(book, "Metrics", ["dimension", "mean"], [[k, round(v, 2)] for k, v in means.items()], bold)
    a_headers, a_rows = analysis_table(x.experiments)
    _sheet(book, "Analysis", a_headers, a_rows, bold)
    _sheet(book, "Reproducibility", ["key", "value"], [[k, v] for k, v in record_rows(x.record)], bold)

    charts_ws.write(0, 0, x.title, book.add_format({"bold": True, "font_size": 14}))
    place = 2
    if means:
        chart = book.add_chart({"type": "column"})
        chart.add_series({"name": "Mean quality", "categories": ["Metrics", 1, 0, len(means), 0],
                          "values": ["Metrics", 1, 1, len(means), 1]})
        chart.set_title({"name": "Quality per dimension"})
        chart.set_legend({"none": True})
        charts_ws.insert_chart(place, 0, chart)
        place += 16
    if x.include_metrics and r_rows:
        col = r_headers.index("overall_quality")
        chart = book.add_chart({"type": "line"})
        chart.add_series({"name": "Overall quality", "values": ["Responses", 1, col, len(r_rows), col]})
        chart.set_title({"name": "Quality over responses (in order)"})
        chart.set_x_axis({"name": "response"})
        charts_ws.insert_chart(place, 0, chart)
        scatter = book.add_chart({"type": "scatter"})
        t_col = r_headers.index("temperature")
        scatter.add_series({"name": "temperature vs quality",
                            "categories": ["Responses", 1, t_col, len(r_rows), t_col],
                            "values": ["Responses", 1, col, len(r_rows), col], "marker": {"type": "circle"}})
        scatter.set_title({"name": "Parameter vs quality"})
        scatter.set_x_axis({"name": "temperature"})
        scatter.set_y_axis({"name": "overall quality"})
        charts_ws.insert_chart(place, 9, scatter)
        place += 16
    if e_rows:
        cost_col = e_headers.index("total_cost")
        chart = book.add_chart({"type": "column"})
        chart.add_series({"name": "Total cost (USD)", "categories": ["Experiments", 1, 1, len(e_rows), 1],
                          "values": ["Experiments", 1, cost_col, len(e_rows), cost_col]})
        chart.set_title({"name": "Cost per experiment"})
        chart.set_legend({"none": True})
        charts_ws.insert_chart(place, 0, chart)
    book.close()
    return out.getvalue()
