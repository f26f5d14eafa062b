"""Every route of the API map refuses a missing, an expired, a revoked and an under-privileged credential, each in its
family's error shape; secrets and tokens never reach a log line."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import httpx
import pytest

from llmlab.runtime.httprules import family
from services.auth.credentials import AccessTokens
from services.auth.routes import RouteTable, load_routes

from .conftest import login
from .test_routes import ROUTES, Route

TABLE = RouteTable(load_routes())


def assert_refusal(r: httpx.Response, route: Route, status: int, permission: str | None = None) -> None:
    where = f"{route.method} {route.url}"
    assert r.status_code == status, (where, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), where
    body, rid = r.json(), r.headers["x-request-id"]
    fam = family(route.template)
    if fam == "lab":
        assert body["success"] is False and body["error"]["statusCode"] == status and body["meta"]["request_id"] == rid
        assert body["error"]["code"] == ("UNAUTHORIZED" if status == 401 else "FORBIDDEN"), where
        if permission:
            assert body["error"]["details"] == {"required_permission": permission}, where
    elif fam == "native":
        assert body["error"]["code"] == ("UNAUTHORIZED" if status == 401 else "FORBIDDEN") and body["request_id"] == rid
        if permission:
            assert body["error"]["details"] == {"required_permission": permission}, where
    elif fam == "serving":
        assert set(body) == {"error", "request_id"} and body["request_id"] == rid
        assert body["error"]["type"] == ("authentication_error" if status == 401 else "permission_error"), where
        if permission:
            assert f"'{permission}'" in body["error"]["message"], where
    else:
        assert body["error"] == ("unauthorized" if status == 401 else "forbidden") and body["request_id"] == rid
        assert body["message"], where
        if permission:
            assert body["required_permission"] == permission, where


def required(route: Route) -> str | None:
    """The permission the auth service's route table asks for, after checking it resolves the same RPC as Envoy."""
    resolved = TABLE.resolve(route.method, route.url)
    assert resolved is not None and resolved.rpc.endswith("." + route.rpc), (route, resolved)
    return resolved.permission


PUBLIC = {r.template for r in ROUTES if r.public}  # docs/openapi.json: operations without a security requirement
GUARDED = [r for r in ROUTES if r.template not in PUBLIC]


@pytest.fixture(scope="module")
async def credentials(platform, http):
    """A key per refusal: expired (expires_at two seconds ahead, then waited out), revoked, and two narrow ones."""
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    made = {}
    for name, body in {"expired": {"expires_at": soon}, "revoked": {}, "usage_only": {"permissions": ["usage"]},
                       "files_only": {"permissions": ["files"]}}.items():
        r = await http.post("/v1/auth/api-keys", json={"name": f"security {name}", **body})
        assert r.status_code == 200, r.text
        made[name] = r.json()
    assert (await http.delete(f"/v1/auth/api-keys/{made['revoked']['id']}")).status_code == 200
    tokens = AccessTokens(platform.jwt_secret, 3600)
    who = await login(platform)
    made["expired_jwt"] = tokens.issue(user_id="00000000-0000-0000-0000-000000000001", username="admin",
                                       permissions=["admin"], tier="enterprise", family="f", now=time.time() - 7200)
    made["forged_jwt"] = AccessTokens("x" * 48, 3600).issue(user_id="u", username="admin", permissions=["admin"],
                                                             tier="enterprise", family="f")
    made["access_token"], made["refresh_token"] = who["access_token"], who["refresh_token"]
    await asyncio.sleep(max(0.0, dt.datetime.strptime(soon, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
                            - time.time() + 0.5))
    return made


def test_every_guarded_route_needs_a_known_permission():
    assert len(GUARDED) > 90
    spots = {("POST", "/experiments"): "experiments:write", ("GET", "/v1/models"): "models.read",
             ("POST", "/v1/chat/completions"): "inference", ("GET", "/experiments/{id}"): "experiments:read",
             ("POST", "/v1/files"): "files", ("GET", "/v1/usage"): "usage", ("POST", "/v1/auth/api-keys"): "keys",
             ("GET", "/health/detailed"): None, ("GET", "/api/health"): None}
    for route in GUARDED:
        if (route.method, route.template) in spots:
            assert required(route) == spots[(route.method, route.template)], route
    assert all(required(r) != "admin" for r in GUARDED), "a service is missing from the permission table"


def _body(route: Route) -> dict:
    return {"json": {}} if route.method in ("POST", "PUT", "PATCH") else {}


@pytest.mark.parametrize("variant", ["none", "garbage", "forged_jwt", "expired_jwt", "expired", "revoked"])
async def test_every_route_refuses_a_bad_credential(anonymous, credentials, variant):
    headers = {
        "none": {},
        "garbage": {"authorization": "Bearer not-a-token"},
        "forged_jwt": {"authorization": f"Bearer {credentials['forged_jwt']}"},
        "expired_jwt": {"authorization": f"Bearer {credentials['expired_jwt']}"},
        "expired": {"x-api-key": credentials["expired"]["api_key"]},
        "revoked": {"authorization": f"Bearer {credentials['revoked']['api_key']}"},
    }[variant]
    for route in GUARDED:
        r = await anonymous.request(route.method, route.url, headers=headers, **_body(route))
        assert_refusal(r, route, 401)


async def test_every_route_refuses_a_credential_without_its_permission(anonymous, credentials):
    checked = 0
    for route in GUARDED:
        permission = required(route)
        if permission is None:  # any credential will do: the narrow key gets through
            r = await anonymous.request(route.method, route.url,
                                        headers={"x-api-key": credentials["usage_only"]["api_key"]})
            assert r.status_code == 200, (route, r.text)
            continue
        key = credentials["files_only" if permission == "usage" else "usage_only"]
        r = await anonymous.request(route.method, route.url, headers={"x-api-key": key["api_key"]}, **_body(route))
        assert_refusal(r, route, 403, permission)
        checked += 1
    assert checked > 90


async def test_public_routes_need_no_credential(anonymous):
    for route in ROUTES:
        if route.template in PUBLIC and not route.template.startswith(("/uploads", "/downloads")):
            r = await anonymous.request(route.method, route.url, **_body(route))
            # The token endpoints answer 401 themselves for an empty body; the gateway let them through. The sample
            # name of a reference asset (/docs/{name}) is no file: 404.
            expected = 401 if route.template.startswith("/auth/") else 404 if "{" in route.template else 200
            assert r.status_code == expected, (route, r.text)
            assert "Missing authentication token" not in r.text


async def test_no_secret_reaches_the_logs(platform, credentials, http):
    """Everything secret this session handled — passwords, keys, access and refresh tokens — is in no log line
    of any service or of the gateway."""
    r = await http.post("/auth/token", json={"username": "admin", "password": "wrong password " + "x" * 8})
    assert r.status_code in (401, 429)
    await asyncio.sleep(0.5)  # let the last lines through the supervisor's pipes
    logs = platform.logs.text()
    assert "rpc finished" in logs and "/v1/auth/api-keys" in logs  # the logs were captured
    secrets = [platform.admin_password, platform.api_key, platform.jwt_secret, "wrong password " + "x" * 8,
               credentials["access_token"], credentials["refresh_token"], credentials["expired_jwt"]]
    secrets += [credentials[k]["api_key"] for k in ("expired", "revoked", "usage_only", "files_only")]
    for secret in secrets:
        assert secret not in logs
        assert secret[:16] not in logs
