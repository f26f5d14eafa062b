"""Packaging: pyproject.toml declares exactly the third-party packages the code imports, and no module of ours can
stand in for a standard-library module."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Folders whose code runs in the services and tools: their imports must be runtime dependencies.
RUNTIME_DIRS = ("services", "libs", "gateway", "scripts")
# Folders of developer code: runtime or `dev` dependencies.
DEV_DIRS = ("tests", "bench")
FIRST_PARTY = {"llmlab", "services", "gateway", "scripts", "bench", "tests", "llm_research_lab"}  # sdks/python
# Where modules get their import names: libs/ is on sys.path itself, the other folders hang off the root.
IMPORT_ROOTS = {"libs": ROOT / "libs"}

# Imports that run in another virtualenv, not the one `pip install -e '.[dev]'` builds: (where, why).
ELSEWHERE = {
    "torch": ("services/inference/", "the model importer runs it in the conversion venv it builds"),
    "transformers": ("services/inference/", "the model importer runs it in the conversion venv it builds"),
    "peft": ("services/inference/training/", "the training worker runs it in the training venv it builds"),
    "llama_cpp": ("bench/peers.py", "runs in .venv-bench, which `make bench-peers` builds"),
    "onnxruntime_genai": ("bench/peers.py", "runs in .venv-bench, which `make bench-peers` builds"),
}

# Modules that stand in for a standard-library module today, and why they are still here. An entry whose file is
# gone fails the test below, so this list only shrinks.
KNOWN_SHADOWS: dict[str, str] = {}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return _normalize(match.group(0))


@cache
def declared() -> tuple[frozenset[str], frozenset[str]]:
    """(runtime dependencies, `dev` extra) as normalised distribution names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = frozenset(_requirement_name(r) for r in project["dependencies"])
    dev = frozenset(_requirement_name(r) for r in project["optional-dependencies"]["dev"])
    return runtime, dev


@cache
def module_owners() -> dict[str, frozenset[str]]:
    """Dotted module or package name -> the installed distributions that ship it.

    Like `importlib.metadata.packages_distributions()`, but for every package level, so that namespace packages
    shared by several distributions (`google.protobuf`, `google.api`, `opentelemetry.sdk`) map to the right one.
    """
    owners: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        name = _normalize(dist.metadata["Name"])
        for file in dist.files or ():
            parts = file.parts
            if not parts or parts[0] == ".." or not parts[-1].endswith((".py", ".so", ".pyd")):
                continue
            if any(not p.isidentifier() for p in parts[:-1]):
                continue  # dist-info, bin/ scripts, data folders
            stem = parts[-1].split(".")[0]
            dotted = [*parts[:-1]] if stem == "__init__" else [*parts[:-1], stem]
            for i in range(1, len(dotted) + 1):
                owners.setdefault(".".join(dotted[:i]), set()).add(name)
    return {k: frozenset(v) for k, v in owners.items()}


def owners_of(module: str) -> frozenset[str]:
    parts = module.split(".")
    table = module_owners()
    for i in range(len(parts), 0, -1):
        if (found := table.get(".".join(parts[:i]))) is not None:
            return found
    return frozenset()


