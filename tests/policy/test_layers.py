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


def _imports(path: Path) -> list[str]:
    """Every imported module, relative imports resolved against the llmscale package."""
    pkg_parts = path.relative_to(PKG.parent).with_suffix("").parts[:-1]  # e.g. ("llmscale", "policy")
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                out.append(".".join([*base, node.module] if node.module else base))
            else:
                out.append(node.module or "")
    return out


def test_policy_imports_only_api_perf_and_the_standard_library() -> None:
    for path in _modules("policy"):
        for mod in _imports(path):
            top = mod.split(".")[0]
            assert top not in FORBIDDEN_IMPORTS, f"{path.name} imports {mod}"
            if top == "llmscale":
                assert mod.split(".")[1] in ALLOWED_INTERNAL, f"{path.name} imports {mod}"


def test_api_and_perf_sit_below_the_policy() -> None:
    for folder, allowed in (("api", {"api"}), ("perf", {"perf"})):
        for path in _modules(folder):
            for mod in _imports(path):
                parts = mod.split(".")
                assert parts[0] not in FORBIDDEN_IMPORTS - {"random"} or folder == "perf" and parts[0] == "random", f"{path.name}: {mod}"
                if parts[0] == "llmscale" and len(parts) > 1:
                    assert parts[1] in allowed, f"{path.name} imports {mod}"


def test_pure_layers_read_no_clock() -> None:
    for folder in ("policy", "perf", "api"):
        for path in _modules(folder):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                    assert (node.func.value.id, node.func.attr) not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno}"


