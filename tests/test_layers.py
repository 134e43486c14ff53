"""The package's layers only look down: what each layer may import, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: package -> the packages of ours it must never import (the layers above it)
FORBIDDEN = {
    "scibench_data/datasets": ("loaders", "reference_models", "scibench_data.pipelines", "scibench_data.scoring",
                               "scibench_data.cli", "scibench_data.convert", "scibench_data.storage",
                               "scibench_data.registry", "scibench_data.submission"),
    "scibench_data/formats": ("loaders", "reference_models", "scibench_data.pipelines", "scibench_data.scoring",
                              "scibench_data.cli", "scibench_data.convert", "scibench_data.registry"),
    "scibench_data/scoring": ("loaders", "reference_models", "scibench_data.pipelines", "scibench_data.cli",
                              "scibench_data.submission"),
    "loaders": ("scibench_data.pipelines", "scibench_data.scoring", "scibench_data.cli", "scibench_data.submission"),
}


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append(node.module)
    return out


def test_layers_import_only_the_layers_below():
    bad = []
    for folder, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            bad += [f"{path.relative_to(ROOT)} imports {m}" for m in _imports(path)
                    if any(m == f or m.startswith(f + ".") for f in forbidden)]
    assert not bad, "\n".join(bad)


def _name_comparisons(path: Path) -> list[str]:
    """``x.name == "literal"`` comparisons: code that branches on which benchmark it was given."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "name" for s in sides) and \
                    any(isinstance(s, ast.Constant) and isinstance(s.value, str) for s in sides):
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return hits


def test_scoring_does_not_branch_on_a_benchmark_name():
    hits = [h for p in sorted((ROOT / "scibench_data/scoring").rglob("*.py")) for h in _name_comparisons(p)]
    hits += _name_comparisons(ROOT / "scibench_data/registry.py")
    assert not hits, hits
