"""``siyi stats URL --key K``: print a server's dashboard figures (``{admin_path}/api/stats``)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import Any

import orjson

from .common import (
    EXIT_ERROR_RESPONSE,
    EXIT_NO_ANSWER,
    EXIT_OK,
    NoAnswerError,
    emit,
    get_once,
    http_url,
    tell,
)

__all__ = ["add_stats_parser", "format_stats", "run_stats", "stats_url"]


def stats_url(url: str, admin_path: str) -> str:
    """Where a server at `url` (with its mount prefix) serves its dashboard's figures.

    Raises:
        ValueError: the URL's scheme is none of ws, wss, http, https.
    """
    return http_url(url, "/" + admin_path.strip("/") + "/api/stats")


def _rate(value: Any) -> str:
    return f"{value:,.1f}" if isinstance(value, int | float) else "-"


def _bytes(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:,.0f} {unit}"
        value /= 1024
    return f"{value:,.1f} GB"


def format_stats(stats: dict[str, Any]) -> list[str]:
    """The figures as lines of text: one per node, then one per command of the node asked."""
    lines = [
        f"{'node':<14} {'address':<22} {'state':<5} {'ws':>6} {'http':>5} {'attached':>8} "
        f"{'away':>6} {'prov.':>6} {'req/s':>9} {'err/s':>7} {'ev/s in':>7} {'ev/s out':>8} "
        f"{'in/s':>9} {'out/s':>9} {'buffered':>8} {'uptime':>9} version"
    ]
    for node in stats.get("nodes", {}).values():
        connections, sessions, rates = node["connections"], node["sessions"], node["rates"]
        lines.append(
            f"{node['id']:<14} {node['address']:<22} {'up' if node['up'] else 'DOWN':<5} "
            f"{connections['websocket']:>6} {connections['http']:>5} "
            f"{sessions['attached']:>8} {sessions['away']:>6} {sessions['provisional']:>6} "
            f"{_rate(rates['requests']):>9} {_rate(rates['errors']):>7} "
            f"{_rate(rates['events']):>7} {_rate(rates.get('events_out', 0.0)):>8} "
            f"{_bytes(rates['bytes_in']):>9} "
            f"{_bytes(rates['bytes_out']):>9} {node['buffered']:>8} "
            f"{node['uptime']:>8.0f}s {node['version']}"
        )
    commands = stats.get("commands", {})
    if commands:
        lines.append("")
        lines.append(
            f"{'command':<24} {'rate/s':>9} {'errors/s':>9} {'p50 ms':>9} {'p99 ms':>9} "
            f"{'total':>10} {'errors':>8}"
        )
        for name in sorted(commands):
            c = commands[name]
            lines.append(
                f"{name:<24} {_rate(c['rate']):>9} {_rate(c['error_rate']):>9} "
                f"{c.get('p50', '-'):>9} {c.get('p99', '-'):>9} {c['count']:>10,} "
                f"{c['errors']:>8,}"
            )
    return lines


async def run_stats(args: argparse.Namespace) -> int:
    """Fetch the figures once and print them (a table, or the JSON with ``--json``).

    Returns:
        0 printed; 1 refused (no dashboard, a wrong key); 2 no answer.
    """
    try:
        target = stats_url(args.url, args.admin_path)
    except ValueError as exc:
        tell(args, str(exc))
        return EXIT_NO_ANSWER
    try:
        status, body = await get_once(args, target)
    except NoAnswerError as exc:
        tell(args, str(exc))
        return EXIT_NO_ANSWER
    if status == 401:
        tell(args, "the dashboard refused the key (HTTP 401): pass a dashboard key with --key")
        return EXIT_ERROR_RESPONSE
    if status == 404:
        tell(args, f"{target}: no dashboard there (is admin_key set? is --admin-path right?)")
        return EXIT_ERROR_RESPONSE
    try:
        stats = orjson.loads(body)
    except orjson.JSONDecodeError:
        stats = None
    if status != 200 or not isinstance(stats, dict):
        tell(args, f"{target} answered HTTP {status}, not the dashboard's figures")
        return EXIT_ERROR_RESPONSE
    if args.json:
        emit(orjson.dumps(stats, option=orjson.OPT_SORT_KEYS).decode())
    else:
        for line in format_stats(stats):
            emit(line)
    return EXIT_OK


def add_stats_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``siyi stats`` to the subcommands.

    Args:
        commands: the subparsers of ``siyi``.
        connection_options: adds ``--timeout``, ``--key`` and ``--cafile`` to a parser.
    """
    parser = commands.add_parser(
        "stats",
        help="print a server's dashboard figures (its nodes, its commands)",
        description="Fetch the figures of a server's dashboard once (GET "
        "{admin_path}/api/stats, the same the page shows) and print them: one line per node of "
        "the cluster, one per command. --key is a dashboard key (read-only is enough). Exit "
        "code: 0 printed, 1 refused, 2 no answer.",
    )
    parser.add_argument(
        "url",
        metavar="URL",
        help="the server: http://HOST:PORT (with its mount prefix, if any)",
    )
    parser.add_argument(
        "--admin-path",
        default="/admin",
        help="where the dashboard is served under the URL (/admin)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object instead"
    )
    connection_options(parser)
    # A dashboard key, not the clients' one: its own variable.
    parser.set_defaults(
        run=run_stats, log_level=logging.WARNING, key=os.environ.get("SIYI_ADMIN_KEY")
    )
