"""`python -m llmlab.openapi [--check]`: write (or compare) docs/openapi.json from gen/llmlab.binpb."""

from __future__ import annotations

import argparse
import pathlib
import sys

from llmlab.runtime.settings import VERSION

from . import build_document, dumps

ROOT = pathlib.Path.cwd()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--descriptor", type=pathlib.Path, default=ROOT / "gen" / "llmlab.binpb")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "openapi.json")
    p.add_argument("--check", action="store_true", help="fail if --out differs from what the protos give")
    a = p.parse_args(argv)
    text = dumps(build_document(a.descriptor.read_bytes(), VERSION))
    if a.check:
        if not a.out.exists() or a.out.read_text() != text:
            print(f"{a.out} is out of date: run `python -m llmlab.openapi`", file=sys.stderr)
            return 1
        return 0
    a.out.write_text(text)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
