"""Property-based fuzzing of every route of docs/openapi.json against the running gateway, authenticated (schemathesis
generates the requests from the document; hypothesis, derandomized, makes every run the same).

For each operation, valid (positive) and invalid (negative) requests; every answer must hold:
- no 5xx other than 501 (a route not built yet);
- every error has its family's error body (the document's 4XX/5XX response) with a non-empty request_id;
- every success matches the documented media type and schema;
- a refused write (4xx to a non-GET) leaves the stored experiments exactly as they were.

Bounded for `make test`: LLMLAB_FUZZ_EXAMPLES examples per operation and mode (default 8, about 90 s);
`make fuzz` runs more.
Every distinct failure is listed in the assertion message and in .run/fuzz-report.json with the request as curl.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import jsonschema
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCUMENT = json.loads((ROOT / "docs" / "openapi.json").read_text())
EXAMPLES = int(os.environ.get("LLMLAB_FUZZ_EXAMPLES", "8"))
REPORT = pathlib.Path(os.environ.get("LLMLAB_FUZZ_REPORT", ROOT / ".run" / "fuzz-report.json"))
TIMEOUT_S = 60.0
# Knobs that make one valid request cost minutes of generation; a fuzzed request gets at most this much work.
CLAMPS = {"max_tokens": 8, "max_length": 8, "max_new_tokens": 8, "n": 2, "best_of": 2, "num_samples": 2, "count": 2}
CREDENTIAL_HEADERS = ("authorization", "x-api-key")
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def _validator(schema: dict) -> jsonschema.Draft202012Validator:
    # The document's components sit beside the schema so "#/components/..." references resolve.
    return jsonschema.Draft202012Validator({**schema, "components": DOCUMENT["components"]})


def _resolve(obj: dict) -> dict:
    while "$ref" in obj:
        node: Any = DOCUMENT
        for part in obj["$ref"].lstrip("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def _header(r: Any, name: str) -> str:
    for k, v in r.headers.items():  # schemathesis keeps every header as a list of values
        if k.lower() == name:
            return v[0] if isinstance(v, list) else v
    return ""


def _message(text: str) -> str:
    """The error message of a family error body (any of the four shapes), else the text's start."""
    try:
        body = json.loads(text)
    except ValueError:
        return text[:120]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", ""))[:120]
    return str(body.get("message", ""))[:120] if isinstance(body, dict) else text[:120]


