"""``siyi call``: one request over WebSocket or HTTP; the Response as one JSON line.

With ``--stream``: the items of a streaming command, one JSON line each, as they arrive.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from ..adapters.http import HttpAdapter
from ..calls import aclose
from ..errors import ApiError, RequestTimeoutError
from ..packets import Request, Response, encode
from .common import (
    EXIT_ERROR_RESPONSE,
    EXIT_NO_ANSWER,
    EXIT_OK,
    HTTP_SCHEMES,
    WEBSOCKET_SCHEMES,
    client_for,
    describe,
    emit,
    headers,
    one_connection,
    tell,
)

__all__ = ["run_call"]


async def _call_websocket(args: argparse.Namespace, request: Request) -> Response:
    client = client_for(args)
    async with one_connection(client):
        return await client.send_packet(request)


async def _call_http(args: argparse.Namespace, request: Request) -> Response:
    async with HttpAdapter(
        args.url, request_timeout=args.timeout, headers=headers(args), ssl=args.tls
    ) as adapter:
        return await adapter.send_packet(request)


async def _stream_websocket(args: argparse.Namespace, request: Request) -> AsyncIterator[Any]:
    client = client_for(args)
    async with one_connection(client):
        items = client.stream_packet(request)
        try:
            async for item in items:
                yield item
        finally:
            await aclose(items)  # withdraws the request when leaving early (Ctrl+C)


async def _stream_http(args: argparse.Namespace, request: Request) -> AsyncIterator[Any]:
    async with HttpAdapter(
        args.url, request_timeout=args.timeout, headers=headers(args), ssl=args.tls
    ) as adapter:
        items = adapter.stream_packet(request)
        try:
            async for item in items:
                yield item
        finally:
            await aclose(items)


async def _run_stream(args: argparse.Namespace, request: Request, websocket: bool) -> int:
    """``siyi call --stream``: print each item as one JSON line as it arrives (§10)."""
    stream = (_stream_websocket if websocket else _stream_http)(args, request)
    count = 0
    try:
        async for item in stream:
            emit(orjson.dumps(item).decode())
            count += 1
    except ApiError as exc:
        tell(args, f"the stream ended with error {exc.code} after {count} items: {exc.message}")
        return EXIT_ERROR_RESPONSE
    except RequestTimeoutError:
        tell(args, f"no answer to {request.command!r} within {args.timeout:g} s")
        return EXIT_NO_ANSWER
    except (OSError, aiohttp.ClientError, TimeoutError) as exc:  # TransportError is an OSError
        tell(args, f"cannot reach {args.url}: {describe(exc, args.timeout)}")
        return EXIT_NO_ANSWER
    finally:
        await aclose(stream)
    return EXIT_OK


async def run_call(args: argparse.Namespace) -> int:
    """Run ``siyi call``: send one request and print the Response.

    Args:
        args: the parsed arguments of the subcommand.

    With ``--stream``, each item of a streaming command is printed as one JSON line as it
    arrives; Ctrl+C withdraws the request (the server's generator is closed).

    Returns:
        The exit code: `EXIT_OK` for an ok Response (a stream that ended ok),
        `EXIT_ERROR_RESPONSE` for an error one, `EXIT_NO_ANSWER` for none.
    """
    request = Request(command=args.command_name, params=args.params)
    scheme = urlsplit(args.url).scheme.lower()
    if scheme in WEBSOCKET_SCHEMES:
        send = _call_websocket
    elif scheme in HTTP_SCHEMES:
        send = _call_http
    else:
        tell(args, f"unsupported URL {args.url!r}: use ws://, wss://, http:// or https://")
        return EXIT_NO_ANSWER
    if args.stream:
        return await _run_stream(args, request, scheme in WEBSOCKET_SCHEMES)
    try:
        response = await send(args, request)
    except RequestTimeoutError:
        tell(args, f"no response to {request.command!r} within {args.timeout:g} s")
        return EXIT_NO_ANSWER
    except (OSError, aiohttp.ClientError, TimeoutError) as exc:  # TransportError is an OSError
        tell(args, f"cannot reach {args.url}: {describe(exc, args.timeout)}")
        return EXIT_NO_ANSWER
    emit(encode(response).decode())
    if response.ok:
        return EXIT_OK
    tell(args, f"error {response.code}: {response.error}")
    return EXIT_ERROR_RESPONSE
