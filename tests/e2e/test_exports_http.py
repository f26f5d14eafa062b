"""Exports and reports through the real gateway (`/api/export/...`, docs/files.md): JSON, CSV, XLSX with native charts,
PDF with charts — each downloaded from its signed export_url without a credential and opened."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import zipfile

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e

DIMS = ("coherence", "completeness", "readability", "creativity", "specificity", "length_appropriateness")
# Rendered pages are kept here for a person to look at (docs/files.md "Looking at reports").
PNG_DIR = pathlib.Path(os.environ.get("LLMLAB_EXPORT_PNG_DIR", ".run/export-pngs"))


async def make_experiment(http: httpx.AsyncClient, db, name: str, temperature: float, n: int) -> int:
    r = await http.post("/api/experiments", json={
        "name": name, "type": "single", "model": "smollm2-135m-instruct", "prompt": "Write a haiku, \"quoted\"",
        "parameters": {"temperature": temperature, "top_p": 0.9, "max_tokens": 64}, "tags": ["export"]})
    assert r.status_code == 200, r.text
    exp_id = r.json()["data"]["experiment"]["id"]
    rng = random.Random(exp_id)
    # Responses come from the lab loop (POST /api/responses/generate); rows written here stand in for it.
    for i in range(n):
        metrics = {d: round(rng.uniform(60, 95), 1) for d in DIMS}
        metrics["overall_quality"] = round(sum(metrics.values()) / len(DIMS), 1)
        await db.execute(
            """INSERT INTO responses (experiment_id, content, quality_metrics, overall_quality, response_time_ms,
                                      token_count, cost) VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7)""",
            exp_id, f"Line one, with comma\nline \"two\" {i}", json.dumps(metrics), metrics["overall_quality"],
            rng.randint(200, 900), rng.randint(20, 64), 0.0001 * (i + 1))
    return exp_id


async def download(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as anonymous:
        r = await anonymous.get(url)
    assert r.status_code == 200, r.text
    return r


@pytest.fixture(scope="module")
async def experiments(http, platform):
    import asyncpg

    conn = await asyncpg.connect(platform.database_url)
    await conn.execute(f"SET search_path TO {platform.schema('experiments')}")
    try:
        ids = [await make_experiment(http, conn, f"Export test {t}", t, 12) for t in (0.2, 0.7, 1.2)]
    finally:
        await conn.close()
    return ids


async def test_export_experiment_in_each_format(http, experiments):
    exp_id = experiments[0]
    seen = {}
    for fmt in ("json", "csv", "xlsx", "pdf"):
        r = await http.get(f"/api/export/experiment/{exp_id}", params={"format": fmt})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["success"] and body["meta"]["request_id"]
        data = body["data"]
        assert data["format"] == fmt and data["expires_at"].endswith("Z")
        assert re.fullmatch(r"\d+(\.\d)?(B|KB|MB|GB)", data["file_size"]), data["file_size"]
        assert re.search(rf"/downloads/[0-9a-f]+/experiment_{exp_id}_\d{{8}}\.{fmt}\?", data["export_url"])
        seen[fmt] = (await download(data["export_url"])).content

    doc = json.loads(seen["json"])
    exp = doc["experiments"][0]
    assert exp["id"] == exp_id and len(exp["responses"]) == 12 and "content" in exp["responses"][0]
    rec = doc["reproducibility"]
    for key in ("platform_version", "generated_at", "models", "engine", "experiments", "scorer_version",
                "dataset_version", "time_range"):
        assert key in rec, key
    assert rec["experiments"][0]["parameters"]["temperature"] == 0.2

    assert seen["csv"].count(b"\r\n") >= 13  # RFC 4180 line ends
    rows = list(csv.reader(io.StringIO(seen["csv"].decode(), newline="")))
    assert rows[0][:3] == ["experiment_id", "experiment_name", "model"] and "platform_version" in rows[0]
    assert len(rows) == 13 and rows[1][rows[0].index("content")].startswith("Line one, with comma\nline \"two\"")

    with zipfile.ZipFile(io.BytesIO(seen["xlsx"])) as z:
        names = z.namelist()
    charts = [n for n in names if n.startswith("xl/charts/chart")]
    assert len(charts) >= 3, names
    assert any("sheet" in n for n in names)
    assert seen["pdf"].startswith(b"%PDF")

    r = await http.get(f"/api/export/experiment/{exp_id}",
                       params={"format": "json", "include_responses": "false", "include_metrics": "false"})
    doc = json.loads((await download(r.json()["data"]["export_url"])).content)
    assert all("content" not in x and "quality_metrics" not in x for x in doc["experiments"][0]["responses"])


def render_pages(pdf: bytes, name: str) -> list[pathlib.Path]:
    """Each page to PNG with poppler's pdftoppm (Debian poppler-utils)."""
    assert shutil.which("pdftoppm"), "pdftoppm missing: install poppler-utils (Makefile setup)"
    PNG_DIR.mkdir(parents=True, exist_ok=True)
    src = PNG_DIR / f"{name}.pdf"
    src.write_bytes(pdf)
    for old in PNG_DIR.glob(f"{name}-*.png"):
        old.unlink()
    subprocess.run(["pdftoppm", "-png", "-r", "60", str(src), str(PNG_DIR / name)], check=True, timeout=120)
    return sorted(PNG_DIR.glob(f"{name}-*.png"))