def _clamp(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: min(v, CLAMPS[k]) if k in CLAMPS and isinstance(v, int) and not isinstance(v, bool) else _clamp(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_clamp(v) for v in value]
    return value


@dataclass
class Findings:
    """What the run saw: counts by status class and every distinct failure (first example kept)."""

    requests: int = 0
    by_class: collections.Counter = field(default_factory=collections.Counter)
    by_status: collections.Counter = field(default_factory=collections.Counter)
    by_operation: collections.Counter = field(default_factory=collections.Counter)
    failures: dict[tuple, dict] = field(default_factory=dict)

    def fail(self, kind: str, label: str, status: int, detail: str, case: Any, body: str) -> None:
        key = (kind, label, status, detail[:80])
        if key not in self.failures:
            self.failures[key] = {"kind": kind, "operation": label, "status": status, "detail": detail[:300],
                                  "body": body[:300], "request": case.as_curl_command()[:600], "count": 0}
        self.failures[key]["count"] += 1


class Fuzzer:
    """Sends the generated cases (from a worker thread) and checks each answer."""

    def __init__(self, base_url: str, headers: dict, snapshot: Any) -> None:
        self.base_url, self.headers, self.snapshot = base_url, headers, snapshot
        self.session = requests.Session()
        self.found = Findings()

    def check(self, case: Any) -> None:
        op = case.operation
        label = f"{op.method.upper()} {op.path}"
        if isinstance(case.body, dict | list):
            case.body = _clamp(case.body)
        # The generated credentials (from the security schemes) give way to the admin's key: the run is authenticated.
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in CREDENTIAL_HEADERS}
        write = op.method.upper() != "GET"
        before = self.snapshot() if write else None
        try:
            r = case.call(base_url=self.base_url, session=self.session, headers=self.headers, timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            self.found.requests += 1
            self.found.fail("transport", label, 0, type(exc).__name__, case, str(exc))
            return
        f = self.found
        f.requests += 1
        f.by_operation[label] += 1
        f.by_class[f"{r.status_code // 100}xx"] += 1
        f.by_status[r.status_code] += 1
        is_text = "json" in _header(r, "content-type") or r.status_code >= 400
        text = r.content[:2000].decode("utf-8", "replace") if is_text else ""
        if is_text:
            try:
                r.content.decode("utf-8")
            except UnicodeDecodeError as exc:
                f.fail("invalid UTF-8", label, r.status_code, f"byte {exc.start}: {exc.reason}", case, text)
        if r.status_code >= 500 and r.status_code != 501:
            f.fail("5xx", label, r.status_code, _message(text), case, text)
        responses = op.definition.raw["responses"]
        documented = responses.get(str(r.status_code)) or responses.get(f"{r.status_code // 100}XX")
        if documented is None:
            f.fail("undocumented status", label, r.status_code, "", case, text)
            return
        content = _resolve(documented).get("content", {})
        media = _header(r, "content-type").split(";")[0].strip()
        if media not in content:
            f.fail("media type", label, r.status_code, f"{media!r} not in {sorted(content)}", case, text)
        elif media == "application/json":
            try:
                body = json.loads(r.content)
            except ValueError:
                f.fail("invalid JSON", label, r.status_code, "", case, text)
            else:
                error = next(_validator(content[media]["schema"]).iter_errors(body), None)
                if error is not None:
                    kind = "error shape" if r.status_code >= 400 else "response schema"
                    where = "/".join(str(p) for p in error.absolute_path)
                    f.fail(kind, label, r.status_code, f"{where}: {error.message}", case, text)
        if write and 400 <= r.status_code < 500:
            after = self.snapshot()
            if after != before:
                changed = sorted(t for t in set(before) | set(after) if before.get(t) != after.get(t))
                f.fail("refused write changed data", label, r.status_code, f"tables {changed}", case, text)

    def run(self, schema: Any) -> Findings:
        for result in schema.get_all_operations():
            op = result.ok()
            for mode in MODES:
                try:
                    strategy = op.as_strategy(generation_mode=mode)
                except Exception as exc:  # an operation schemathesis cannot generate for in this mode
                    self.found.failures[("generation", op.label, mode.value)] = {"kind": "cannot generate",
                                                                                 "operation": op.label,
                                                                                 "detail": repr(exc)[:300]}
                    continue

                @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
                @given(case=strategy)
                def fuzz(case: Any) -> None:
                    self.check(case)

                try:
                    fuzz()
                except Unsatisfiable:  # negative mode on a route with nothing to get wrong (no parameters)
                    continue
        return self.found


async def _snapshot_query(conn: asyncpg.Connection, schema: str) -> str:
    tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", schema)
    parts = [
        f"SELECT '{t['tablename']}' AS name, md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) AS sum "
        f'FROM "{schema}"."{t["tablename"]}" x'
        for t in tables
    ]
    return " UNION ALL ".join(parts)


@pytest.mark.timeout(max(1800, EXAMPLES * 300))
async def test_fuzz_every_route_from_the_openapi_document(platform):
    conn = await asyncpg.connect(platform.database_url)
    loop = asyncio.get_running_loop()
    try:
        query = await _snapshot_query(conn, platform.schema("experiments"))

        def snapshot() -> dict[str, str]:
            rows = asyncio.run_coroutine_threadsafe(conn.fetch(query), loop).result(30)
            return {r["name"]: r["sum"] for r in rows}

        schema = schemathesis.openapi.from_dict(DOCUMENT)
        fuzzer = Fuzzer(platform.gateway_url, platform.auth_headers, snapshot)
        started = time.monotonic()
        # The platform's supervisor reads its services' output on this loop: the synchronous run goes to a thread.
        found = await asyncio.to_thread(fuzzer.run, schema)
        elapsed = time.monotonic() - started
    finally:
        await conn.close()
    summary = {"examples_per_operation_and_mode": EXAMPLES, "seconds": round(elapsed, 1), "requests": found.requests,
               "by_class": dict(sorted(found.by_class.items())),
               "by_status": {str(k): v for k, v in sorted(found.by_status.items())},
               "operations": len(found.by_operation),
               "failures": sorted(found.failures.values(), key=lambda f: (f["kind"], f["operation"]))}
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(summary, indent=2))
    print(f"fuzz: {found.requests} requests in {elapsed:.0f}s, {dict(found.by_class)}; report {REPORT}")
    operations = {f"{verb.upper()} {path}" for path, item in DOCUMENT["paths"].items() for verb in item}
    assert operations <= set(found.by_operation), f"never called: {sorted(operations - set(found.by_operation))}"
    assert not found.failures, _grouped(summary["failures"])


def _grouped(failures: list[dict]) -> str:
    """One paragraph per kind of failure (same kind, status and message start), with its routes and one request."""
    groups: dict[tuple, list[dict]] = {}
    for f in failures:
        groups.setdefault((f["kind"], f.get("status"), f["detail"].split(":", 1)[0][:60]), []).append(f)
    lines = [f"{len(failures)} distinct failures in {len(groups)} groups (details: {REPORT})"]
    for (kind, status, _), fs in groups.items():
        ops = sorted({f["operation"] for f in fs})
        lines.append(f"{kind} {status}: {fs[0]['detail'][:160]}\n    on {len(ops)} routes: {', '.join(ops[:8])}"
                     f"{' ...' if len(ops) > 8 else ''}\n    e.g. {fs[0].get('request', '')[:300]}")
    return "\n".join(lines)
