"""A real redis-server for the scale-out tests, started on a free loopback port.

Nothing is mocked: the tests talk to Redis 6.2+ as it runs in production (`.ci/run`
installs Debian's package when the machine lacks the binary).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from .conftest import free_port


class RedisServer:
    """One redis-server process: no persistence, loopback only, its own directory."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: the scale-out tests need it "
                "(apt-get install redis-server; .ci/run does this)"
            )
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="siyi-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (on the same port as before, after a `stop`) and wait until it answers."""
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)  # a process starting up: nothing to wait on but the port
        raise RuntimeError("redis-server did not answer within 10 s")

    def stop(self) -> None:
        """Kill it at once (as a crash would)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def close(self) -> None:
        """Stop it and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
