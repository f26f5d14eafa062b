"""The OpenAPI 3.1 document of llmlab's REST surface, generated from the protos' descriptor set (gen/llmlab.binpb).

Library code rather than a gateway tool because the ops service serves the document (`GET /openapi.json`) at run
time, and service images carry libs/ and gen/ but not gateway/. `python -m llmlab.openapi` writes docs/openapi.json.
"""

from __future__ import annotations

import functools
import json
import pathlib

from .document import build_document, family

# gen/llmlab.binpb, beside the generated packages (scripts/gen_protos.py writes both).
DESCRIPTOR_NAME = "llmlab.binpb"


def dumps(document: dict) -> str:
    """The committed text form: sorted keys, two-space indent, a final newline (stable diffs)."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def descriptor_set_path() -> pathlib.Path:
    """Where scripts/gen_protos.py put the descriptor set: the directory that holds the generated llmlab.* stubs."""
    from llmlab.common.v1 import common_pb2  # any generated module: gen/llmlab/common/v1/common_pb2.py

    return pathlib.Path(common_pb2.__file__).resolve().parents[3] / DESCRIPTOR_NAME


@functools.cache
def served_document(version: str) -> bytes:
    """The document as /openapi.json serves it: built once per process from the descriptor set."""
    return dumps(build_document(descriptor_set_path().read_bytes(), version)).encode()


__all__ = ["build_document", "descriptor_set_path", "dumps", "family", "served_document"]
