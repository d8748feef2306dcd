"""The named cases of the conformance suite and the decorator that registers them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .probe import Target

__all__ = ["CASES", "Case", "CaseFunction", "case"]

CaseFunction = Callable[[Target], Awaitable[None]]
"""A case: it returns when the server follows the rule, raises `CaseFailedError` when not."""

F = TypeVar("F", bound=CaseFunction)


@dataclass(frozen=True)
class Case:
    """One named case.

    Attributes:
        name: the stable dotted name (``s<section>.<what>``), used by ``--expected-failures``.
        rule: one line saying what the server must do, with its PROTOCOL.md section.
        run: the coroutine function that checks it.
        needs_key: the case needs the target to have a key (``--key``).
        needs_key2: the case needs a second principal (``--key2``).
    """

    name: str
    rule: str
    run: CaseFunction
    needs_key: bool = False
    needs_key2: bool = False

    @property
    def section(self) -> str:
        """The case's PROTOCOL.md section, e.g. ``s7``."""
        return self.name.split(".", 1)[0]


CASES: dict[str, Case] = {}
"""Every case, by name, in the order they run: by section, then in the order registered."""


def _section_number(name: str) -> int:
    digits = name.split(".", 1)[0].removeprefix("s")
    return int(digits) if digits.isdigit() else 0


def case(
    name: str, rule: str, *, needs_key: bool = False, needs_key2: bool = False
) -> Callable[[F], F]:
    """Register a case under `name`; a decorator.

    Raises:
        ValueError: the name is taken.
    """

    def register(function: F) -> F:
        if name in CASES:
            raise ValueError(f"two cases are named {name!r}")
        CASES[name] = Case(name, rule, function, needs_key, needs_key2)
        # Cases come from more than one module: keep them in the order of PROTOCOL.md.
        ordered = sorted(CASES.values(), key=lambda c: _section_number(c.name))
        CASES.clear()
        CASES.update((c.name, c) for c in ordered)
        return function

    return register
