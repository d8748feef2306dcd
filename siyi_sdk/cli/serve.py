"""``siyi serve``: the demo game server until Ctrl+C, with its TLS, Redis and metrics options."""

from __future__ import annotations

import argparse
import ssl
from typing import Any

from ..conformance.reference import create_reference_server
from ..demo import create_game_server
from ..server.redis_backplane import RedisBackplane
from .common import EXIT_NO_ANSWER, EXIT_OK, emit, tell, until_signal, url_host
from .conformance import announce_reference, reference_keys

__all__ = ["run_serve", "server_tls"]


def _refuse_password() -> str:
    raise ValueError("encrypted private key")


def server_tls(cert: str, key: str | None) -> ssl.SSLContext:
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


async def run_serve(args: argparse.Namespace) -> int:
    """Run ``siyi serve``: serve the demo game until SIGINT/SIGTERM.

    Args:
        args: the parsed arguments of the subcommand.

    Returns:
        The exit code: `EXIT_OK` once stopped, `EXIT_NO_ANSWER` for a bad option or a port
        it cannot listen on.
    """
    extra: dict[str, Any] = {}
    if args.redis:
        try:
            extra["backplane"] = RedisBackplane(args.redis, prefix=args.redis_prefix)
        except (ImportError, ValueError) as exc:
            tell(args, f"--redis: {exc}")
            return EXIT_NO_ANSWER
    if args.cert is not None:
        try:
            extra["ssl"] = server_tls(args.cert, args.key)
        except ValueError as exc:
            tell(args, str(exc))
            return EXIT_NO_ANSWER
    elif args.key is not None:
        tell(args, "--key needs --cert (the certificate chain it belongs to)")
        return EXIT_NO_ANSWER
    if args.metrics_key is not None and args.metrics is None:
        tell(args, "--metrics-key needs --metrics (the path it guards)")
        return EXIT_NO_ANSWER
    if args.metrics is not None:
        extra["metrics_path"] = args.metrics
        extra["metrics_key"] = args.metrics_key
    if args.admin_key is not None or args.admin_operator_key is not None:
        extra["admin_path"] = args.admin_path
        extra["admin_key"] = args.admin_key
        extra["admin_operator_key"] = args.admin_operator_key
    if args.conformance:
        try:
            extra["keys"] = reference_keys(args.conformance_keys)
        except ValueError as exc:
            tell(args, f"--conformance-key: {exc}")
            return EXIT_NO_ANSWER
    elif args.conformance_keys:
        tell(args, "--conformance-key needs --conformance")
        return EXIT_NO_ANSWER
    try:
        server = (create_reference_server if args.conformance else create_game_server)(
            args.host,
            args.port,
            heartbeat_interval=args.heartbeat if args.heartbeat > 0 else None,
            **extra,
        )
    except ImportError as exc:  # --metrics without the prometheus extra
        tell(args, f"--metrics: {exc}")
        return EXIT_NO_ANSWER
    except ValueError as exc:  # a dashboard key too short, or both the same
        tell(args, f"--admin-key: {exc}")
        return EXIT_NO_ANSWER

    async def serve() -> int:
        try:
            await server.start_serving()
        except OSError as exc:
            tell(args, f"cannot listen on {args.host}:{args.port}: {exc}")
            return EXIT_NO_ANSWER
        base = f"{url_host(args.host)}:{server.port}"
        shared = f", one node of {args.redis}" if args.redis else ""
        ws, http = ("wss", "https") if server.ssl is not None else ("ws", "http")
        emit(
            f"serving {'the conformance reference set' if args.conformance else 'the demo game'}"
            f" on {ws}://{base} (and POST {http}://{base}/general)"
            f"{shared}; Ctrl+C to stop"
        )
        if args.metrics is not None:
            emit(f"metrics for Prometheus at {http}://{base}{args.metrics}")
        if server.dashboard is not None:
            emit(f"the dashboard at {http}://{base}{server.dashboard.path}/")
        if args.conformance:
            announce_reference(f"{http}://{base}", extra["keys"])
        await server.start()  # until stop()
        return EXIT_OK

    try:
        code = await until_signal(serve())
    finally:
        await server.stop()
    if code is None:  # stopped by a signal: the normal end
        emit("stopped")
        return EXIT_OK
    return code
