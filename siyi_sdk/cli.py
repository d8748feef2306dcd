"""The ``siyi`` command (also ``python -m siyi_sdk``).

Subcommands::

    siyi serve [--host 127.0.0.1] [--port 8765] [--heartbeat 30] [--cert FILE --key FILE]
                                     the demo game server (TLS with --cert)
    siyi call URL COMMAND [JSON]     one request; prints the Response as one JSON line
    siyi listen URL                  prints each event the server sends as one JSON line
    siyi upload URL FILE             uploads a file; prints what the server stored as JSON
    siyi demo                        a server and two clients in one process, narrated

`call` speaks WebSocket to a ``ws://`` or ``wss://`` URL (one connection attempt, no
reconnection) and HTTP to an ``http://`` or ``https://`` URL (``POST {URL}/general``).
`upload` uses the upload WebSocket (``ws://``) or ``POST {URL}/upload`` (``http://``), resumes
after drops, and draws a progress bar on stderr. Over ``wss://`` and ``https://`` the server's
certificate is verified against the system's CAs, or against ``--cafile FILE`` (a private CA).

Exit codes: 0 success; 1 the server answered with an error Response (`call`), refused the upload
(`upload`), or the demo saw something it did not expect; 2 no answer (the server cannot be
reached, the connection dropped, the request timed out) or bad usage; 130 interrupted (`call`,
`upload`, `demo`). `serve` and `listen` run until Ctrl+C (or SIGTERM) and then exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson

from ._version import __version__
from .adapters.http import HttpAdapter
from .adapters.upload_source import UploadSource
from .client import ProtocolClient
from .demo import DemoFailedError, create_game_server, run_demo
from .errors import ApiError, CertificateError, RequestTimeoutError, TransportError
from .packets import PROTOCOL_VERSION, Event, Request, Response, encode
from .server.redis_backplane import RedisBackplane
from .wire import FileInfo

__all__ = ["EXIT_ERROR_RESPONSE", "EXIT_INTERRUPTED", "EXIT_NO_ANSWER", "EXIT_OK", "main"]

EXIT_OK = 0
"""Success (for `call`: an ok Response)."""
EXIT_ERROR_RESPONSE = 1
"""`call`: the server answered with an error Response; `demo`: a step failed."""
EXIT_NO_ANSWER = 2
"""No answer: the server could not be reached, the connection dropped, a timeout; bad usage."""
EXIT_INTERRUPTED = 130
"""`call` or `demo` was interrupted by Ctrl+C."""

_WEBSOCKET_SCHEMES = ("ws", "wss")
_HTTP_SCHEMES = ("http", "https")

Runner = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``siyi`` command.

    Args:
        argv: the arguments after the program's name (default: ``sys.argv[1:]``).

    Returns:
        The exit code (see the module's docstring).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    run: Runner = args.run
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        # `serve` and `listen` turn Ctrl+C into a clean stop themselves where the platform lets
        # them install signal handlers; this is the other commands, and the other platforms.
        if args.command in ("serve", "listen"):
            return EXIT_OK
        _tell(args, "interrupted")
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """Build the ``siyi`` argument parser (each subcommand sets ``run`` to its coroutine)."""
    parser = argparse.ArgumentParser(
        prog="siyi",
        description="siyi-sdk: two-way request/response and events over WebSocket and HTTP.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"siyi-sdk {__version__} (protocol {PROTOCOL_VERSION})",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (repeat for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the demo game server until Ctrl+C",
        description="Run the demo game server (echo, get_status, get_player_list; "
        "player_joined and player_update events) until Ctrl+C or SIGTERM.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="TCP port, 0 for a free one (8765)")
    serve.add_argument(
        "--heartbeat",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds between pings to each WebSocket, 0 for none (30)",
    )
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="serve as one node of several sharing this Redis (redis://HOST:PORT/DB): "
        "sessions, broadcasts and the at-most-once cache cross nodes",
    )
    serve.add_argument(
        "--redis-prefix",
        default="siyi",
        metavar="PREFIX",
        help="the namespace of the deployment's keys in Redis (siyi)",
    )
    serve.add_argument(
        "--cert",
        metavar="FILE",
        help="serve TLS (wss://, https://) with this PEM certificate chain (the server's "
        "certificate first, then any intermediates)",
    )
    serve.add_argument(
        "--key",
        metavar="FILE",
        help="the PEM private key of --cert, unencrypted (default: it is in the --cert file)",
    )
    serve.set_defaults(run=_serve, log_level=logging.INFO)

    call = commands.add_parser(
        "call",
        help="send one request and print the Response as JSON",
        description="Send one request and print the Response as one JSON line. Exit code: "
        "0 ok, 1 error Response, 2 no answer.",
    )
    call.add_argument(
        "url", metavar="URL", help="ws://HOST:PORT (WebSocket) or http://HOST:PORT (POST /general)"
    )
    call.add_argument("command_name", metavar="COMMAND", help="the command, e.g. get_player_list")
    call.add_argument(
        "params",
        metavar="JSON",
        nargs="?",
        type=_json_object,
        help="the params, a JSON object ('-' reads it from stdin)",
    )
    _add_connection_options(call)
    call.set_defaults(run=_call, log_level=logging.WARNING)

    listen = commands.add_parser(
        "listen",
        help="print each event as one JSON line until Ctrl+C",
        description="Connect over WebSocket and print each event the server sends as one JSON "
        "line, reconnecting after a drop, until Ctrl+C or SIGTERM. Requests the server sends "
        "are answered 404 (unknown command).",
    )
    listen.add_argument("url", metavar="URL", help="ws://HOST:PORT")
    _add_connection_options(listen)
    listen.set_defaults(run=_listen, log_level=logging.WARNING)

    upload = commands.add_parser(
        "upload",
        help="upload a file and print what the server stored as JSON",
        description="Upload FILE on a connection of its own: the upload WebSocket for ws://, "
        "POST /upload for http://. It resumes where it stopped after a drop. A progress bar "
        "goes to stderr, the stored file's description (file_id, name, size, md5, sha256) "
        "to stdout as one JSON line. Exit code: 0 stored, 1 refused (digest, size limit, key), "
        "2 no answer.",
    )
    upload.add_argument(
        "url", metavar="URL", help="ws://HOST:PORT (WebSocket) or http://HOST:PORT (POST /upload)"
    )
    upload.add_argument("file", metavar="FILE", help="the file to upload ('-' reads stdin)")
    upload.add_argument("--name", help="the name to store it under (default: FILE's name)")
    upload.add_argument(
        "--upload-id",
        metavar="ID",
        help="the upload's id: pass the one of an interrupted upload to resume it",
    )
    upload.add_argument("--no-progress", action="store_true", help="draw no progress bar")
    _add_connection_options(upload)
    upload.set_defaults(run=_upload, log_level=logging.WARNING)

    demo = commands.add_parser(
        "demo",
        help="run a server and two clients in one process and narrate them",
        description="Run the demo game server and two clients, alice and bob, on a free "
        "loopback port, and narrate what happens. Needs no external service.",
    )
    demo.set_defaults(run=_demo, log_level=logging.INFO)
    return parser


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds to connect, and to wait for the answer (10)",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("SIYI_KEY"),
        help="the server's key, sent as 'Authorization: Bearer KEY' (default: $SIYI_KEY)",
    )
    parser.add_argument(
        "--cafile",
        dest="tls",
        metavar="FILE",
        type=_trust_ca,
        help="verify a wss:// or https:// server against the CA certificates in this PEM file "
        "instead of the system's (e.g. your own CA)",
    )


def _json_object(text: str) -> dict[str, Any]:
    if text == "-":
        text = sys.stdin.read()
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            'the params must be a JSON object, e.g. \'{"world": "overworld"}\''
        )
    return value


def _trust_ca(path: str) -> ssl.SSLContext:
    """The client TLS context of ``--cafile``: verify servers against the CAs in `path`."""
    try:
        with open(path, "rb"):  # the ssl module's own errors do not name the file
            pass
        return ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:
        raise argparse.ArgumentTypeError(
            f"{path} holds no PEM CA certificate ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror or exc}") from None


def _refuse_password() -> str:
    raise ValueError("encrypted private key")


def _server_tls(cert: str, key: str | None) -> ssl.SSLContext:
    """The server TLS context of ``--cert``/``--key``.

    Raises:
        ValueError: a file cannot be read or is not a PEM certificate chain with its key (the
            message says which and why).
    """
    for option, path in (("--cert", cert), ("--key", key)):
        if path is None:
            continue
        try:  # the ssl module's own errors do not name the file
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # A callback, not None: OpenSSL would otherwise prompt on the terminal for a password.
        context.load_cert_chain(cert, key, password=_refuse_password)
    except ssl.SSLError as exc:
        files = f"{cert} and {key} are" if key is not None else f"{cert} is"
        # OpenSSL's reason is worth showing when it has one (KEY_VALUES_MISMATCH); its
        # "[SSL] PEM lib (_ssl.c:...)" for a file that is no PEM at all is not.
        detail = f" ({exc.reason})" if exc.reason else ""
        raise ValueError(
            f"--cert/--key: {files} not a PEM certificate chain and its matching private "
            f"key{detail}"
        ) from None
    except ValueError:  # from _refuse_password
        raise ValueError(
            f"--key: the private key in {key or cert} is encrypted: give an unencrypted one"
        ) from None
    return context


def _configure_logging(args: argparse.Namespace) -> None:
    default: int = args.log_level
    level = logging.WARNING if args.quiet else max(logging.DEBUG, default - 10 * args.verbose)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _tell(args: argparse.Namespace, message: str) -> None:
    """Say something on stderr, prefixed with the subcommand (stdout is for results)."""
    print(f"siyi {args.command}: {message}", file=sys.stderr, flush=True)


def _headers(args: argparse.Namespace) -> dict[str, str]:
    return {"Authorization": f"Bearer {args.key}"} if args.key else {}


def _describe(exc: BaseException, timeout: float) -> str:
    """One line saying why a connection attempt failed."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        if exc.status == 401:
            return "the server refused the key (HTTP 401): pass the right one with --key"
        return f"the server did not accept a WebSocket (HTTP {exc.status}): is it a siyi server?"
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no connection within {timeout:g} s"
    if isinstance(exc, CertificateError):
        cause = getattr(exc.__cause__, "certificate_error", None)
        reason = getattr(cause, "verify_message", None) or cause or exc
        return (
            f"the server's TLS certificate did not verify ({reason}): "
            "if you trust it, pass its CA with --cafile FILE"
        )
    return str(exc) or type(exc).__name__


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _until_signal(work: Awaitable[T]) -> T | None:
    """Run `work` until it ends or SIGINT/SIGTERM arrives.

    On a signal `work` is cancelled (its ``finally`` blocks clean up) and None is returned.
    Where signal handlers cannot be installed (Windows), Ctrl+C arrives as KeyboardInterrupt.

    Returns:
        What `work` returned, or None if a signal stopped it.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append(sig)
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return None if task.cancelled() else task.result()


@contextlib.asynccontextmanager
async def _one_connection(client: ProtocolClient) -> AsyncIterator[asyncio.Task[None]]:
    """Make one connection attempt (no reconnection); disconnect when the block ends.

    Yields:
        The task serving the connection: it ends when the connection drops.

    Raises:
        OSError, aiohttp.ClientError, TimeoutError: the connection could not be opened.
    """
    runner = asyncio.create_task(client.connect(auto_reconnect=False))
    try:
        connected = asyncio.create_task(client.wait_connected())
        try:
            await asyncio.wait({runner, connected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
        # The connection may already have dropped again: it did open, which is what counts.
        if not (connected.done() and not connected.cancelled()):
            await runner  # raises why it could not connect
            raise TransportError("the connection could not be opened")
        yield runner
    finally:
        await client.disconnect()
        await asyncio.gather(runner, return_exceptions=True)


# serve -------------------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {}
    if args.redis:
        try:
            extra["backplane"] = RedisBackplane(args.redis, prefix=args.redis_prefix)
        except (ImportError, ValueError) as exc:
            _tell(args, f"--redis: {exc}")
            return EXIT_NO_ANSWER
    if args.cert is not None:
        try:
            extra["ssl"] = _server_tls(args.cert, args.key)
        except ValueError as exc:
            _tell(args, str(exc))
            return EXIT_NO_ANSWER
    elif args.key is not None:
        _tell(args, "--key needs --cert (the certificate chain it belongs to)")
        return EXIT_NO_ANSWER
    server = create_game_server(
        args.host,
        args.port,
        heartbeat_interval=args.heartbeat if args.heartbeat > 0 else None,
        **extra,
    )

    async def serve() -> int:
        try:
            await server.start_serving()
        except OSError as exc:
            _tell(args, f"cannot listen on {args.host}:{args.port}: {exc}")
            return EXIT_NO_ANSWER
        base = f"{_url_host(args.host)}:{server.port}"
        shared = f", one node of {args.redis}" if args.redis else ""
        ws, http = ("wss", "https") if server.ssl is not None else ("ws", "http")
        print(
            f"serving the demo game on {ws}://{base} (and POST {http}://{base}/general)"
            f"{shared}; Ctrl+C to stop",
            flush=True,
        )
        await server.start()  # until stop()
        return EXIT_OK

    try:
        code = await _until_signal(serve())
    finally:
        await server.stop()
    if code is None:  # stopped by a signal: the normal end
        print("stopped", flush=True)
        return EXIT_OK
    return code


# call --------------------------------------------------------------------------------------------


async def _call_websocket(args: argparse.Namespace, request: Request) -> Response:
    client = ProtocolClient(
        args.url,
        request_timeout=args.timeout,
        connect_timeout=args.timeout,
        headers=_headers(args),
        ssl=args.tls,
    )
    async with _one_connection(client):
        return await client.send_packet(request)


async def _call_http(args: argparse.Namespace, request: Request) -> Response:
    async with HttpAdapter(
        args.url, request_timeout=args.timeout, headers=_headers(args), ssl=args.tls
    ) as adapter:
        return await adapter.send_packet(request)


async def _call(args: argparse.Namespace) -> int:
    request = Request(command=args.command_name, params=args.params)
    scheme = urlsplit(args.url).scheme.lower()
    if scheme in _WEBSOCKET_SCHEMES:
        send = _call_websocket
    elif scheme in _HTTP_SCHEMES:
        send = _call_http
    else:
        _tell(args, f"unsupported URL {args.url!r}: use ws://, wss://, http:// or https://")
        return EXIT_NO_ANSWER
    try:
        response = await send(args, request)
    except RequestTimeoutError:
        _tell(args, f"no response to {request.command!r} within {args.timeout:g} s")
        return EXIT_NO_ANSWER
    except (OSError, aiohttp.ClientError, TimeoutError) as exc:  # TransportError is an OSError
        _tell(args, f"cannot reach {args.url}: {_describe(exc, args.timeout)}")
        return EXIT_NO_ANSWER
    print(encode(response).decode(), flush=True)
    if response.ok:
        return EXIT_OK
    _tell(args, f"error {response.code}: {response.error}")
    return EXIT_ERROR_RESPONSE


# listen ------------------------------------------------------------------------------------------


def _print_event(event: Event) -> None:
    print(encode(event).decode(), flush=True)


async def _listen(args: argparse.Namespace) -> int:
    if urlsplit(args.url).scheme.lower() not in _WEBSOCKET_SCHEMES:
        _tell(args, f"unsupported URL {args.url!r}: listen needs ws:// or wss://")
        return EXIT_NO_ANSWER
    client = ProtocolClient(
        args.url, connect_timeout=args.timeout, headers=_headers(args), ssl=args.tls
    )
    client.on_event(_print_event)

    async def listen() -> int:
        try:
            async with _one_connection(client) as first:
                _tell(args, f"listening to {args.url}; Ctrl+C to stop")
                # asyncio.wait, not await: a signal must not cancel the connection's task, so
                # that disconnect() is what closes the WebSocket (cleanly, with 1000).
                await asyncio.wait({first})
                _tell(args, "the connection dropped; reconnecting")
                again = asyncio.create_task(client.connect())  # with backoff, until disconnect()
                await asyncio.wait({again})
                again.result()
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            _tell(args, f"cannot reach {args.url}: {_describe(exc, args.timeout)}")
            return EXIT_NO_ANSWER
        return EXIT_OK

    code = await _until_signal(listen())
    return EXIT_OK if code is None else code


# upload ------------------------------------------------------------------------------------------


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


class _ProgressBar:
    """A one-line text progress bar, redrawn in place on `stream` at each whole percent."""

    def __init__(self, stream: IO[str], width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self._drawn = -1

    def __call__(self, sent: int, total: int) -> None:
        percent = sent * 100 // total if total else 100
        if percent == self._drawn:
            return
        self._drawn = percent
        filled = self.width * percent // 100
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {percent:3d}% {_mib(sent)} of {_mib(total)}")
        self.stream.flush()

    def end(self) -> None:
        if self._drawn >= 0:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = -1


async def _send_file(
    args: argparse.Namespace, source: UploadSource, bar: _ProgressBar | None
) -> FileInfo:
    scheme = urlsplit(args.url).scheme.lower()
    options: dict[str, Any] = {"name": args.name, "progress": bar, "upload_id": args.upload_id}
    if scheme in _WEBSOCKET_SCHEMES:
        client = ProtocolClient(
            args.url,
            request_timeout=args.timeout,
            connect_timeout=args.timeout,
            headers=_headers(args),
            ssl=args.tls,
        )
        try:  # the upload has a connection of its own: the packet channel is not opened
            return await client.upload(source, **options)
        finally:
            await client.close()
    async with HttpAdapter(
        args.url, request_timeout=args.timeout, headers=_headers(args), ssl=args.tls
    ) as adapter:
        return await adapter.upload(source, **options)


async def _upload(args: argparse.Namespace) -> int:
    scheme = urlsplit(args.url).scheme.lower()
    if scheme not in _WEBSOCKET_SCHEMES + _HTTP_SCHEMES:
        _tell(args, f"unsupported URL {args.url!r}: use ws://, wss://, http:// or https://")
        return EXIT_NO_ANSWER
    source: UploadSource
    if args.file == "-":
        source = sys.stdin.buffer
    else:
        source = Path(args.file)
        if not source.is_file():
            _tell(args, f"no such file: {args.file}")
            return EXIT_NO_ANSWER
    bar = None if args.no_progress else _ProgressBar(sys.stderr)
    try:
        info = await _send_file(args, source, bar)
    except ApiError as exc:
        if bar is not None:
            bar.end()
        _tell(args, f"the server refused the upload: {exc}")
        return EXIT_ERROR_RESPONSE
    except (OSError, aiohttp.ClientError, TimeoutError) as exc:  # TransportError is an OSError
        if bar is not None:
            bar.end()
        _tell(args, f"cannot upload to {args.url}: {_describe(exc, args.timeout)}")
        return EXIT_NO_ANSWER
    if bar is not None:
        bar.end()
    print(orjson.dumps(info.model_dump()).decode(), flush=True)
    return EXIT_OK


# demo --------------------------------------------------------------------------------------------


async def _demo(args: argparse.Namespace) -> int:
    def narrate(sentence: str) -> None:
        print(sentence, flush=True)

    try:
        await run_demo(narrate=narrate)
    except DemoFailedError as exc:
        _tell(args, f"the demo failed: {exc}")
        return EXIT_ERROR_RESPONSE
    except OSError as exc:
        _tell(args, f"cannot listen on the loopback interface: {exc}")
        return EXIT_NO_ANSWER
    return EXIT_OK
