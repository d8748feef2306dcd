"""Who owns what: the one comparison of principals (PROTOCOL.md §7 and §8).

A session and an upload belong to the principal that opened them: what ``authenticate``
returned, ``True`` for every holder of ``verify_key``, ``None`` on an open server. A principal
crosses processes (the Redis backplane, an upload's state on disk) as its *owner key*: its JSON
with sorted keys, or its ``repr`` for what JSON cannot carry. Two principals are the same owner
when they are equal or their owner keys are; so give ``authenticate`` a principal that is
JSON-serialisable (a user id, a dict of claims) or has a stable ``repr``.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["owner_key", "same_owner"]


def owner_key(principal: Any) -> bytes:
    """The principal as it is stored and compared across processes (JSON, sorted keys)."""
    try:
        return orjson.dumps(principal, default=repr, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return orjson.dumps(repr(principal))


def same_owner(owner: Any, caller: Any) -> bool:
    """True when `caller` is the principal that owns something `owner` opened."""
    if owner is caller:
        return True
    try:
        if owner == caller:
            return True
    except Exception:  # a principal with a broken __eq__ is compared by its key alone
        pass
    return owner_key(owner) == owner_key(caller)
