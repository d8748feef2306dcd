"""``siyi demo``: a server and two clients in one process, narrated on stdout."""

from __future__ import annotations

import argparse

from ..demo import DemoFailedError, run_demo
from .common import EXIT_ERROR_RESPONSE, EXIT_NO_ANSWER, EXIT_OK, emit, tell

__all__ = ["run_demo_command"]


async def run_demo_command(args: argparse.Namespace) -> int:
    """Run ``siyi demo``: narrate the demo game's server and its two clients.

    Args:
        args: the parsed arguments of the subcommand.

    Returns:
        The exit code: `EXIT_OK`, `EXIT_ERROR_RESPONSE` if a step failed, `EXIT_NO_ANSWER` if
        no loopback port could be had.
    """
    try:
        await run_demo(narrate=emit)
    except DemoFailedError as exc:
        tell(args, f"the demo failed: {exc}")
        return EXIT_ERROR_RESPONSE
    except OSError as exc:
        tell(args, f"cannot listen on the loopback interface: {exc}")
        return EXIT_NO_ANSWER
    return EXIT_OK
