"""Digits specifics live in ``diffspeed.models`` only: the library folders must not name them.

Scans the source of ``core/``, ``solvers/``, ``cache/``, ``distill/`` and ``bench/`` (syntax
tree, so docstrings and comments may still explain the digits teacher) for:

- the null label: any identifier or string naming ``null_label`` (``NULL_LABEL``, ...);
- a hard-coded class-label cond: a dict literal with the key ``"class_labels"``;
- label cycling ``% 10``;
- the digits image shape ``(1, 8, 8)``.

A model adapter may pass diffusers' own argument names positionally (``"class_labels"`` as
an argument name is fine); what it may not do is build a cond of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "diffspeed"
FOLDERS = ("core", "solvers", "cache", "distill", "bench")
DIGITS_SHAPE = (1, 8, 8)
NUM_CLASSES = 10


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _names(node: ast.AST) -> list[str]:
    """Identifiers a node introduces or refers to."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, ast.keyword) and node.arg:
        return [node.arg]
    if isinstance(node, ast.alias):
        return [node.asname or node.name]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    return []


def _is_const(node: ast.AST, value: object) -> bool:
    same_type = isinstance(node, ast.Constant) and type(node.value) is type(value)
    return same_type and node.value == value


def leaks(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` for every digits specific in ``source``."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if any("null_label" in name.lower() for name in _names(node)):
            found.append((line, "names the null label"))
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docs
            and "null_label" in node.value.lower()
        ):
            found.append((line, "names the null label in a string"))
        if isinstance(node, ast.Dict) and any(_is_const(k, "class_labels") for k in node.keys):
            found.append((line, 'hard-codes a {"class_labels": ...} cond'))
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Mod)
            and _is_const(node.right, NUM_CLASSES)
        ):
            found.append((line, f"cycles labels with % {NUM_CLASSES}"))
        if (
            isinstance(node, ast.Tuple)
            and len(node.elts) == len(DIGITS_SHAPE)
            and all(_is_const(e, v) for e, v in zip(node.elts, DIGITS_SHAPE, strict=True))
        ):
            found.append((line, f"names the digits shape {DIGITS_SHAPE}"))
    return found


def test_the_scanner_finds_each_kind():
    source = (
        "den = guidance(t, 2.0, uncond={'class_labels': 10})\n"
        "y = torch.arange(n) % 10\n"
        "noise = seeded_noise(seeds, (1, 8, 8))\n"
        "null = getattr(den, 'null_label', None)\n"
        "from diffspeed.models.teacher import NULL_LABEL\n"
        "def f():\n"
        '    """Docstrings may explain {"class_labels": y}, null_label and (1, 8, 8)."""\n'
        "    return unet(x, t, class_labels=y) if n % 3 else (1, 8)\n"
    )
    assert sorted(line for line, _ in leaks(source)) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_digits_specifics_outside_models(folder):
    problems = []
    for path in sorted((SRC / folder).rglob("*.py")):
        for line, what in leaks(path.read_text()):
            problems.append(f"{path.relative_to(SRC)}:{line}: {what}")
    assert not problems, (
        "digits specifics belong in diffspeed.models (read the model's CondSpec instead):\n"
        + "\n".join(problems)
    )
