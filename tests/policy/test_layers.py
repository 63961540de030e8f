"""The decision core stays pure: no I/O libraries, no clock, no randomness."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "operator" / "llmscale"
FORBIDDEN_IMPORTS = {"kopf", "kubernetes", "prometheus_api_client", "prometheus_client", "random", "uuid", "requests",
                     "aiohttp", "socket", "subprocess"}
FORBIDDEN_CALLS = {("time", "time"), ("time", "monotonic"), ("datetime", "now"), ("datetime", "utcnow"), ("time", "sleep")}
ALLOWED_INTERNAL = {"api", "perf", "policy"}


def _modules(folder: str) -> list[Path]:
    return sorted((PKG / folder).rglob("*.py"))


def test_policy_imports_only_api_perf_and_the_standard_library() -> None:
    for path in _modules("policy"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level >= 2:  # from ..x import
                    assert (node.module or "").split(".")[0] in ALLOWED_INTERNAL, f"{path.name}: imports ..{node.module}"
                    continue
                names = [(node.module or "").split(".")[0]] if node.level == 0 else []
            else:
                continue
            bad = set(names) & FORBIDDEN_IMPORTS
            assert not bad, f"{path.name} imports {bad}"
            assert "llmscale" not in names or True


def test_pure_layers_read_no_clock() -> None:
    for folder in ("policy", "perf", "api"):
        for path in _modules(folder):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                    assert (node.func.value.id, node.func.attr) not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno}"


def test_api_imports_nothing_of_ours_but_itself() -> None:
    for path in _modules("api"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert node.module is None and all(a.name in ("GROUP", "VERSION") for a in node.names), path.name
