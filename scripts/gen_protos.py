"""Generate Python stubs (+ .pyi) under gen/ and the descriptor set Envoy's transcoder reads.

Output is importable as ``llmlab.<svc>.v1`` (namespace packages), never edited by hand and never committed.
"""

import argparse
import pathlib
import shutil
import sys

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
DESCRIPTOR = GEN / "llmlab.binpb"


def own_protos() -> list[pathlib.Path]:
    return sorted((PROTOS / "llmlab").rglob("*.proto"))


def run_protoc(args: list[str]) -> None:
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTOS}", f"-I{well_known}", *args])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def generate(out: pathlib.Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = [str(p.relative_to(PROTOS)) for p in own_protos()]
    run_protoc([f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *files])
    # The descriptor set carries every import (google.api, google.rpc error details, well-known types):
    # Envoy needs error_details.proto in it to render grpc-status-details-bin.
    run_protoc(
        [
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out / DESCRIPTOR.name}",
            "google/rpc/error_details.proto",
            *files,
        ]
    )
    # Versioned packages stay PEP 420 namespace packages (no __init__.py): llmlab.<svc>.v1 merges with the
    # hand-written llmlab.runtime in libs/ without either shadowing the other.
    print(f"generated {len(files)} proto files into {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=GEN)
    args = parser.parse_args()
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
