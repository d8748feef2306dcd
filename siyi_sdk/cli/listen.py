"""``siyi listen``: each event the server sends as one JSON line, until Ctrl+C."""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import urlsplit

import aiohttp

from ..client import ProtocolClient
from ..packets import Event, encode
from .common import (
    EXIT_NO_ANSWER,
    EXIT_OK,
    WEBSOCKET_SCHEMES,
    describe,
    emit,
    headers,
    one_connection,
    tell,
    until_signal,
)

__all__ = ["run_listen"]


def _print_event(event: Event) -> None:
    emit(encode(event).decode())


async def run_listen(args: argparse.Namespace) -> int:
    """Run ``siyi listen``: print events, reconnecting after a drop, until SIGINT/SIGTERM.

    Args:
        args: the parsed arguments of the subcommand.

    Returns:
        The exit code: `EXIT_OK` once stopped, `EXIT_NO_ANSWER` if the server cannot be
        reached or the URL is not a WebSocket one.
    """
    if urlsplit(args.url).scheme.lower() not in WEBSOCKET_SCHEMES:
        tell(args, f"unsupported URL {args.url!r}: listen needs ws:// or wss://")
        return EXIT_NO_ANSWER
    client = ProtocolClient(
        args.url, connect_timeout=args.timeout, headers=headers(args), ssl=args.tls
    )
    client.on_event(_print_event)

    async def listen() -> int:
        try:
            async with one_connection(client) as first:
                tell(args, f"listening to {args.url}; Ctrl+C to stop")
                # asyncio.wait, not await: a signal must not cancel the connection's task, so
                # that disconnect() is what closes the WebSocket (cleanly, with 1000).
                await asyncio.wait({first})
                tell(args, "the connection dropped; reconnecting")
                again = asyncio.create_task(client.connect())  # with backoff, until disconnect()
                await asyncio.wait({again})
                again.result()
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            tell(args, f"cannot reach {args.url}: {describe(exc, args.timeout)}")
            return EXIT_NO_ANSWER
        return EXIT_OK

    code = await until_signal(listen())
    return EXIT_OK if code is None else code