def ink(png: pathlib.Path) -> tuple[float, float]:
    """Share of non-white pixels, and share of coloured (chart) pixels."""
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    non_white = (a.min(axis=2) < 235).mean()
    coloured = ((a.max(axis=2) - a.min(axis=2)) > 60).mean()
    return float(non_white), float(coloured)


async def test_report_pdf_pages_are_drawn_with_charts(http, experiments):
    r = await http.post("/api/export/reports", json={"report_type": "quality_analysis",
                                                     "experiment_ids": experiments, "format": "pdf"})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["format"] == "pdf"
    pages = render_pages((await download(r.json()["data"]["export_url"])).content, "quality_analysis")
    assert len(pages) == 4  # title, summary table, charts, reproducibility record
    for page in pages:
        non_white, _ = ink(page)
        assert non_white > 0.002, f"{page} is blank"
    _, coloured = ink(pages[2])
    assert coloured > 0.02, "the charts page has no coloured chart marks"

    r = await http.post("/api/export/reports", json={"report_type": "quality_analysis", "experiment_ids": experiments,
                                                     "format": "xlsx"})
    with zipfile.ZipFile(io.BytesIO((await download(r.json()["data"]["export_url"])).content)) as z:
        assert len([n for n in z.namelist() if n.startswith("xl/charts/chart")]) >= 3


async def test_export_batch(http, experiments):
    r = await http.post("/api/export/batch", json={"experiment_ids": experiments, "format": "json",
                                                   "include_analysis": True})
    assert r.status_code == 200, r.text
    doc = json.loads((await download(r.json()["data"]["export_url"])).content)
    assert [e["id"] for e in doc["experiments"]] == experiments
    assert [a["experiment_id"] for a in doc["analysis"]] == experiments and doc["analysis"][0]["quality_mean"]
    r = await http.post("/api/export/batch", json={"experiment_ids": experiments})
    assert r.json()["data"]["format"] == "csv"
    rows = list(csv.reader(io.StringIO((await download(r.json()["data"]["export_url"])).content.decode(),
                                       newline="")))
    assert len(rows) == 1 + 36


async def test_export_bad_input(http, experiments):
    def lab_error(r: httpx.Response, status: int) -> dict:
        assert r.status_code == status, r.text
        body = r.json()
        assert body["success"] is False and body["error"]["statusCode"] == status and body["meta"]["request_id"]
        return body["error"]

    lab_error(await http.get("/api/export/experiment/999999", params={"format": "csv"}), 404)
    err = lab_error(await http.get(f"/api/export/experiment/{experiments[0]}", params={"format": "docx"}), 400)
    assert err["details"]["field"] == "format"
    err = lab_error(await http.post("/api/export/batch", json={"experiment_ids": [], "format": "csv"}), 400)
    assert err["details"]["field"] == "experiment_ids"
    lab_error(await http.post("/api/export/batch", json={"experiment_ids": [experiments[0], 999999]}), 404)
    lab_error(await http.post("/api/export/reports", json={"report_type": "vibes", "experiment_ids": [1]}), 400)
    lab_error(await http.post("/api/export/reports", json={"report_type": "quality_analysis"}), 400)
    lab_error(await http.post("/api/export/reports", json={"report_type": "quality_analysis",
                                                           "date_range": {"from": "2024-13-01", "to": "x"}}), 400)


