"""``siyi upload``: one file over the upload WebSocket or POST /upload, with a progress bar."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from ..adapters.http import HttpAdapter
from ..adapters.upload_source import UploadSource
from ..errors import ApiError
from ..wire import FileInfo
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
    tell,
)

__all__ = ["ProgressBar", "run_upload"]


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


class ProgressBar:
    """A one-line text progress bar, redrawn in place on `stream` at each whole percent."""

    def __init__(self, stream: IO[str], width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self._drawn = -1

    def __call__(self, sent: int, total: int) -> None:
        """Draw `sent` of `total` bytes, if the whole percent changed since the last draw."""
        percent = sent * 100 // total if total else 100
        if percent == self._drawn:
            return
        self._drawn = percent
        filled = self.width * percent // 100
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {percent:3d}% {_mib(sent)} of {_mib(total)}")
        self.stream.flush()

    def end(self) -> None:
        """End the bar's line, if one was drawn."""
        if self._drawn >= 0:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = -1


async def _send_file(
    args: argparse.Namespace, source: UploadSource, bar: ProgressBar | None
) -> FileInfo:
    scheme = urlsplit(args.url).scheme.lower()
    options: dict[str, Any] = {"name": args.name, "progress": bar, "upload_id": args.upload_id}
    if scheme in WEBSOCKET_SCHEMES:
        client = client_for(args)
        try:  # the upload has a connection of its own: the packet channel is not opened
            return await client.upload(source, **options)
        finally:
            await client.close()
    async with HttpAdapter(
        args.url, request_timeout=args.timeout, headers=headers(args), ssl=args.tls
    ) as adapter:
        return await adapter.upload(source, **options)


async def run_upload(args: argparse.Namespace) -> int:
    """Run ``siyi upload``: upload a file and print what the server stored.

    Args:
        args: the parsed arguments of the subcommand.

    Returns:
        The exit code: `EXIT_OK` stored, `EXIT_ERROR_RESPONSE` refused, `EXIT_NO_ANSWER` no
        answer (or no such file, or a bad URL).
    """
    scheme = urlsplit(args.url).scheme.lower()
    if scheme not in WEBSOCKET_SCHEMES + HTTP_SCHEMES:
        tell(args, f"unsupported URL {args.url!r}: use ws://, wss://, http:// or https://")
        return EXIT_NO_ANSWER
    source: UploadSource
    if args.file == "-":
        source = sys.stdin.buffer
    else:
        source = Path(args.file)
        if not source.is_file():
            tell(args, f"no such file: {args.file}")
            return EXIT_NO_ANSWER
    bar = None if args.no_progress else ProgressBar(sys.stderr)
    try:
        info = await _send_file(args, source, bar)
    except ApiError as exc:
        if bar is not None:
            bar.end()
        tell(args, f"the server refused the upload: {exc}")
        return EXIT_ERROR_RESPONSE
    except (OSError, aiohttp.ClientError, TimeoutError) as exc:  # TransportError is an OSError
        if bar is not None:
            bar.end()
        tell(args, f"cannot upload to {args.url}: {describe(exc, args.timeout)}")
        return EXIT_NO_ANSWER
    if bar is not None:
        bar.end()
    emit(orjson.dumps(info.model_dump()).decode())
    return EXIT_OK
