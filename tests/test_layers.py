"""The package's layering: each layer imports only the layers below it (docs/concepts/architecture.md draws it).

Every ``import fusionkit.x`` / ``from fusionkit.x import ...`` in the package, at module level or
inside a function, is read from the source with :mod:`ast`; an import that runs upward or sideways
(between two packages of the same level) fails with the file, the line and both layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fusionkit

PACKAGE = Path(fusionkit.__file__).parent

#: Layer of each top-level module or package of fusionkit, lowest first. The top-level
#: ``fusionkit/__init__.py`` is the public facade and may import any layer.
#:
#: ``train`` and ``inference`` are peers above ``runtime``: training makes a run, inference uses
#: one, and neither imports the other (the loop that runs a model over a loader is
#: ``runtime.predict``). ``evaluate`` composes them: its ``train_and_evaluate`` trains, then
#: stores the decision rule (``inference.json``) and writes the report.
LEVELS: dict[str, int] = {
    "errors": 0,
    "utils": 0,
    "registry": 1,
    "data": 1,
    "metrics": 1,
    "components": 2,
    "specs": 3,
    "presets": 4,
    "model": 5,
    "losses": 6,
    "runtime": 7,
    "train": 8,
    "inference": 8,
    "evaluate": 9,
    "sweep": 10,
    "demo": 10,
    "cli": 11,
}


def _top(module: str) -> str:
    return module.split(".")[1] if module.startswith("fusionkit.") else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("fusionkit.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "fusionkit":  # from fusionkit import x: x is a subpackage or a facade name
                found += [(node.lineno, f"fusionkit.{a.name}") for a in node.names]
            elif node.module.startswith("fusionkit."):
                found.append((node.lineno, node.module))
    return found


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_module_has_a_layer():
    unknown = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _sources()} - set(LEVELS)
    assert not unknown, f"add these to LEVELS (and to the architecture page): {sorted(unknown)}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downward(path: Path):
    src = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    bad = []
    for line, module in _imports(path):
        dst = _top(module)
        if dst == src or dst not in LEVELS:
            continue
        if LEVELS[dst] >= LEVELS[src]:
            bad.append(
                f"{path.relative_to(PACKAGE)}:{line} ({src}, level {LEVELS[src]}) imports {module} (level {LEVELS[dst]})"
            )
    assert not bad, "\n".join(bad)


def test_the_check_sees_upward_imports(tmp_path: Path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\ndef f():\n    from fusionkit.evaluate.report import evaluate_run\nfrom fusionkit import cli\n"
    )
    assert sorted(_imports(probe)) == [(3, "fusionkit.evaluate.report"), (4, "fusionkit.cli")]


def _drawn_layers() -> list[list[str]]:
    """The layers of the architecture page's diagram, top first: the names in each line's first
    28 columns (the descriptions start after them)."""
    page = (PACKAGE.parent / "docs" / "concepts" / "architecture.md").read_text()
    diagram = page.split("## Package layers", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    rows = []
    for line in diagram.splitlines():
        names = [word for word in line[:28].split() if word in LEVELS]
        if names:
            rows.append(names)
    return rows


def test_the_architecture_page_draws_these_layers_in_this_order():
    rows = _drawn_layers()
    assert sorted(name for row in rows for name in row) == sorted(LEVELS)
    assert [sorted({LEVELS[name] for name in row}) for row in rows] == [
        [level] for level in sorted(set(LEVELS.values()), reverse=True)
    ]