async def test_large_export_runs_as_a_job_with_progress(http, platform):
    """More responses than the job threshold (LLMLAB_FILES_EXPORT_JOB_RESPONSES, 5000): the answer comes at once,
    the job reports progress, and the URL serves the file once it is done."""
    import asyncio

    import asyncpg

    conn = await asyncpg.connect(platform.database_url)
    await conn.execute(f"SET search_path TO {platform.schema('experiments')}")
    try:
        exp_id = await make_experiment(http, conn, "Large export", 0.5, 0)
        await conn.executemany(
            """INSERT INTO responses (experiment_id, content, quality_metrics, overall_quality, response_time_ms,
                                      token_count, cost) VALUES ($1, $2, $3::jsonb, $4, 100, 10, 0.0001)""",
            [(exp_id, f"r{i}", json.dumps({"coherence": 80.0, "overall_quality": 80.0}), 80.0) for i in range(5001)])
    finally:
        await conn.close()
    r = await http.get(f"/api/export/experiment/{exp_id}", params={"format": "xlsx"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["status"] in ("running", "completed") and data["job_id"] and 0 <= data["progress"] <= 100
    async with httpx.AsyncClient(timeout=60) as anonymous:
        early = await anonymous.get(data["export_url"])
    assert early.status_code in (200, 409), early.text
    if early.status_code == 409:
        assert early.json()["error"] == "export_not_ready" and "% done" in early.json()["message"]
    seen = []
    for _ in range(300):
        job = (await http.get(f"/api/export/jobs/{data['job_id']}")).json()["data"]
        seen.append(job["progress"])
        if job["status"] != "running":
            break
        await asyncio.sleep(0.2)
    assert job["status"] == "completed" and job["progress"] == 100 and job["file_size"], job
    assert seen == sorted(seen)
    with zipfile.ZipFile(io.BytesIO((await download(job["export_url"])).content)) as z:
        assert any(n.startswith("xl/charts/chart") for n in z.namelist())
    r = await http.get("/api/export/jobs/00000000-0000-4000-8000-000000000000")
    assert r.status_code == 404 and r.json()["success"] is False


async def test_a_large_export_can_be_cancelled(http, platform):
    """POST /api/export/jobs/{id}/cancel (docs/files.md "Export jobs"): the job ends "cancelled", its URL is refused
    (422), and cancelling again answers the same state."""
    import asyncio

    import asyncpg

    conn = await asyncpg.connect(platform.database_url)
    await conn.execute(f"SET search_path TO {platform.schema('experiments')}")
    try:
        exp_id = await make_experiment(http, conn, "Cancelled export", 0.5, 0)
        await conn.executemany(
            """INSERT INTO responses (experiment_id, content, quality_metrics, overall_quality, response_time_ms,
                                      token_count, cost) VALUES ($1, $2, $3::jsonb, $4, 100, 10, 0.0001)""",
            [(exp_id, f"r{i}", json.dumps({"coherence": 80.0, "overall_quality": 80.0}), 80.0)
             for i in range(8000)])
    finally:
        await conn.close()
    data = (await http.get(f"/api/export/experiment/{exp_id}", params={"format": "xlsx"})).json()["data"]
    assert data["status"] == "running", data
    r = await http.post(f"/api/export/jobs/{data['job_id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True and r.json()["data"]["status"] == "cancelled"
    await asyncio.sleep(1)
    job = (await http.get(f"/api/export/jobs/{data['job_id']}")).json()["data"]
    assert job["status"] == "cancelled" and job["file_size"] == "", job
    async with httpx.AsyncClient(timeout=60) as anonymous:
        refused = await anonymous.get(data["export_url"])
    assert refused.status_code == 422 and "cancelled" in refused.json()["message"], refused.text
    again = await http.post(f"/api/export/jobs/{data['job_id']}/cancel")
    assert again.status_code == 200 and again.json()["data"]["status"] == "cancelled"
    r = await http.post("/api/export/jobs/00000000-0000-4000-8000-000000000000/cancel")
    assert r.status_code == 404 and r.json()["success"] is False