def python_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def third_party_imports(path: Path) -> set[str]:
    """Absolute imports of `path` that are neither the standard library nor ours (a script's siblings count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    result = set()
    for module in found:
        top = module.split(".")[0]
        sibling = (path.parent / f"{top}.py").exists() or (path.parent / top / "__init__.py").exists()
        if top in sys.stdlib_module_names or top in FIRST_PARTY or sibling:
            continue
        result.add(module)
    return result


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _elsewhere(module: str, path: Path) -> bool:
    where = ELSEWHERE.get(module.split(".")[0])
    return where is not None and _rel(path).startswith(where[0])


def test_every_import_is_declared() -> None:
    runtime, dev = declared()
    problems = []
    for dirs, allowed, kind in ((RUNTIME_DIRS, runtime, "runtime"), (DEV_DIRS, runtime | dev, "runtime or dev")):
        for path in python_files(*dirs):
            for module in sorted(third_party_imports(path)):
                if _elsewhere(module, path):
                    continue
                owners = owners_of(module)
                if not owners:
                    problems.append(f"{_rel(path)}: {module} is not installed by `pip install -e '.[dev]'`")
                elif not owners & allowed:
                    problems.append(f"{_rel(path)}: {module} comes from {sorted(owners)}, not a {kind} dependency")
    assert not problems, "\n".join(problems)


def test_every_runtime_dependency_is_imported_by_runtime_code() -> None:
    runtime, _ = declared()
    used: set[str] = set()
    for path in python_files(*RUNTIME_DIRS):
        for module in third_party_imports(path):
            used |= owners_of(module)
    # A dependency only tests or benchmarks import belongs in the `dev` extra.
    assert sorted(runtime - used) == []


def test_imports_made_elsewhere_stay_where_they_are_allowed() -> None:
    stray = [
        f"{_rel(path)}: {module}"
        for path in python_files(*RUNTIME_DIRS, *DEV_DIRS)
        for module in third_party_imports(path)
        if module.split(".")[0] in ELSEWHERE and not _elsewhere(module, path)
    ]
    assert stray == []
    makefile = (ROOT / "Makefile").read_text()
    bench_venv = re.search(r"^\t\.venv-bench/bin/pip install (.*)$", makefile, re.M)
    assert bench_venv and {"llama-cpp-python", "onnxruntime-genai"} <= set(bench_venv.group(1).split())


def _module_names(path: Path) -> list[str]:
    """Every name `path` is importable under, from its package down (libs/llmlab/x.py: llmlab, x)."""
    top = path.relative_to(ROOT).parts[0]
    base = IMPORT_ROOTS.get(top, ROOT)
    return [p.removesuffix(".py") for p in path.relative_to(base).parts]


def test_no_module_of_ours_shadows_the_standard_library() -> None:
    shadows = {
        _rel(path): name
        for path in python_files(*RUNTIME_DIRS, *DEV_DIRS)
        for name in _module_names(path)
        if name in sys.stdlib_module_names
    }
    assert {k: v for k, v in shadows.items() if k not in KNOWN_SHADOWS} == {}
    assert sorted(k for k in KNOWN_SHADOWS if not (ROOT / k).exists()) == [], "drop the entry from KNOWN_SHADOWS"


def test_scripts_siblings_do_not_hide_our_packages() -> None:
    """`python bench/x.py` puts bench/ first on sys.path: a bench/gateway.py would hide the gateway package."""
    clashes = []
    for path in python_files(*RUNTIME_DIRS, *DEV_DIRS):
        if path.name != "__main__.py" and 'if __name__ == "__main__"' in path.read_text():
            clashes += [_rel(p) for p in path.parent.iterdir() if p.stem in FIRST_PARTY and p != path.parent]
    assert sorted(set(clashes)) == []


def test_the_install_alone_makes_every_package_importable(tmp_path) -> None:
    """Outside the repo, with no PYTHONPATH: the editable install serves libs/, gen/ (stubs written after it) and
    the root's packages."""
    code = (
        "import llmlab.runtime, llmlab.devstack.launcher, llmlab.experiments.v1.experiments_service_pb2, "
        "services.experiments.app, gateway.render, scripts.up, bench._stack"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_no_path_file_outside_the_installed_distributions() -> None:
    """Every .pth in site-packages comes with a distribution (ours is the editable install's)."""
    site = Path(sysconfig.get_paths()["purelib"])
    owned = {
        (Path(dist.locate_file(f))).resolve()
        for dist in importlib.metadata.distributions()
        for f in dist.files or ()
        if f.name.endswith(".pth")
    }
    stray = sorted(p.name for p in site.glob("*.pth") if p.resolve() not in owned)
    assert stray == [], f"remove {stray} from {site}: pip install -e . makes the project importable by itself"
