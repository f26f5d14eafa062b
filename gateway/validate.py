"""Render the gateway config for every mode and check each with ``envoy --mode validate`` (no deprecated fields).

Usage: ``python gateway/validate.py [--descriptor gen/llmlab.binpb] [--envoy .venv-envoy/bin/envoy]``.
The descriptor set comes from ``make gen`` (scripts/gen_protos.py); it is read, never written.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

if __package__:
    from .render import ENVOY, ROOT, GatewayConfig, envoy_validate, render
else:  # run as a script: python gateway/validate.py
    from render import ENVOY, ROOT, GatewayConfig, envoy_validate, render


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--descriptor", default="gen/llmlab.binpb")
    p.add_argument("--envoy", type=pathlib.Path, default=ENVOY)
    a = p.parse_args(argv)
    descriptor = pathlib.Path(a.descriptor)
    if not (descriptor if descriptor.is_absolute() else ROOT / descriptor).is_file():
        print(f"{a.descriptor} is missing: run `make gen` first", file=sys.stderr)
        return 2
    configs = {
        "local": GatewayConfig(mode="local", descriptor_path=a.descriptor),
        "local+otlp": GatewayConfig(mode="local", descriptor_path=a.descriptor, otlp_endpoint="127.0.0.1:4317"),
        "kubernetes": GatewayConfig(
            mode="kubernetes",
            descriptor_path=a.descriptor,
            otlp_endpoint="http://otel-collector.observability.svc.cluster.local:4317",
        ),
    }
    failed = 0
    for name, cfg in configs.items():
        ok, output = envoy_validate(render(cfg), a.envoy)
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            failed += 1
            print(output, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
