"""The ``siyi`` argument parser: its subcommands, their options and the options' types."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from typing import Any

import orjson

from .._version import __version__
from ..packets import PROTOCOL_VERSION
from .call import run_call
from .codegen import add_codegen_parser
from .conformance import add_conformance_parser
from .demo import run_demo_command
from .describe import add_describe_parser
from .listen import run_listen
from .serve import run_serve
from .stats import add_stats_parser
from .upload import run_upload

__all__ = ["build_parser"]


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
    serve.add_argument(
        "--metrics",
        nargs="?",
        const="/metrics",
        metavar="PATH",
        help="serve Prometheus metrics at PATH (/metrics when PATH is left out); needs the "
        "prometheus extra",
    )
    serve.add_argument(
        "--metrics-key",
        metavar="KEY",
        help="a scrape of --metrics must send 'Authorization: Bearer KEY' (default: open)",
    )
    serve.add_argument(
        "--admin-key",
        metavar="KEY",
        help="serve the live dashboard at --admin-path; KEY logs in read-only (at least 8 "
        "characters)",
    )
    serve.add_argument(
        "--admin-operator-key",
        metavar="KEY",
        help="the dashboard's operator key, the one that may act (serves the dashboard too)",
    )
    serve.add_argument(
        "--admin-path", default="/admin", metavar="PATH", help="where the dashboard is (/admin)"
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="how stderr's log lines look: text, or one JSON object per line with the "
        "siyi_* keys of the call each is about (text)",
    )
    serve.add_argument(
        "--log-level",
        dest="log_level_option",
        type=_log_level,
        metavar="LEVEL",
        help="debug, info, warning or error (default: info, moved by -v and -q)",
    )
    serve.add_argument(
        "--conformance",
        action="store_true",
        help="serve the reference command set of 'siyi conformance' instead of the demo game, "
        "to two principals (their keys are printed); use a short --heartbeat, e.g. 1",
    )
    serve.add_argument(
        "--conformance-key",
        dest="conformance_keys",
        action="append",
        metavar="KEY",
        help="with --conformance: a principal's key, given twice (default: two random keys)",
    )
    serve.set_defaults(run=run_serve, log_level=logging.INFO)

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
    call.add_argument(
        "--stream",
        action="store_true",
        help="for a streaming command: print each item as one JSON line as it arrives; "
        "Ctrl+C withdraws the request on the server",
    )
    _add_connection_options(call)
    call.set_defaults(run=run_call, log_level=logging.WARNING)

    listen = commands.add_parser(
        "listen",
        help="print each event as one JSON line until Ctrl+C",
        description="Connect over WebSocket and print each event the server sends as one JSON "
        "line, reconnecting after a drop, until Ctrl+C or SIGTERM. Requests the server sends "
        "are answered 404 (unknown command).",
    )
    listen.add_argument("url", metavar="URL", help="ws://HOST:PORT")
    _add_connection_options(listen)
    listen.set_defaults(run=run_listen, log_level=logging.WARNING)

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
    upload.set_defaults(run=run_upload, log_level=logging.WARNING)

    demo = commands.add_parser(
        "demo",
        help="run a server and two clients in one process and narrate them",
        description="Run the demo game server and two clients, alice and bob, on a free "
        "loopback port, and narrate what happens. Needs no external service.",
    )
    demo.set_defaults(run=run_demo_command, log_level=logging.INFO)

    add_conformance_parser(commands)
    add_describe_parser(commands, _add_connection_options)
    add_codegen_parser(commands, _add_connection_options)
    add_stats_parser(commands, _add_connection_options)
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


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _log_level(text: str) -> int:
    """The level of ``--log-level``: a name, in any case."""
    level = _LEVELS.get(text.lower())
    if level is None:
        raise argparse.ArgumentTypeError(f"{text!r}: use one of {', '.join(_LEVELS)}")
    return level


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
