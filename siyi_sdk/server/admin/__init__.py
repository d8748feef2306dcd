"""The live dashboard: ``ProtocolServer(admin_key=..., admin_operator_key=...)``.

A page served by the server itself (static files in this package, no Node toolchain), fed
once a second over its own WebSocket: each node's connections, sessions, rates and bytes,
each command's rate, errors and latency with 15 minutes of charts, a searchable sessions
table, every node of a Redis cluster, a live trace of one session, and operator actions.
The same figures are JSON at ``{admin_path}/api/stats`` (``siyi stats URL --key K``).

The parts: `Dashboard` (routes and the ticker), `AdminAuth` (keys, roles, cookie, CSRF,
throttling), `CallRecorder` (what the dispatcher counts per request while it is on),
`Figures` (computed once a tick), `Feed` (the viewers' WebSockets, deltas), `Cluster`
(figures shared over Redis) and `Trace`.
"""

from .auth import OPERATOR, READ, AdminAuth, Caller, Role
from .cluster import Cluster
from .dashboard import TICK, Dashboard
from .feed import Feed, merge_patch
from .figures import Figures
from .recorder import CallRecorder, CommandFigures
from .trace import Trace

__all__ = [
    "OPERATOR",
    "READ",
    "TICK",
    "AdminAuth",
    "CallRecorder",
    "Caller",
    "Cluster",
    "CommandFigures",
    "Dashboard",
    "Feed",
    "Figures",
    "Role",
    "Trace",
    "merge_patch",
]
