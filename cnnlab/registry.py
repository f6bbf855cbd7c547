"""A small name -> factory registry, used for models, losses, optimizers, schedules and readers.

Registration is by decorator; duplicate names are refused; a miss lists close names and what is known.

A registry may name the modules whose import registers its built-in entries (`sources`). Their names and one-line
docs are then read from those files' source with `ast`, without importing them, so `cnnlab models`, `--help` and
the check of a misspelt `--model` run without importing torch (1.5 s); `get` imports the sources on first use. The
scan and the registration are the same decorator lines, so they cannot drift (tests/test_architecture.py).
"""

from __future__ import annotations

import ast
import difflib
import importlib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError

PACKAGE_DIR = Path(__file__).resolve().parent


class Registry:
    """Maps names to factories for one kind of thing (e.g. "model").

    Args:
        kind: what the entries are, for messages ("model", "loss").
        sources: dotted modules (inside cnnlab) whose import registers the built-in entries.
        decorator: how those modules spell the registering decorator (`register_model`, `LOSSES.register`).
    """

    def __init__(self, kind: str, sources: tuple[str, ...] = (), decorator: str | None = None) -> None:
        self.kind = kind
        self.sources, self.decorator = sources, decorator
        self._entries: dict[str, Callable[..., Any]] = {}
        self._docs: dict[str, str] = {}
        self._imported = not sources

    def register(self, name: str | None = None, *, doc: str | None = None) -> Callable:
        """Decorator: register `fn` under `name` (default: its __name__)."""

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = (name or fn.__name__).lower()
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = fn
            self._docs[key] = doc or first_line(fn.__doc__)
            return fn

        return decorator

    def load(self) -> None:
        """Import the source modules, so their entries are registered."""
        if not self._imported:
            self._imported = True
            for module in self.sources:
                importlib.import_module(module)

    def get(self, name: str) -> Callable[..., Any]:
        """Return the factory for `name`; a miss raises CnnlabError naming close matches."""
        self.load()
        key = name.lower()
        if key in self._entries:
            return self._entries[key]
        raise self.miss(name)

    def check(self, name: str) -> str:
        """`name` normalised, or CnnlabError when it is not known; imports nothing."""
        if name.lower() not in self.names():
            raise self.miss(name)
        return name.lower()

    def miss(self, name: str) -> CnnlabError:
        close = difflib.get_close_matches(name.lower(), self.names(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return CnnlabError(f"unknown {self.kind} '{name}': {hint}known {self.kind}s: {', '.join(self.names())}")

    def names(self) -> list[str]:
        """Every registered name, the built-ins read from their source when not yet imported."""
        return sorted(set(self._entries) | set(self._scanned()))

    def registered(self) -> list[str]:
        """The names registered so far (after `load`, every built-in one), without the source scan."""
        return sorted(self._entries)

    def doc(self, name: str) -> str:
        key = name.lower()
        return self._docs.get(key) or self._scanned().get(key, "")

    def _scanned(self) -> dict[str, str]:
        if self._imported or not self.decorator:
            return {}
        found: dict[str, str] = {}
        for module in self.sources:
            found.update(scan_registrations(module, self.decorator))
        return found

    def __contains__(self, name: str) -> bool:
        return name.lower() in self.names()


def first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def module_path(module: str) -> Path:
    """The source file of a dotted cnnlab module, found without importing it or its package."""
    parts = module.split(".")[1:]
    base = PACKAGE_DIR.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


@cache
def scan_registrations(module: str, decorator: str) -> dict[str, str]:
    """{name: one-line doc} of the functions in `module` decorated with `@<decorator>("name", doc=...)`."""
    tree = ast.parse(module_path(module).read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and ast.unparse(deco.func) == decorator:
                name = _literal(deco.args[0]) if deco.args else _keyword(deco, "name")
                doc = _keyword(deco, "doc") or first_line(ast.get_docstring(node))
                found[(name or node.name).lower()] = doc
    return found


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _keyword(call: ast.Call, key: str) -> str | None:
    return next((_literal(k.value) for k in call.keywords if k.arg == key), None)
