"""Files throughput and memory, and export times: the whole platform on free ports, everything through Envoy.

For each blob backend (the filesystem, then S3 on moto's standalone server started here):
- POST /v1/files (multipart, purpose `assistants`, no row checks) and GET /v1/files/{id}/content of a SIZE MB file:
  MB/s, and the files service's peak RSS growth while the bytes pass (sampled over gRPC ServiceInfo);
- a dataset: signed PUT of a SIZE MB JSONL file whose every row is checked against the dataset's JSON Schema, and
  the signed download: MB/s and peak RSS growth;
then, once: an experiment with 10,000 responses exported as json, csv, xlsx and pdf (seconds, file size).
Usage: python bench/files.py [--mb 200] [--responses 10000] [--backends fs,s3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import httpx

from bench._stack import admin_key, running_platform
from llmlab.common.v1 import service_info_pb2, service_info_pb2_grpc
from llmlab.devstack import free_port

MB = 1024 * 1024
DIMS = ("coherence", "completeness", "readability", "creativity", "specificity", "length_appropriateness")


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


class RssWatch:
    """Samples the files service's RSS every 100 ms while a transfer runs; reports the peak over the start."""

    def __init__(self, port: int) -> None:
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self._stub = service_info_pb2_grpc.ServiceInfoServiceStub(self._channel)
        self.base = self.peak = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _rss(self) -> float:
        return (await self._stub.GetServiceInfo(service_info_pb2.GetServiceInfoRequest())).memory_rss_bytes

    async def __aenter__(self) -> RssWatch:
        self.base = self.peak = await self._rss()

        async def loop() -> None:
            while True:
                self.peak = max(self.peak, await self._rss())
                await asyncio.sleep(0.1)

        self._task = asyncio.create_task(loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, await self._rss())
        await self._channel.close()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / MB


def jsonl_file(path: Path, size: int) -> str:
    """Rows that match SCHEMA until the file reaches `size` bytes; returns its sha256."""
    rng = random.Random(1)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        written, i = 0, 0
        while written < size:
            line = json.dumps({"id": str(i), "question": f"What is {rng.random()}?", "answer": "x" * 120,
                               "difficulty": "easy"}).encode() + b"\n"
            f.write(line)
            digest.update(line)
            written += len(line)
            i += 1
    return digest.hexdigest()


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(MB):
            yield chunk


async def timed_download(client: httpx.AsyncClient, url: str) -> tuple[float, str, int]:
    digest, n = hashlib.sha256(), 0
    start = time.perf_counter()
    async with client.stream("GET", url) as r:
        r.raise_for_status()
        async for chunk in r.aiter_bytes(MB):
            digest.update(chunk)
            n += len(chunk)
    return time.perf_counter() - start, digest.hexdigest(), n


