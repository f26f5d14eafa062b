"""Render the Envoy gateway config (YAML) for local runs and for Kubernetes from the llmlab descriptor set.

The REST surface is whatever the ``google.api.http`` rules in ``protos/`` say: the transcoder's ``services`` list,
the per-service routes and the streaming routes (no overall timeout) are all read from the descriptor set, so a
new annotated RPC needs no gateway edit.

Filter order (as README.md's diagram shows it; rate limits are decided inside ext_authz):
lua errors -> health_check -> cors -> buffer -> ext_authz -> grpc_json_transcoder -> router.

Contracts with the services:
- ext_authz: ``envoy.service.auth.v3.Authorization/Check`` on the ``auth`` cluster sees every request except CORS
  preflights and ``/healthz`` (public paths are the auth service's decision), with the request's method, path,
  the Lua filter's ``family`` (lab, research, serving, native or ops) and only the credential headers. It is the one
  call per request: it authenticates, checks the route's permission and, for a principal with limits, admits or
  refuses the request in Redis (docs/auth.md). Its allow answer may set ``x-llmlab-*`` request headers
  (``x-llmlab-principal``; client-sent ones are stripped before any filter runs) and the client's X-RateLimit-*
  response headers (epoch resets, the -Requests/-Tokens variants on /v1; docs/auth.md). A denial (401, 403, 429)
  carries a ``google.rpc.Status`` JSON body (like ``convert_grpc_status`` writes) so it gets the family's error shape.
  Failing closed: when the auth service cannot answer, the request is refused with 503.
- ``auth=False`` (``--no-auth``) renders the same gateway without ext_authz: for measuring what it costs
  (bench/auth.py), never for serving.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping

from google.protobuf import descriptor_pb2

from gateway.clusters import cluster, otlp_address
from gateway.yaml_text import yaml_lines
from llmlab.runtime.httprules import FAMILY_PREFIXES, method_bindings
from llmlab.runtime.settings import DEFAULT_PORTS, SERVICES

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENVOY = ROOT / ".venv-envoy" / "bin" / "envoy"
MIB = 1024 * 1024
# Routes that carry file bodies: OpenAI files (multipart) and the signed upload URLs of the files service
# (/files/uploads/ and transfers_service.proto's /uploads/{token}).
UPLOAD_PREFIXES = ("/v1/files", "/files/uploads", "/uploads")
LUA_NAMESPACE = "llmlab.gateway"  # dynamic metadata the Lua filter writes (family, request_id)
PACKAGE_RE = re.compile(r"^llmlab\.([a-z0-9_]+)\.v1$")
AUTH_FILTERS = ("envoy.filters.http.ext_authz",)
# The only request headers ext_authz forwards to the auth service: the credentials (method and path travel apart).
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


@dataclasses.dataclass
class GatewayConfig:
    """Everything that differs between deployments; ``None`` fields get the mode's default."""

    mode: str = "local"  # "local" or "kubernetes"
    listen_address: str | None = None  # local 127.0.0.1, kubernetes 0.0.0.0
    listen_port: int = 8080
    admin_port: int = 9901  # always bound to 127.0.0.1
    descriptor_path: str = "gen/llmlab.binpb"  # read at render time (relative to the repo root)
    lua_path: str = "gateway/errors.lua"  # read at render time (relative to the repo root)
    # Where Envoy finds llmlab.binpb and errors.lua at run time; None: the absolute paths of the files read.
    asset_dir: str | None = None
    namespace: str = "llmlab"  # kubernetes DNS: <svc>.<namespace>.svc.cluster.local
    upstreams: dict[str, str] = dataclasses.field(default_factory=dict)  # svc -> "host:port"; missing: default
    cors_allowed_origins: tuple[str, ...] = ("*",)
    max_request_bytes: int = 1 * MIB
    max_upload_bytes: int = 512 * MIB
    max_response_bytes: int = 64 * MIB
    # All request headers, path included: Envoy answers 431 itself past it. errors.lua answers 431 at half of it,
    # in the family's shape; the headroom is for the headers ext_authz adds.
    max_request_headers_kb: int = 32
    upload_prefixes: tuple[str, ...] = UPLOAD_PREFIXES
    unary_timeout_s: float = 120.0  # whole-call limit for unary RPCs; streaming RPCs have none
    stream_idle_timeout_s: float = 300.0
    min_healthy_percent: float | None = None  # /healthz threshold per cluster; local 100, kubernetes 1 (any host)
    xff_num_trusted_hops: int = 0
    otlp_endpoint: str | None = None  # "host:port" or "http://host:port" of an OTLP/gRPC collector
    trace_sampling_percent: float = 100.0
    access_log: bool = True
    auth: bool = True  # ext_authz (authentication, permissions, rate limits); False only for benchmarks

    def __post_init__(self) -> None:
        if self.mode not in ("local", "kubernetes"):
            raise ValueError(f"mode must be local or kubernetes, not {self.mode!r}")
        k8s = self.mode == "kubernetes"
        if self.listen_address is None:
            self.listen_address = "0.0.0.0" if k8s else "127.0.0.1"
        if self.min_healthy_percent is None:
            self.min_healthy_percent = 1.0 if k8s else 100.0
        unknown = set(self.upstreams) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown upstream service(s): {sorted(unknown)}")
        for svc in SERVICES:
            if svc not in self.upstreams:
                self.upstreams[svc] = (
                    f"{svc}.{self.namespace}.svc.cluster.local:50051" if k8s else f"127.0.0.1:{DEFAULT_PORTS[svc]}"
                )


