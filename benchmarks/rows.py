"""The rows of the benchmark table: which client talks to which server, over what."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["ROWS", "Row"]


@dataclass(frozen=True)
class Row:
    """One row of the table.

    Attributes:
        name: the key used on command lines.
        label: how the table names it.
        stack: the server it runs against (`benchmarks.servers` ``--stack``).
        transport: ``"ws"`` or ``"http"``: which request/response targets it counts for.
        holds: True when the row also runs the connection figures (broadcast, idle).
        needs: a module that must be importable for the row to run.
    """

    name: str
    label: str
    stack: Literal["raw", "socketio", "siyi", "siyi_admin"]
    transport: Literal["ws", "http"]
    holds: bool = False
    needs: str | None = None


ROWS: Final[tuple[Row, ...]] = (
    Row("raw_ws", "raw aiohttp WebSocket (orjson, ids by hand)", "raw", "ws", holds=True),
    Row(
        "socketio",
        "python-socketio AsyncServer + AsyncClient.call",
        "socketio",
        "ws",
        holds=True,
        needs="socketio",
    ),
    Row(
        "siyi_client",
        "siyi ProtocolServer + ProtocolClient.send_request",
        "siyi",
        "ws",
        holds=True,
    ),
    Row(
        "siyi_admin",
        "siyi ProtocolServer, dashboard on, one viewer + ProtocolClient.send_request",
        "siyi_admin",
        "ws",
    ),
    Row(
        "siyi_server",
        "siyi ProtocolServer + the raw client above (the server alone)",
        "siyi",
        "ws",
    ),
    Row("siyi_api_ws", "siyi Api over WebSocketAdapter", "siyi", "ws"),
    Row("siyi_api_http", "siyi Api over HttpAdapter (POST /general)", "siyi", "http"),
    Row("raw_http", "raw aiohttp POST (orjson)", "raw", "http"),
)
"""Every row, in table order."""

ROW_BY_NAME: Final = {row.name: row for row in ROWS}