async def transfer_bench(backend: str, env: dict[str, str], path: Path, sha: str) -> list[str]:
    size_mb = path.stat().st_size / MB
    lines = []
    async with running_platform(**env) as cfg:
        key = await admin_key(cfg)
        files_port = cfg.service_ports["files"]
        auth = {"authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=cfg.gateway_url, headers=auth, timeout=600) as http:
            with path.open("rb") as fh:
                async with RssWatch(files_port) as up_mem:
                    start = time.perf_counter()
                    r = await http.post("/v1/files", files={"file": ("big.jsonl", fh)}, data={"purpose": "assistants"})
                    up_s = time.perf_counter() - start
            r.raise_for_status()
            file_id = r.json()["id"]
            async with RssWatch(files_port) as down_mem:
                down_s, got, _ = await timed_download(http, f"/v1/files/{file_id}/content")
            assert got == sha, "content differs"
            lines.append(f"| {backend} | /v1/files upload | {size_mb / up_s:.1f} | {up_mem.growth_mb:.1f} |")
            lines.append(f"| {backend} | /v1/files content | {size_mb / down_s:.1f} | {down_mem.growth_mb:.1f} |")

            schema = {"type": "object", "required": ["id", "question", "answer"],
                      "properties": {"id": {"type": "string"}, "difficulty": {"enum": ["easy", "medium", "hard"]}}}
            d = (await http.post("/datasets", json={"name": "bench", "format": "jsonl", "schema": schema})).json()
            up = (await http.post(f"/datasets/{d['id']}/upload", json={"filename": "big.jsonl"})).json()
            async with RssWatch(files_port) as put_mem:
                start = time.perf_counter()
                async with httpx.AsyncClient(timeout=600) as anonymous:
                    r = await anonymous.put(up["upload_url"], content=file_chunks(path),
                                            headers={"content-type": "application/jsonl"})
                put_s = time.perf_counter() - start
            r.raise_for_status()
            dl = (await http.get(f"/datasets/{d['id']}/download")).json()
            async with RssWatch(files_port) as get_mem, httpx.AsyncClient(timeout=600) as anonymous:
                get_s, got, _ = await timed_download(anonymous, dl["download_url"])
            assert got == sha, "dataset download differs"
            lines.append(f"| {backend} | dataset PUT (rows checked: {r.json()['row_count']}) | {size_mb / put_s:.1f} "
                         f"| {put_mem.growth_mb:.1f} |")
            lines.append(f"| {backend} | dataset signed GET | {size_mb / get_s:.1f} | {get_mem.growth_mb:.1f} |")
    return lines


async def export_bench(responses: int) -> list[str]:
    lines = []
    async with running_platform() as cfg:
        key = await admin_key(cfg)
        async with httpx.AsyncClient(base_url=cfg.gateway_url, headers={"authorization": f"Bearer {key}"},
                                     timeout=600) as http:
            r = await http.post("/api/experiments", json={
                "name": "export bench", "model": "smollm2-135m-instruct", "prompt": "Write a story",
                "parameters": {"temperature": 0.7}})
            exp_id = r.json()["data"]["experiment"]["id"]
            conn = await asyncpg.connect(cfg.database_url)
            schema = cfg.env["LLMLAB_EXPERIMENTS_DB_SCHEMA"]
            rng = random.Random(2)
            rows = []
            for i in range(responses):
                m = {d: round(rng.uniform(50, 99), 1) for d in DIMS}
                m["overall_quality"] = round(sum(m.values()) / len(DIMS), 1)
                rows.append((exp_id, f"Response {i}: " + "lorem ipsum " * 30, json.dumps(m), m["overall_quality"],
                             rng.randint(100, 900), rng.randint(20, 200), 0.00002 * rng.randint(1, 50)))
            # Responses come from the lab loop; rows written here stand in for 10,000 generations.
            await conn.executemany(
                f"""INSERT INTO "{schema}".responses (experiment_id, content, quality_metrics, overall_quality,
                    response_time_ms, token_count, cost) VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7)""", rows)
            await conn.close()
            for fmt in ("json", "csv", "xlsx", "pdf"):
                start = time.perf_counter()
                r = await http.get(f"/api/export/experiment/{exp_id}", params={"format": fmt})
                took = time.perf_counter() - start
                r.raise_for_status()
                lines.append(f"| {fmt} | {responses} | {took:.2f} | {r.json()['data']['file_size']} |")
    return lines


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--responses", type=int, default=10000)
    parser.add_argument("--backends", default="fs,s3")
    args = parser.parse_args()
    out = [f"## Transfers of a {args.mb} MB file (MB/s; files service peak RSS growth, MB)", "",
           "| backend | operation | MB/s | RSS growth MB |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="llmlab-bench-files-") as tmp:
        path = Path(tmp) / "big.jsonl"
        sha = jsonl_file(path, args.mb * MB)
        for backend in args.backends.split(","):
            env = {"LLMLAB_FILES_BLOB_BACKEND": backend, "LLMLAB_FILES_DATA_DIR": str(Path(tmp) / "data")}
            if backend == "s3":
                with moto_server() as endpoint:
                    env.update(LLMLAB_FILES_S3_ENDPOINT_URL=endpoint, LLMLAB_FILES_S3_ACCESS_KEY_ID="bench",
                               LLMLAB_FILES_S3_SECRET_ACCESS_KEY="bench")
                    out += await transfer_bench(backend, env, path, sha)
            else:
                out += await transfer_bench(backend, env, path, sha)
            print(f"{backend} done", flush=True)
    out += ["", f"## Export of one experiment with {args.responses} responses", "",
            "| format | responses | seconds | file_size |", "|---|---|---|---|"]
    out += await export_bench(args.responses)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(asyncio.run(main()))
