"""The package's layers only look down: what each layer may import, checked on the source."""

from __future__ import annotations

import ast
import io
import tokenize
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
    "scibench_data/storage": ("loaders", "reference_models", "scibench_data.pipelines", "scibench_data.scoring",
                              "scibench_data.cli", "scibench_data.submission", "scibench_data.registry"),
    "scibench_data/storage/store": ("scibench_data.storage.distribution",),
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


def _comment_lines(source: str) -> set[int]:
    return {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT}


def _unexplained_function_imports(path: Path) -> list[str]:
    """Imports inside a function with no comment between the ``def`` and the import (its own lines
    included) saying why it is not at the top: start-up time, an optional dependency, an import cycle."""
    source = path.read_text()
    comments = _comment_lines(source)
    hits = []
    for fn in ast.walk(ast.parse(source, str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and \
                        not any(fn.lineno <= n <= node.end_lineno for n in comments):
                    hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return hits


def test_imports_are_at_the_top_of_modules_unless_a_comment_says_why():
    paths = [p for package in ("scibench_data", "loaders", "reference_models") for p in sorted((ROOT / package).rglob("*.py"))
             if "cli" not in p.relative_to(ROOT).parts]
    hits = [h for p in paths for h in _unexplained_function_imports(p)]
    assert not hits, "\n".join(hits)


def test_each_command_module_that_imports_inside_its_functions_says_why_once():
    """The CLI imports the data stack inside the commands so that ``--help`` stays fast; each module says so."""
    silent = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "scibench_data" / "cli").glob("*.py"))
              if _unexplained_function_imports(p) and "stays fast" not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert not silent, silent
