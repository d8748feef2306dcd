"""The stored name of an uploaded file: `sanitize_filename` makes a client's name safe (§8)."""

from __future__ import annotations

import re
import unicodedata
from typing import Final

__all__ = ["MAX_NAME_BYTES", "sanitize_filename"]

MAX_NAME_BYTES: Final = 200
"""The longest stored name, in UTF-8 bytes (filesystems allow 255; this leaves room)."""

_FORBIDDEN = frozenset('<>:"/\\|?*')  # reserved on Windows; the slashes on every system
_DROPPED_CATEGORIES = frozenset(
    {
        "Cc",  # control characters, NUL included
        "Cf",  # format: bidi overrides and isolates, zero-width characters, BOM
        "Cs",  # lone surrogates
        "Co",  # private use
        "Cn",  # unassigned
        "Zl",  # line separator
        "Zp",  # paragraph separator
    }
)
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"{kind}{n}" for kind in ("COM", "LPT") for n in "123456789\u00b9\u00b2\u00b3"}
)


def sanitize_filename(name: str, default: str = "upload") -> str:
    r"""Make a client's file name safe to store: one plain component, never a path.

    The rules, in order: Unicode NFC; keep what follows the last ``/`` or ``\\`` (so
    ``../../etc/passwd`` is ``passwd`` and ``C:\\docs\\a.txt`` is ``a.txt``); drop control,
    format (bidi overrides, zero-width), surrogate, private-use and unassigned characters and
    line/paragraph separators; any other space becomes a plain space, runs of spaces one;
    characters Windows reserves (``<>:"|?*``) become ``_``; leading and trailing dots and
    spaces go (no ``..``, no hidden files); a Windows device name (``CON``, ``nul.txt``, ...)
    gets a ``_`` in front; a name over `MAX_NAME_BYTES` UTF-8 bytes is shortened, keeping its
    extension. What is left empty becomes `default`.

    Args:
        name: the name the client sent (already percent-decoded).
        default: the name to use when nothing usable is left.

    Returns:
        A name with no separator, no control character, not ``.`` or ``..``.
    """
    name = unicodedata.normalize("NFC", name)
    name = re.split(r"[/\\]", name)[-1]
    kept: list[str] = []
    for char in name:
        category = unicodedata.category(char)
        if category in _DROPPED_CATEGORIES:
            continue
        if category == "Zs":
            char = " "
        elif char in _FORBIDDEN:
            char = "_"
        kept.append(char)
    name = re.sub(" {2,}", " ", "".join(kept)).strip(" .")
    if not name:
        return default
    if name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
        name = "_" + name
    if len(name.encode()) > MAX_NAME_BYTES:
        stem, dot, extension = name.rpartition(".")
        if not dot or not stem or len(extension.encode()) > 16:
            stem, extension = name, ""
        suffix = "." + extension if extension else ""
        room = MAX_NAME_BYTES - len(suffix.encode())
        stem = stem.encode()[:room].decode("utf-8", "ignore").rstrip(" .")
        name = (stem + suffix) if stem else default
    return name
