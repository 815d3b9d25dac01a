"""Griffe extension used by the docs build only: render fusionkit's reST idioms as Markdown.

fusionkit's docstrings are Google style but use a few Sphinx/reST idioms that Markdown shows
literally. Before the docstrings are parsed, this extension rewrites:

- roles (``:class:`~fusionkit.specs.ModelSpec```, ``:func:``, ``:meth:``, ``:mod:``, ``:data:``,
  ``:attr:``, ``:exc:``) into optional cross-references (a link when the target is rendered on some
  page, plain code otherwise, never a warning);
- a paragraph ending in ``::`` (a reST literal block marker) into one ending in ``:``; the indented
  block after it is already a code block in Markdown;
- reST "simple tables" (``====  ====`` borders) into Markdown tables;
- a reST definition list item (a term line, then its indented definition) into a paragraph that
  starts with the term in bold.

The code is not changed; the build only reads it. Loaded from mkdocs.yml
(``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import html
import re
from typing import Any

from griffe import Alias, Extension, Module, Object

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+?)`")
_LITERAL_MARKER = re.compile(r"(\S)::[ \t]*$", re.MULTILINE)
_BORDER = re.compile(r"^[ \t]*=+(?:[ \t]+=+)+[ \t]*$")


def _lookup(pkg: Module, obj: Object, name: str) -> Object | None:
    """The griffe object ``name`` refers to from ``obj``'s scope, or None."""
    candidates = []
    if name.startswith(pkg.name + "."):
        candidates.append(name)
    else:
        try:
            candidates.append(obj.resolve(name.split(".")[0]) + name[len(name.split(".")[0]) :])
        except Exception:  # noqa: BLE001 - unresolvable names stay plain code
            pass
    for path in candidates:
        if not path.startswith(pkg.name + "."):
            continue
        try:
            target = pkg[path[len(pkg.name) + 1 :]]
            if isinstance(target, Alias):
                target = target.final_target
            return target
        except Exception:  # noqa: BLE001
            continue
    return None


def _roles(text: str, pkg: Module, obj: Object) -> str:
    def replace(match: re.Match[str]) -> str:
        tilde, name = match.group(1), match.group(2).strip()
        title = name.rsplit(".", 1)[-1] if tilde else name
        target = _lookup(pkg, obj, name)
        if target is None:
            return f"`{title}`"
        ident = html.escape(target.path, quote=True)
        return f'<autoref identifier="{ident}" optional><code>{html.escape(title)}</code></autoref>'

    return _ROLE.sub(replace, text)


def _cells(line: str, starts: list[int]) -> list[str]:
    out = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(line)
        out.append(line[start:end].strip().replace("|", "\\|"))
    return out


def _simple_tables(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not _BORDER.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        borders = [j for j in range(i, len(lines)) if _BORDER.match(lines[j])][:3]
        if len(borders) < 3:
            out.append(lines[i])
            i += 1
            continue
        top, mid, bottom = borders
        starts = [m.start() for m in re.finditer(r"=+", lines[top])]
        header = _cells(" ".join(lines[top + 1 : mid]), starts)
        rows: list[list[str]] = []
        for line in lines[mid + 1 : bottom]:
            if not line.strip():
                continue
            cells = _cells(line, starts)
            if not cells[0] and rows:  # a continuation line
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
            else:
                rows.append(cells)
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + " --- |" * len(header))
        out.extend("| " + " | ".join(row) + " |" for row in rows)
        i = bottom + 1
    return "\n".join(out)


def _definition_lists(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        is_term = (
            line.strip()
            and not line[0].isspace()
            and not line.rstrip().endswith(":")  # Google sections ("Args:") and literal blocks
            and (i == 0 or not lines[i - 1].strip())
            and i + 1 < len(lines)
            and lines[i + 1].startswith("    ")
            and lines[i + 1].strip()
        )
        if not is_term:
            out.append(line)
            i += 1
            continue
        body = []
        j = i + 1
        while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
            if not lines[j].strip() and (j + 1 >= len(lines) or not lines[j + 1].startswith("    ")):
                break
            body.append(lines[j][4:])
            j += 1
        out.append(f"**{line.strip()}.** " + body[0])
        out.extend(body[1:])
        i = j
    return "\n".join(out)


def _walk(obj: Object) -> Any:
    yield obj
    for member in obj.members.values():
        if isinstance(member, Alias):
            continue
        yield from _walk(member)


class SphinxMarkup(Extension):
    """Rewrite the reST idioms listed in the module docstring, in every docstring of the package."""

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:  # noqa: ARG002
        for obj in _walk(pkg):
            if obj.docstring is None:
                continue
            text = obj.docstring.value
            text = _roles(text, pkg, obj)
            text = _LITERAL_MARKER.sub(r"\1:", text)
            text = _simple_tables(text)
            text = _definition_lists(text)
            obj.docstring.value = text