@dataclasses.dataclass(frozen=True)
class TranscodedService:
    """A service the transcoder exposes: its full name, its cluster, and its server-streaming methods."""

    full_name: str
    cluster: str
    streaming_methods: tuple[str, ...]


def _repo_path(p: str) -> pathlib.Path:
    path = pathlib.Path(p)
    return path if path.is_absolute() else ROOT / path


def transcoded_services(descriptor_bytes: bytes) -> list[TranscodedService]:
    """Services of ``llmlab.<svc>.v1`` packages with at least one google.api.http rule, in descriptor order."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_bytes)
    found: list[TranscodedService] = []
    for f in fds.file:
        m = PACKAGE_RE.match(f.package)
        for svc in f.service:
            if not any(method_bindings(f"{f.package}.{svc.name}", meth) for meth in svc.method):
                continue
            if not m or m.group(1) not in SERVICES:
                raise ValueError(
                    f"{f.package}.{svc.name} ({f.name}) has google.api.http rules but its package is not "
                    f"llmlab.<svc>.v1 for a gateway cluster ({', '.join(SERVICES)})"
                )
            streaming = tuple(meth.name for meth in svc.method if meth.server_streaming or meth.client_streaming)
            found.append(TranscodedService(f"{f.package}.{svc.name}", m.group(1), streaming))
    if not found:
        raise ValueError("the descriptor set has no service with google.api.http rules")
    return found


def _transcoder(descriptor: str, services: list[TranscodedService], max_body: int, max_response: int) -> dict:
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        "proto_descriptor": descriptor,
        "services": [s.full_name for s in services],
        "convert_grpc_status": True,
        "print_options": {
            "always_print_primitive_fields": True,
            "preserve_proto_field_names": True,
            "stream_sse_style_delimited": True,
        },
        # Unknown query parameters are ignored, as most REST servers do: OpenAI SDK extras, cache busters. Rejecting
        # answers 400 'Could not find field "x" in the type "llmlab...Request"'; with neither flag Envoy forwards
        # the request untranscoded (503).
        "ignore_unknown_query_parameters": True,
        "query_param_unescape_plus": True,  # browsers send form-encoded spaces as '+' in ?search=
        "request_validation_options": {"reject_unknown_method": True},
        "max_request_body_size": max_body,
        # Unset, this is the 1 MiB stream buffer: a bigger unary response then fails with a 500 text/plain that
        # skips the Lua filter (sent directly, mid-encode). Streamed responses are not held, so not limited.
        "max_response_body_size": max_response,
    }


def _routes(cfg: GatewayConfig, services: list[TranscodedService], upload_transcoder: dict) -> list[dict]:
    routes: list[dict] = []
    unary_timeout = f"{cfg.unary_timeout_s:g}s"
    idle = f"{cfg.stream_idle_timeout_s:g}s"
    # After transcoding the path is /<package>.<Service>/<Method>: these routes pick the cluster. Only the
    # services with http rules are routed, so internal gRPC services are unreachable through the gateway.
    for s in services:
        for meth in s.streaming_methods:
            routes.append(
                {
                    "name": f"{s.full_name}/{meth}",
                    "match": {"path": f"/{s.full_name}/{meth}"},
                    "route": {
                        "cluster": s.cluster,
                        "timeout": "0s",
                        "idle_timeout": idle,
                    },
                }
            )
        routes.append(
            {
                "name": s.full_name,
                "match": {"prefix": f"/{s.full_name}/"},
                "route": {"cluster": s.cluster, "timeout": unary_timeout},
            }
        )
    # Any other gRPC path (internal services) is refused here; gRPC clients read 404 as UNIMPLEMENTED.
    routes.append({"name": "grpc-unrouted", "match": {"prefix": "/llmlab."}, "direct_response": {"status": 404}})
    # Pre-transcoding REST routes. Upload paths skip the buffer filter (it would hold up to max_upload_bytes of an
    # unauthenticated body before ext_authz answers); their HttpBody bodies are capped by the transcoder, which
    # keeps the whole raw body in its buffer, with a larger limit (per-route override).
    for prefix in cfg.upload_prefixes:
        routes.append(
            {
                "name": f"upload:{prefix}",
                "match": {"path_separated_prefix": prefix.rstrip("/")},
                "route": {"cluster": "files", "timeout": "0s", "idle_timeout": idle},
                "typed_per_filter_config": {
                    "envoy.filters.http.buffer": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
                        "disabled": True,
                    },
                    "envoy.filters.http.grpc_json_transcoder": upload_transcoder,
                },
            }
        )
    # CORS and the filters before the transcoder need a cluster route (routeEntry) for every REST path; the
    # transcoder answers unmapped ones 404 (reject_unknown_method) so nothing reaches `unrouted`.
    routes.append(
        {
            "name": "rest",
            "match": {"prefix": "/"},
            "route": {"cluster": "unrouted", "timeout": "0s", "idle_timeout": idle},
        }
    )
    return routes


def _family_mappers() -> list[dict]:
    """Tag Envoy's own early replies (a path it cannot normalise, say) with the caller's family for errors.lua.

    Those replies skip the filters' request phase, where errors.lua reads the path; the reply mapper still sees
    the request headers.
    """
    return [
        {
            "filter": {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": prefix}}}},
            "headers_to_add": [
                {"header": {"key": "x-llmlab-family", "value": family}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            ],
        }
        for prefix, family in FAMILY_PREFIXES
    ]


def _cors(cfg: GatewayConfig) -> dict:
    wildcard = "*" in cfg.cors_allowed_origins
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": o} for o in cfg.cors_allowed_origins],
        "allow_methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
        # '*' covers any other request header (OpenAI SDK's x-stainless-*); authorization must be named.
        "allow_headers": "authorization, content-type, x-api-key, x-request-id, accept, cache-control, "
        "last-event-id, traceparent, tracestate, *",
        "expose_headers": "x-request-id, retry-after, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, "
        "x-ratelimit-limit-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-requests, "
        "x-ratelimit-remaining-tokens, x-ratelimit-reset-requests, x-ratelimit-reset-tokens, content-disposition",
        "max_age": "86400",
        "allow_credentials": not wildcard,
    }


def _access_log() -> list[dict]:
    fmt = {
        "time": "%START_TIME%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "trace_id": "%TRACE_ID%",
        "method": "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%",
        # Without the query: signed upload/download URLs carry their signature there (docs/files.md), and a
        # token without its signature opens nothing.
        "path": "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "rpc": "%REQ(:PATH)%",
        "status": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "grpc_status": "%GRPC_STATUS_NUMBER%",
        "duration_ms": "%DURATION%",
        "bytes_in": "%BYTES_RECEIVED%",
        "bytes_out": "%BYTES_SENT%",
        "upstream": "%UPSTREAM_CLUSTER%",
        "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "principal": "%REQ(X-LLMLAB-PRINCIPAL)%",
    }
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {
                    "json_format": fmt,
                    "formatters": [{
                        "name": "envoy.formatter.req_without_query",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3"
                                     ".ReqWithoutQuery",
                        },
                    }],
                },
            },
        }
    ]


def build(cfg: GatewayConfig) -> dict:
    """The Envoy bootstrap as a dict (``render`` dumps it as YAML)."""
    descriptor_file = _repo_path(cfg.descriptor_path)
    lua_file = _repo_path(cfg.lua_path)
    services = transcoded_services(descriptor_file.read_bytes())
    if not lua_file.is_file():
        raise FileNotFoundError(lua_file)
    if cfg.asset_dir:
        base = cfg.asset_dir.rstrip("/")
        descriptor, lua = f"{base}/{descriptor_file.name}", f"{base}/{lua_file.name}"
    else:
        descriptor, lua = str(descriptor_file), str(lua_file)
    k8s = cfg.mode == "kubernetes"

    transcoder = _transcoder(descriptor, services, cfg.max_request_bytes, cfg.max_response_bytes)
    upload_transcoder = _transcoder(
        descriptor, services, cfg.max_upload_bytes, max(cfg.max_upload_bytes, cfg.max_response_bytes)
    )
    http_filters = [
        {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"filename": lua},
            },
        },
        {
            "name": "envoy.filters.http.health_check",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
                "pass_through_mode": False,
                "headers": [{"name": ":path", "string_match": {"exact": "/healthz"}}],
                "cluster_min_healthy_percentages": {svc: {"value": cfg.min_healthy_percent} for svc in SERVICES},
            },
        },
        {
            "name": "envoy.filters.http.cors",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
        },
        # The body cap: 413 (a local reply the Lua reshapes) once a body exceeds max_request_bytes. The transcoder's
        # own max_request_body_size only bounds its internal buffer: JSON it translates while streaming in passes
        # (seen: 7 of 10 2 MiB bodies reached the service under a 1 MiB limit). Placed before ext_authz: after it,
        # a 413 sent while the Check call held the body hung the HTTP/1.1 connection (Envoy 1.40, 10 of 10).
        {
            "name": "envoy.filters.http.buffer",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": cfg.max_request_bytes,
            },
        },
        {
            "name": "envoy.filters.http.ext_authz",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "transport_api_version": "V3",
                "failure_mode_allow": False,
                "status_on_error": {"code": "ServiceUnavailable"},  # auth down is a 503, not the default 403
                "grpc_service": {"envoy_grpc": {"cluster_name": "auth"}, "timeout": "1s"},
                # The Lua filter's `family`, so that a denial can be worded for the caller's API family.
                "metadata_context_namespaces": [LUA_NAMESPACE],
                # Only the credentials: every other header would be serialised and parsed for nothing.
                "allowed_headers": {"patterns": [{"exact": h} for h in CREDENTIAL_HEADERS]},
            },
        },
        {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": transcoder},
        {
            "name": "envoy.filters.http.router",
            # No x-envoy-upstream-service-time and friends on client responses: they describe our internals.
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                "suppress_envoy_headers": True,
            },
        },
    ]
    if not cfg.auth:
        http_filters = [f for f in http_filters if f["name"] not in AUTH_FILTERS]
    hcm: dict = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "gateway",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "xff_num_trusted_hops": cfg.xff_num_trusted_hops,
        "normalize_path": True,
        "merge_slashes": True,
        "always_set_request_id_in_response": True,
        # A caller's own x-request-id is kept (and echoed) so clients can correlate; Envoy makes one otherwise.
        "preserve_external_request_id": True,
        # Only the ext_authz service may set x-llmlab-* (principal, scopes): drop client-sent ones before any
        # filter runs. Natively here, because iterating headers in the Lua filter measured ~10 us per request.
        "early_header_mutation_extensions": [
            {
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3."
                    "HeaderMutation",
                    "mutations": [{"remove_on_match": {"key_matcher": {"prefix": "x-llmlab-"}}}],
                },
            }
        ],
        # Every request header together, the request line included. The services accept more
        # (libs/llmlab/runtime/server.py METADATA_BYTES), so nothing Envoy passes is refused there.
        "max_request_headers_kb": cfg.max_request_headers_kb,
        "stream_idle_timeout": f"{cfg.stream_idle_timeout_s:g}s",
        "request_headers_timeout": "10s",
        "route_config": {
            "name": "llmlab",
            "virtual_hosts": [
                {
                    "name": "llmlab",
                    "domains": ["*"],
                    "typed_per_filter_config": {"envoy.filters.http.cors": _cors(cfg)},
                    # The files service writes absolute signed URLs for the address the client used.
                    "request_headers_to_add": [{
                        "header": {"key": "x-forwarded-host", "value": "%REQ(:AUTHORITY)%"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }],
                    "routes": _routes(cfg, services, upload_transcoder),
                }
            ],
        },
        "http_filters": http_filters,
        "local_reply_config": {"mappers": _family_mappers()},
    }
    if cfg.access_log:
        hcm["access_log"] = _access_log()
    clusters = [cluster(svc, cfg.upstreams[svc], health_check=True, k8s=k8s) for svc in SERVICES]
    clusters.append(
        {
            "name": "unrouted",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "unrouted", "endpoints": []},
        }
    )
    if cfg.otlp_endpoint:
        hcm["tracing"] = {
            "random_sampling": {"value": cfg.trace_sampling_percent},
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "service_name": "llmlab-gateway",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "otlp"}, "timeout": "1s"},
                },
            },
        }
        clusters.append(cluster("otlp", otlp_address(cfg.otlp_endpoint), k8s=k8s))
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": cfg.admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": {"socket_address": {"address": cfg.listen_address, "port_value": cfg.listen_port}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def render(cfg: GatewayConfig) -> str:
    """The Envoy config as YAML text."""
    header = [
        f"# Generated by gateway/render.py --mode {cfg.mode}; do not edit.",
        "# Filters: lua errors, health_check, cors, buffer, ext_authz, grpc_json_transcoder, router.",
    ]
    return "\n".join(header + yaml_lines(build(cfg))) + "\n"


def envoy_validate(text: str, envoy: pathlib.Path = ENVOY) -> tuple[bool, str]:
    """Run ``envoy --mode validate`` on config text; errors and deprecated-field warnings both fail."""
    with tempfile.TemporaryDirectory(prefix="llmlab-gateway-") as tmp:
        path = pathlib.Path(tmp) / "envoy.yaml"
        path.write_text(text)
        res = subprocess.run(
            [str(envoy), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    output = res.stdout + res.stderr
    return res.returncode == 0 and "Deprecated field" not in output, output


def _parse_upstreams(items: list[str]) -> Mapping[str, str]:
    out = {}
    for item in items:
        svc, sep, addr = item.partition("=")
        if not sep:
            raise SystemExit(f"--upstream expects svc=host:port, got {item!r}")
        out[svc] = addr
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("local", "kubernetes"), default="local")
    p.add_argument("--out", help="write here instead of stdout")
    p.add_argument("--listen-address")
    p.add_argument("--listen-port", type=int, default=8080)
    p.add_argument("--admin-port", type=int, default=9901)
    p.add_argument("--descriptor", default="gen/llmlab.binpb", help="descriptor set to read (repo-relative)")
    p.add_argument("--lua", default="gateway/errors.lua")
    p.add_argument("--asset-dir", help="directory holding llmlab.binpb and errors.lua where Envoy runs")
    p.add_argument("--namespace", default="llmlab")
    p.add_argument("--upstream", action="append", default=[], metavar="SVC=HOST:PORT")
    p.add_argument("--cors-origin", action="append", help="allowed CORS origin (repeatable); default '*'")
    p.add_argument("--max-request-bytes", type=int, default=1 * MIB)
    p.add_argument("--max-upload-bytes", type=int, default=512 * MIB)
    p.add_argument("--otlp-endpoint")
    p.add_argument("--xff-num-trusted-hops", type=int, default=0)
    p.add_argument("--no-access-log", action="store_true")
    p.add_argument("--no-auth", action="store_true", help="without ext_authz (benchmarks only)")
    p.add_argument("--validate", action="store_true", help="check the result with envoy --mode validate")
    a = p.parse_args(argv)
    cfg = GatewayConfig(
        mode=a.mode,
        listen_address=a.listen_address,
        listen_port=a.listen_port,
        admin_port=a.admin_port,
        descriptor_path=a.descriptor,
        lua_path=a.lua,
        asset_dir=a.asset_dir,
        namespace=a.namespace,
        upstreams=dict(_parse_upstreams(a.upstream)),
        cors_allowed_origins=tuple(a.cors_origin) if a.cors_origin else ("*",),
        max_request_bytes=a.max_request_bytes,
        max_upload_bytes=a.max_upload_bytes,
        otlp_endpoint=a.otlp_endpoint,
        xff_num_trusted_hops=a.xff_num_trusted_hops,
        access_log=not a.no_access_log,
        auth=not a.no_auth,
    )
    text = render(cfg)
    if a.out:
        pathlib.Path(a.out).write_text(text)
    else:
        sys.stdout.write(text)
    if a.validate:
        if cfg.asset_dir:  # Envoy would look for the assets where the image puts them
            text = render(dataclasses.replace(cfg, asset_dir=None))
        ok, output = envoy_validate(text)
        print(output.strip() if not ok else "envoy --mode validate: OK", file=sys.stderr)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
