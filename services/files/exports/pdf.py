"""PDF reports with matplotlib: a title page, a summary table, charts, and the reproducibility record.

Pages are A4 portrait figures written with PdfPages. Figures are made with matplotlib's object API, never
pyplot: pyplot keeps global state, and reports render in worker threads, several at a time.
"""

from __future__ import annotations

import io
import textwrap
from typing import Any

from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .tables import Export, analysis_table, dimension_means, overall, record_rows

A4 = (8.27, 11.69)
MAX_TABLE_ROWS = 30
ROW_H = 0.022  # a table row's height, as a share of the page's axes


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="#555555", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _title_page(pdf: PdfPages, x: Export) -> None:
    fig = Figure(figsize=A4)
    fig.text(0.5, 0.72, x.title, ha="center", fontsize=24, weight="bold", wrap=True)
    if x.subtitle:
        fig.text(0.5, 0.66, x.subtitle, ha="center", fontsize=13, color="#333333")
    n_resp = sum(len(e.get("responses", [])) for e in x.experiments)
    lines = [f"{len(x.experiments)} experiment(s), {n_resp} response(s)",
             f"Generated {x.record.get('generated_at', '')} by llmlab {x.record.get('platform_version', '')}"]
    tr = x.record.get("time_range")
    if tr:
        lines.append(f"Data from {tr['from']} to {tr['to']}")
    for i, line in enumerate(lines):
        fig.text(0.5, 0.56 - i * 0.035, line, ha="center", fontsize=11)
    fig.add_artist(Line2D([0.15, 0.85], [0.62, 0.62], color="#1f4e79", linewidth=2))
    pdf.savefig(fig)


def _summary_page(pdf: PdfPages, x: Export) -> None:
    headers, rows = analysis_table(x.experiments)
    fig = Figure(figsize=A4)
    ax = fig.subplots()
    ax.axis("off")
    ax.set_title("Summary", fontsize=16, weight="bold", loc="left")
    cols = ["experiment_id", "name", "responses", "quality_mean", "quality_sd", "mean_response_time_ms", "total_cost"]
    idx = [headers.index(c) for c in cols]
    cells = [[("" if r[i] is None else textwrap.shorten(str(r[i]), 28)) for i in idx] for r in rows[:MAX_TABLE_ROWS]]
    if cells:
        height = ROW_H * (len(cells) + 1)
        table = ax.table(cellText=cells, colLabels=["id", "name", "responses", "quality", "sd", "latency ms", "cost $"],
                         bbox=(0, 0.98 - height, 1, height), cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        if len(rows) > MAX_TABLE_ROWS:
            ax.text(0, 0.98 - height - 0.025, f"… and {len(rows) - MAX_TABLE_ROWS} more experiments (see the XLSX "
                    "export)", transform=ax.transAxes, fontsize=9)
    else:
        _empty(ax, "No experiments matched")
    means = dimension_means(x.experiments)
    if means:
        top = 0.98 - ROW_H * (len(cells) + 1) - (0.09 if len(rows) > MAX_TABLE_ROWS else 0.06)
        ax.text(0, top, "Mean quality per dimension", transform=ax.transAxes, fontsize=12, weight="bold")
        height = ROW_H * (len(means) + 1)
        dims = ax.table(cellText=[[k, f"{v:.1f}"] for k, v in means.items()], colLabels=["dimension", "mean"],
                        bbox=(0, top - 0.02 - height, 0.5, height), cellLoc="left")
        dims.auto_set_font_size(False)
        dims.set_fontsize(8)
    pdf.savefig(fig)


def _charts_page(pdf: PdfPages, x: Export) -> None:
    fig = Figure(figsize=A4)
    axes = fig.subplots(2, 2)
    fig.suptitle("Quality and cost", fontsize=16, weight="bold")
    (ax_dim, ax_time), (ax_param, ax_cost) = axes

    means = dimension_means(x.experiments)
    if means:
        names = list(means)
        ax_dim.barh(names, [means[n] for n in names], color="#2e75b6")
        ax_dim.invert_yaxis()
        ax_dim.set_xlabel("mean score")
        ax_dim.set_xlim(0, max(100.0, *means.values()))
    else:
        _empty(ax_dim, "No scored responses yet")
    ax_dim.set_title("Quality per dimension")

    series = [(e, [overall(r) for r in e.get("responses", [])]) for e in x.experiments]
    plotted = False
    for e, qs in series[:10]:
        pts = [(i + 1, q) for i, q in enumerate(qs) if q is not None]
        if pts:
            ax_time.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=2, linewidth=1,
                         label=_short(str(e.get("name", e.get("id"))), 24))
            plotted = True
    if plotted:
        ax_time.set_xlabel("response (generation order)")
        ax_time.set_ylabel("overall quality")
        ax_time.legend(fontsize=6)
    else:
        _empty(ax_time, "No scored responses yet")
    ax_time.set_title("Quality over time")

    pts = [((e.get("parameters") or {}).get("temperature"), q) for e, qs in series for q in qs]
    pts = [(t, q) for t, q in pts if t is not None and q is not None]
    if pts:
        ax_param.scatter([p[0] for p in pts], [p[1] for p in pts], s=8, alpha=0.6, color="#c55a11")
        ax_param.set_xlabel("temperature")
        ax_param.set_ylabel("overall quality")
    else:
        _empty(ax_param, "No scored responses yet")
    ax_param.set_title("Parameter vs quality")

    costs = [(_short(str(e.get("name", e.get("id"))), 16), float(e.get("total_cost") or 0))
             for e in x.experiments[:20]]
    if costs and any(c for _, c in costs):
        ax_cost.bar(range(len(costs)), [c for _, c in costs], color="#548235")
        ax_cost.set_xticks(range(len(costs)), [n for n, _ in costs], rotation=45, ha="right", fontsize=7)
        ax_cost.set_ylabel("USD")
    else:
        _empty(ax_cost, "No cost recorded yet")
    ax_cost.set_title("Cost per experiment")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    pdf.savefig(fig)


def _record_page(pdf: PdfPages, x: Export) -> None:
    fig = Figure(figsize=A4)
    fig.text(0.08, 0.95, "Reproducibility record", fontsize=16, weight="bold")
    lines = [f"{k}: {'null' if v is None else v}" for k, v in record_rows(x.record)]
    y = 0.91
    for line in lines[:70]:
        fig.text(0.08, y, textwrap.shorten(line, 110), fontsize=7, family="monospace")
        y -= 0.0125
    if len(lines) > 70:
        fig.text(0.08, y, f"… {len(lines) - 70} more entries (see the JSON or XLSX export)", fontsize=7)
    pdf.savefig(fig)


def render_pdf(x: Export) -> bytes:
    out = io.BytesIO()
    with PdfPages(out, metadata={"Title": x.title, "Creator": "llmlab"}) as pdf:
        _title_page(pdf, x)
        _summary_page(pdf, x)
        _charts_page(pdf, x)
        _record_page(pdf, x)
    return out.getvalue()
