"""A small name -> factory registry, used for models, losses, optimizers, schedules and callbacks.

Registration is by decorator; duplicate names are refused; a miss lists close names and what is known.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from cnnlab.errors import CnnlabError


class Registry:
    """Maps names to factories for one kind of thing (e.g. "model")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str | None = None, *, doc: str | None = None) -> Callable:
        """Decorator: register `fn` under `name` (default: its __name__)."""

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = (name or fn.__name__).lower()
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = fn
            text = doc or (fn.__doc__ or "").strip().splitlines()
            self._docs[key] = text if isinstance(text, str) else (text[0] if text else "")
            return fn

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        """Return the factory for `name`; a miss raises CnnlabError naming close matches."""
        key = name.lower()
        if key in self._entries:
            return self._entries[key]
        close = difflib.get_close_matches(key, self._entries, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise CnnlabError(
            f"unknown {self.kind} '{name}': {hint}known {self.kind}s: {', '.join(self.names())}"
        )

    def names(self) -> list[str]:
        return sorted(self._entries)

    def doc(self, name: str) -> str:
        return self._docs.get(name.lower(), "")

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._entries
