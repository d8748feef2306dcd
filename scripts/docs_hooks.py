"""mkdocs hooks: the README's guides become the site's guide pages, one page per section.

The README is the one source of the guides (every issue asks for its section there, and a copy
would drift): at build time each ``## `` section becomes ``guides/NN-<slug>.md``, its headings
one level up, and its links rewritten for the site. Links to another section's heading point to
that page; links to files of the repository that the site does not carry become code text;
images under ``docs/`` keep working. Nothing is written to disk.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

_ROOT = Path(__file__).resolve().parent.parent
_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading (what the README's own links use)."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _sections(readme: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """The preamble, then (title, lines) of every ``## `` section, code fences respected."""
    preamble: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    current = preamble
    fenced = False
    for line in readme.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            current = []
            sections.append((line[3:].strip(), current))
            continue
        current.append(line)
    return "\n".join(preamble), sections


def _anchors(sections: list[tuple[str, list[str]]], pages: list[str]) -> dict[str, str]:
    """README anchor -> the page (and anchor) it lives on, for every heading."""
    where: dict[str, str] = {}
    for (title, lines), page in zip(sections, pages, strict=True):
        where[_slug(title)] = page
        fenced = False
        for line in lines:
            if _FENCE.match(line):
                fenced = not fenced
            elif not fenced and line.startswith("###"):
                anchor = _slug(line.lstrip("#"))
                where.setdefault(anchor, f"{page}#{anchor}")
    return where


def _rewrite(text: str, here: str, where: dict[str, str]) -> str:
    """The README's links, made right for the page at `here` (a path under docs/)."""
    depth = here.count("/")
    up = "../" * depth

    def link(match: re.Match[str]) -> str:
        bang, label, target = match.groups()
        if target.startswith(("http://", "https://", "mailto:")):
            return match.group(0)
        if target.startswith("#"):
            page = where.get(target[1:])
            if page is None:
                return label
            page_path, _, anchor = page.partition("#")
            if page_path == here:
                return f"{bang}[{label}](#{anchor or target[1:]})"
            return f"{bang}[{label}]({up}{page})"
        path = target.split("#", 1)[0]
        if path.startswith("docs/"):
            return f"{bang}[{label}]({up}{target.removeprefix('docs/')})"
        # A file of the repository the site does not carry (examples, benchmarks, ...).
        return label if label.startswith("`") else f"{label} (`{path}`)"

    out: list[str] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(link, line))
    return "\n".join(out) + "\n"


def _promote(lines: list[str]) -> list[str]:
    """Headings one level up (a section's ``###`` is its page's ``##``), fences respected."""
    out: list[str] = []
    fenced = False
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        if not fenced and line.startswith("###"):
            line = line[1:]
        out.append(line)
    return out


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    """Add the README's preamble as the home page and each section as a guide page."""
    readme = (_ROOT / "README.md").read_text(encoding="utf-8")
    preamble, sections = _sections(readme)
    pages = [f"guides/{n:02d}-{_slug(title)}.md" for n, (title, _) in enumerate(sections, 1)]
    where = _anchors(sections, pages)
    home = "index.md"
    # The README's own table of contents is the site's navigation: left out of the home page.
    intro = "\n".join(line for line in preamble.splitlines() if not line.startswith("- ["))
    files.append(File.generated(config, home, content=_rewrite(intro, home, where)))
    for (title, lines), page in zip(sections, pages, strict=True):
        body = "\n".join([f"# {title}", *_promote(lines)])
        files.append(File.generated(config, page, content=_rewrite(body, page, where)))
    return files
