"""RedisBackplane: several server processes serve as one, coordinated through one Redis.

Give every process (node) a ``RedisBackplane`` on the same Redis URL and prefix, put them
behind a load balancer, and a client may reach any of them (see `siyi_sdk.server.backplane`).

What lives in Redis (every key under ``<prefix>:``; every key expires):

========================  ==================================================================
``s:<session>``           hash: the session (principal, attached node, dropped, poller)
``b:<session>``           list: its replay buffer, oldest first (same life as the session)
``away``                  set: sessions that take packets and have no WebSocket attached
``c:<identity><id>``      the at-most-once entry of a request: running on a node, or its
                          encoded Response (``response_cache_ttl``)
``r:<request id>``        the node waiting for the answer to a request it sent
``n:<node>``              a node's liveness (refreshed every ``node_ttl / 3`` seconds)
``seq``                   the broadcast counter (one integer)
========================  ==================================================================

Nodes talk over two pub/sub channels each: ``<prefix>:all`` (broadcasts, session ends) and
``<prefix>:node:<node>`` (a packet for a client attached there, an answer for a request sent
from there, a takeover, a wake-up for a long poll). A message is one letter, a JSON header
line and, for packets, the encoded packet as it goes on the wire: encoded once, never
re-encoded on the way.

Every change that must not race (route a packet or buffer it, attach, detach, buffer a
broadcast for every session that is away) is one Lua script, so Redis runs it atomically.
A broadcast is numbered; a node that attaches a session learns the number it attached at,
and delivers only broadcasts numbered after it: the ones before are in the session's buffer.
A node that lets a session go learns the number it let go at, waits until its subscription
has read every broadcast up to it (the release publishes a fence on the node's channel,
which arrives after them), and buffers those it still had for the session. So a client that
moves between nodes gets each broadcast exactly once, in order.

When Redis is down the server keeps serving its own clients (requests, local broadcasts,
its sessions' own state), logs the outage once, and reconnects with backoff (tenacity);
what must cross processes meanwhile raises `BackplaneUnavailableError`.

The package, one job per module:

- `node`: `RedisNode`, one node's link to Redis (calls, outages, the subscription);
- `sessions`: `RedisSessions`, the sessions and their buffers in Redis (attach, detach, route);
- `backplane`: `RedisBackplane`, requests and broadcasts across nodes, and their messages;
- `connection`: `SharedConnection`, a session handle whose buffer is in Redis;
- `cache`: `RedisResponseCache`, at most once across nodes;
- `scripts`: the Lua scripts; `messages`: how entries and node messages are laid out.

Only `RedisBackplane` (and the two names it builds) are public; the redis package itself is
imported when a `RedisBackplane` is made.
"""

from __future__ import annotations

from .backplane import RedisBackplane
from .cache import RedisResponseCache
from .connection import SharedConnection

__all__ = ["RedisBackplane", "RedisResponseCache", "SharedConnection"]
