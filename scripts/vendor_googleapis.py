"""Copy the googleapis protos we import from the installed googleapis-common-protos package into protos/google."""

import pathlib
import shutil
import sys

import google.api

FILES = [
    "api/annotations.proto",
    "api/http.proto",
    "api/httpbody.proto",
    "rpc/code.proto",
    "rpc/error_details.proto",
    "rpc/status.proto",
]


def main() -> int:
    src_root = pathlib.Path(google.api.__path__[0]).parent
    dst_root = pathlib.Path(__file__).resolve().parent.parent / "protos" / "google"
    for rel in FILES:
        dst = dst_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_root / rel, dst)
        print(f"vendored google/{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
