"""OpenAI files and research datasets through the real gateway: the unmodified `openai` SDK, curl-like HTTP on
signed URLs, bad input in each family's shape (docs/files.md)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.parse

import asyncpg
import httpx
import openai
import pytest

from services.files.signing import Signer

pytestmark = pytest.mark.e2e

BATCH_LINES = [
    {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": f"Hi {i}"}]}}
    for i in range(3)
]
SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "question": {"type": "string"}, "answer": {"type": "string"},
                   "difficulty": {"type": "string", "enum": ["easy", "medium", "hard"]}},
    "required": ["id", "question", "answer"],
}


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture(scope="module")
def sdk(platform) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{platform.gateway_url}/v1", api_key=platform.api_key, max_retries=0)


async def test_openai_sdk_files_roundtrip(sdk):
    data = jsonl(BATCH_LINES)
    created = sdk.files.create(file=("batch_input.jsonl", data), purpose="batch")
    assert created.id.startswith("file-") and created.object == "file"
    assert (created.bytes, created.filename, created.purpose) == (len(data), "batch_input.jsonl", "batch")
    assert created.status == "uploaded" and abs(created.created_at - time.time()) < 120

    tune = sdk.files.create(file=("tune.jsonl", jsonl([{"messages": [{"role": "user", "content": "a"},
                                                                     {"role": "assistant", "content": "b"}]}])),
                            purpose="fine-tune")
    listed = sdk.files.list(purpose="batch")
    ids = [f.id for f in listed.data]
    assert created.id in ids and tune.id not in ids
    page = sdk.files.list(limit=1)
    assert len(page.data) == 1 and page.has_more
    after = sdk.files.list(limit=1, after=page.data[0].id)
    assert after.data[0].id != page.data[0].id and after.data[0].created_at <= page.data[0].created_at
    assert sdk.files.retrieve(created.id).bytes == len(data)
    assert sdk.files.content(created.id).content == data

    deleted = sdk.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError) as err:
        sdk.files.retrieve(created.id)
    assert err.value.response.json()["error"]["type"] == "not_found_error"
    sdk.files.delete(tune.id)


async def test_openai_files_refuse_bad_jsonl_with_line_numbers(sdk, http):
    before = {f.id for f in sdk.files.list().data}
    bad = jsonl(BATCH_LINES[:1]) + b"not json\n" + jsonl([{"custom_id": "x", "method": "POST"}])
    with pytest.raises(openai.BadRequestError) as err:
        sdk.files.create(file=("bad.jsonl", bad), purpose="batch")
    body = err.value.response.json()
    assert body["error"]["param"] == "file" and body["error"]["type"] == "invalid_request_error"
    assert "line 2" in body["error"]["message"] and "line 3" in body["error"]["message"]
    assert "missing url, body" in body["error"]["message"] and body["request_id"]

    with pytest.raises(openai.BadRequestError) as err:
        sdk.files.create(file=("t.jsonl", jsonl([{"prompt": "only"}])), purpose="fine-tune")
    assert "line 1" in err.value.response.json()["error"]["message"]

    with pytest.raises(openai.BadRequestError) as err:
        sdk.files.create(file=("a.txt", b"hello"), purpose="homework")
    assert err.value.response.json()["error"]["param"] == "purpose"

    r = await http.post("/v1/files", content=b"plain", headers={"content-type": "text/plain"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    # purpose after the file part: checked from the store, and the refused file is not kept
    files = {"file": ("late.jsonl", b"[1,2]\n")}
    r = await http.post("/v1/files", files=files, data={"purpose": "batch"})
    assert r.status_code == 400 and "line 1" in r.json()["error"]["message"]
    assert {f.id for f in sdk.files.list().data} == before

    r = await http.get("/v1/files/file-doesnotexist")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


async def create_dataset(http: httpx.AsyncClient, **extra) -> dict:
    r = await http.post("/datasets", json={"name": "Reasoning", "description": "d", "format": "jsonl",
                                           "schema": SCHEMA, "tags": ["reasoning", "benchmark"],
                                           "metadata": {"source": "internal"}, **extra})
    assert r.status_code == 200, r.text
    return r.json()


async def put(url: str, data: bytes) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as anonymous:  # no credential: the signature is the authority
        return await anonymous.put(url, content=data, headers={"content-type": "application/jsonl"})


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as anonymous:
        return await anonymous.get(url)


async def test_dataset_upload_download_versions(http, platform):
    d = await create_dataset(http)
    assert d["size_bytes"] is None and d["row_count"] is None and d["schema"] == SCHEMA
    assert d["tags"] == ["reasoning", "benchmark"] and d["metadata"] == {"source": "internal"}
    assert (await http.get(f"/datasets/{d['id']}")).json()["id"] == d["id"]
    listed = (await http.get("/datasets", params={"limit": 100})).json()
    assert d["id"] in [x["id"] for x in listed["data"]] and listed["pagination"]["total"] >= 1

    r = await http.post(f"/datasets/{d['id']}/upload", json={"filename": "bench_v1.jsonl",
                                                              "content_type": "application/jsonl"})
    assert r.status_code == 200, r.text
    up = r.json()
    assert up["upload_url"].startswith(platform.gateway_url + "/uploads/") and up["expires_at"].endswith("Z")
    v1 = jsonl([{"id": str(i), "question": f"q{i}", "answer": "a", "difficulty": "easy"} for i in range(5)])
    r = await put(up["upload_url"], v1)
    assert r.status_code == 200, r.text
    assert r.json()["row_count"] == 5 and r.json()["size_bytes"] == len(v1)
    again = await put(up["upload_url"], v1)  # a slot is used once
    assert again.status_code == 409 and again.json()["error"] == "conflict"

    got = (await http.get(f"/datasets/{d['id']}")).json()
    assert (got["size_bytes"], got["row_count"]) == (len(v1), 5)
    dl = (await http.get(f"/datasets/{d['id']}/download")).json()
    assert "/downloads/" in dl["download_url"] and dl["download_url"].split("?")[0].endswith("/bench_v1.jsonl")
    r = await get(dl["download_url"])
    assert r.status_code == 200 and r.content == v1

    r = await http.post(f"/datasets/{d['id']}/versions", json={"version": "1.0.0", "description": "first",
                                                                "changelog": "- initial"})
    assert r.status_code == 200, r.text
    ver = r.json()
    assert ver["sha256"] == hashlib.sha256(v1).hexdigest() and ver["row_count"] == 5 and ver["size_bytes"] == len(v1)
    dup = await http.post(f"/datasets/{d['id']}/versions", json={"version": "1.0.0"})
    assert dup.status_code == 409 and dup.json()["error"] == "conflict" and dup.json()["existing_id"] == ver["id"]

    # A file with bad rows is refused with their numbers, and the dataset keeps its data.
    bad = jsonl([{"id": "1", "question": "q", "answer": "a"}, {"id": 2, "question": "q", "answer": "a"},
                 {"id": "3", "question": "q"}, {"id": "4", "question": "q", "answer": "a", "difficulty": "x"}])
    up2 = (await http.post(f"/datasets/{d['id']}/upload", json={"filename": "v2.jsonl"})).json()
    r = await put(up2["upload_url"], bad)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "validation_error" and body["details"]["failed_rows"] == [2, 3, 4], body
    assert "row 2" in body["message"] and body["request_id"]
    assert (await get((await http.get(f"/datasets/{d['id']}/download")).json()["download_url"])).content == v1

    v2 = v1 + jsonl([{"id": "9", "question": "q9", "answer": "a"}])
    assert (await put(up2["upload_url"], v2)).status_code == 200  # the refused file gave its slot back
    assert (await http.get(f"/datasets/{d['id']}")).json()["row_count"] == 6
    old = (await http.get(f"/datasets/{d['id']}/download", params={"version": "1.0.0"})).json()
    assert (await get(old["download_url"])).content == v1
    versions = (await http.get(f"/datasets/{d['id']}/versions")).json()
    assert [v["version"] for v in versions["data"]] == ["1.0.0"]


async def test_signed_urls_refuse_tampering_and_expiry(http, platform):
    d = await create_dataset(http)
    up = (await http.post(f"/datasets/{d['id']}/upload", json={"filename": "x.jsonl"})).json()
    url = urllib.parse.urlsplit(up["upload_url"])
    q = dict(urllib.parse.parse_qsl(url.query))
    token = url.path.rsplit("/", 1)[1]
    tampered = f"{platform.gateway_url}{url.path}?expires={int(q['expires']) + 60}&signature={q['signature']}"
    r = await put(tampered, b"{}\n")
    assert r.status_code == 403 and r.json()["error"] == "forbidden" and r.json()["request_id"]
    flipped = q["signature"][:-1] + ("0" if q["signature"][-1] != "0" else "1")
    assert (await put(f"{platform.gateway_url}{url.path}?expires={q['expires']}&signature={flipped}",
                      b"{}\n")).status_code == 403
    assert (await put(f"{platform.gateway_url}{url.path}", b"{}\n")).status_code == 403

    conn = await asyncpg.connect(platform.database_url)
    try:
        key = await conn.fetchval(f"SELECT value FROM {platform.schema('files')}.secrets WHERE name = 'signing_key'")
    finally:
        await conn.close()
    past = int(time.time()) - 10
    expired = Signer(key.encode()).upload_url(platform.gateway_url, token, past)
    r = await put(expired, b"{}\n")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"

    assert (await get(f"{platform.gateway_url}/downloads/{token}/x.jsonl?expires=2000000000&signature=00")
            ).status_code == 403
    assert (await http.get(f"/datasets/{d['id']}")).json()["size_bytes"] is None  # nothing was stored
    # the signatures handed out never reach any log, the gateway's access log included
    assert q["signature"] not in platform.logs.text()


async def test_dataset_bad_input(http):
    r = await http.post("/datasets", json={"name": "x", "schema": {"type": "nonsense"}})
    assert r.status_code == 400 and r.json()["error"] == "validation_error"
    r = await http.post("/datasets", json={"name": "", "format": "jsonl"})
    assert r.status_code == 400
    r = await http.post("/datasets", json={"name": "x", "format": "parquet"})
    assert r.status_code == 400
    missing = "00000000-0000-4000-8000-000000000000"
    for path in (f"/datasets/{missing}", f"/datasets/{missing}/download", f"/datasets/{missing}/versions"):
        r = await http.get(path)
        assert r.status_code == 404 and r.json()["error"] == "not_found", path
    assert (await http.get("/datasets/not-a-uuid")).status_code == 400
    d = await create_dataset(http)
    r = await http.get(f"/datasets/{d['id']}/download")
    assert r.status_code == 404
    r = await http.post(f"/datasets/{d['id']}/versions", json={"version": "1.0"})
    assert r.status_code == 422 and r.json()["error"] == "unprocessable_entity"


async def test_half_finished_upload_leaves_nothing(http, platform):
    d = await create_dataset(http)
    up = (await http.post(f"/datasets/{d['id']}/upload", json={"filename": "half.jsonl"})).json()
    row = json.dumps({"id": "1", "question": "q", "answer": "a"}).encode() + b"\n"

    async def dies_midway():
        for _ in range(64):
            yield row * 2000
        raise ConnectionError("the client went away")

    async with httpx.AsyncClient(timeout=60) as anonymous:
        with pytest.raises(ConnectionError):
            await anonymous.put(up["upload_url"], content=dies_midway(), headers={"content-type": "application/jsonl"})
    for _ in range(50):  # the service sees the reset a moment later
        tmp = list((platform_root() / ".data" / "files" / ".tmp").glob("*"))
        if not tmp:
            break
        await asyncio.sleep(0.1)
    assert not tmp, "a partial upload was left in the store"
    assert (await http.get(f"/datasets/{d['id']}")).json()["size_bytes"] is None
    assert (await http.get(f"/datasets/{d['id']}/download")).status_code == 404
    # the interrupted PUT gives its slot back once the service has cleaned up
    for _ in range(50):
        r = await put(up["upload_url"], row)
        if r.status_code != 409:
            break
        await asyncio.sleep(0.1)
    assert r.status_code == 200, r.text


def platform_root():
    import pathlib

    return pathlib.Path(__file__).resolve().parents[2]
