"""Envoy clusters for the gateway: one per service (HTTP/2, gRPC health checks, DNS for Kubernetes) and OTLP."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def socket_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


def cluster(name: str, address: str, *, http2: bool = True, health_check: bool = False, k8s: bool = False) -> dict:
    host, port = socket_address(address)
    try:
        ipaddress.ip_address(host)
        kind = "STATIC"
    except ValueError:
        kind = "STRICT_DNS"
    cluster: dict = {
        "name": name,
        "type": kind,
        "connect_timeout": "2s" if k8s else "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}
            ],
        },
        # SSE streams hold a request slot for their whole life: the default 1024 would cap concurrent streams.
        "circuit_breakers": {
            "thresholds": [{"max_connections": 10000, "max_pending_requests": 10000, "max_requests": 10000}]
        },
    }
    if kind == "STRICT_DNS":
        cluster["dns_lookup_family"] = "V4_PREFERRED"  # refresh stays at Envoy's 5 s default
        # A pod leaving the headless Service's DNS stops getting requests at once, even while its health check
        # still passes (its preStop keeps it SERVING until the drain starts).
        cluster["ignore_health_on_host_removal"] = True
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                        # A malformed response (say, trailers past the header limit) resets its own stream only,
                        # not the connection that other clients' requests share.
                        "override_stream_error_on_invalid_http_message": True,
                    }
                },
            }
        }
    if health_check:
        cluster["health_checks"] = [
            {
                "timeout": "1s",
                "interval": "5s",
                "no_traffic_interval": "5s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ]
    return cluster


def otlp_address(endpoint: str) -> str:
    if "//" in endpoint:
        parts = urlsplit(endpoint)
        return f"{parts.hostname}:{parts.port or 4317}"
    return endpoint
