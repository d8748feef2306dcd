"""More cases of the conformance suite: rules of PROTOCOL.md §2–§10 that `cases` does not check.

They use the same wire tools (`probe`), helpers (`cases`) and reference command set, and run
in section order with the others (the registry keeps `CASES` sorted by section).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp

from .cases import (
    NOTE,
    SLOW,
    closes_alone,
    expect_error,
    expect_http,
    expect_ok,
    is_int,
    notes,
    opened,
    poll,
    refused_upgrade,
    session_of,
)
from .probe import CaseFailedError, CaseSkippedError, Socket, Target, check, request_packet, short
from .registry import case

__all__ = ["items_over"]

QUESTION = "conformance.question"
"""The command of the Requests the suite has ``ask_me`` send it."""

COUNT_MAX = 1_000_000
"""The largest ``n`` the suite asks of ``count``."""


def items_over(limit: int) -> int:
    """How many items ``count`` must answer for the array ``[0,1,...]`` to be over `limit` bytes.

    The array is counted in its most compact JSON, so the Response that carries it is over the
    limit however the server encodes it.
    """
    size, n, digits, band_end = 1, 0, 1, 10  # "[]" less the comma the first item does not need
    while True:
        per_item = digits + 1
        need = (limit - size) // per_item + 1
        if need <= band_end - n:
            return n + need
        size += (band_end - n) * per_item
        n, digits, band_end = band_end, digits + 1, band_end * 10


async def upgrade_status(t: Target, query: str, **kwargs: Any) -> int:
    """The HTTP status that refused a WebSocket upgrade with `query` in its URL."""
    try:
        return await refused_upgrade(t, path=query, **kwargs)
    except CaseFailedError:
        raise CaseFailedError(f"a WebSocket with {query} in its URL was accepted") from None


async def question(sock: Socket) -> dict[str, Any]:
    """The next Request the server sends down `sock` with the command `QUESTION`."""
    return await sock.expect(
        lambda p: p.get("type") == "request" and p.get("command") == QUESTION,
        "the server's Request (ask_me)",
    )


# §2 Packets -----------------------------------------------------------------------------------


@case("s2.response_without_code_read", "a peer's Response without code reads as 0 (ok), 1 (error)")
async def response_without_code_read(t: Target) -> None:
    async with opened(t) as sock:
        for status, expected in (("ok", 0), ("error", 1)):
            asked = await sock.request("ask_me", {"command": QUESTION, "params": {}})
            reply = {"id": (await question(sock)).get("id"), "type": "response", "status": status}
            reply |= {"data": 7} if status == "ok" else {"error": "answered without a code"}
            await sock.send(reply)  # the seed's older form: no "code"
            data = expect_ok(await sock.response(asked), "ask_me")
            check(
                isinstance(data, dict) and data.get("status") == status,
                f"ask_me read the {status} answer as {short(data)}",
            )
            code = data.get("code")
            check(
                is_int(code) and code == expected,
                f"a {status} Response without code was read as code {code!r}, not {expected}",
            )


# §4 Bad input ---------------------------------------------------------------------------------


@case("s4.invalid_utf8_closes_1007", "a text frame that is not UTF-8 closes that socket with 1007")
async def invalid_utf8_closes_1007(t: Target) -> None:
    async with opened(t) as sock, opened(t) as other:
        frame = json.dumps(request_packet("echo", {"text": "@@"})).encode()
        await sock.ws.send_frame(frame.replace(b"@@", b"\xff\xfe"), aiohttp.WSMsgType.TEXT)
        await closes_alone(sock, other, 1007, "a text frame of invalid UTF-8")


@case("s4.in_flight_bound", "past max_in_flight requests running on a socket, more get 429 at once")
async def in_flight_bound(t: Target) -> None:
    bound = t.max_in_flight
    if bound <= 0:
        raise CaseSkippedError("the server's bound is unknown (--max-in-flight 0)")
    # `bound` requests that wait for the end of a `slow` run of `tag`; a `slow` of 0 s sent on
    # another connection ends them all together (a cancel could come before a run starts).
    tag = t.tag("in-flight")
    params = {"tag": tag, "until": "ended", "wait": SLOW}
    ids = [str(uuid.uuid4()) for _ in range(bound)]
    async with opened(t) as sock:
        try:
            for request_id in ids:
                await sock.request("was_cancelled", params, id=request_id)
            # Frames are read in order: this one is read while `bound` requests are running.
            extra = await sock.call("echo", {"over": bound})
            expect_error(extra, 429, f"request {bound + 1} while {bound} were in flight")
            mine = set(ids)
            early = [p for p in sock.backlog if p.get("type") == "response" and p.get("id") in mine]
            check(not early, f"a request within the bound was answered at once: {short(early)}")
        finally:
            expect_ok(await t.call("slow", {"seconds": 0, "tag": tag}), "slow of 0 s")
        waiting = set(ids)
        while waiting:
            ended = await sock.expect(
                lambda p: p.get("type") == "response" and p.get("id") in waiting,
                f"the answers of the {len(waiting)} requests in flight",
            )
            expect_ok(ended, "a request within the bound")
            waiting.discard(str(ended.get("id")))
        expect_ok(await sock.call("echo", {}), "echo once the requests in flight ended")


# §7 Authentication and sessions ---------------------------------------------------------------


@case("s7.key_in_query_refused", "a key in the URL's query string is refused (§7)", needs_key=True)
async def key_in_query_refused(t: Target) -> None:
    key = t.key
    assert key is not None  # needs_key
    for name in ("key", "access_token"):
        query = f"?{name}={key}"
        status = await upgrade_status(t, query, key=None)
        check(status == 401, f"a WebSocket with only {query}: HTTP {status}, not 401")
        answer = await t.post(request_packet("echo", {}), key=None, path="/general" + query)
        what = f"POST /general{query} without a header"
        expect_error(expect_http(answer, 401, what), 401, what)
        check(answer.session is None, f"{what} opened a session")
    # The header alone would do: the key in the URL is refused all the same (URLs get logged).
    status = await upgrade_status(t, f"?key={key}")
    check(400 <= status < 500, f"a WebSocket with ?key= and the header: HTTP {status}")
    answer = await t.post(request_packet("echo", {}), path=f"/general?key={key}")
    check(400 <= answer.status < 500, f"POST /general?key= with the header: HTTP {answer.status}")
    check(answer.session is None, "POST /general?key= with the header opened a session")


@case("s7.clean_close_ends_session", "a close with 1000 ends the session: its key resumes nothing")
async def clean_close_ends_session(t: Target) -> None:
    sock = await t.socket()
    session = sock.session
    await sock.close()
    deadline = time.monotonic() + t.timeout
    pause = 0.01
    while True:
        async with opened(t, session=session) as back:
            resumed = back.greeting.get("resumed")
        if resumed is False:
            return
        # The server may still be ending it after the close handshake: this socket's own
        # 1000 ends it again, and the next try comes a little later.
        check(
            time.monotonic() + pause < deadline,
            f"a session closed with 1000 was resumed by its key (resumed {resumed!r})",
        )
        await asyncio.sleep(pause)
        pause *= 2


@case("s7.events_after_unknown_id", "after=<an id the buffer does not hold> acknowledges nothing")
async def events_after_unknown_id(t: Target) -> None:
    session = await session_of(t)
    nonce = uuid.uuid4().hex
    for n in range(2):
        data = {"nonce": nonce, "n": n}
        expect_ok(
            await t.call("notify_me", {"name": NOTE, "data": data}, session=session), "notify_me"
        )
    for attempt in ("first", "second"):
        kept = notes(await poll(t, session, after=str(uuid.uuid4())), nonce)
        check(len(kept) == 2, f"the {attempt} poll after an unknown id got {len(kept)} of 2")
    check(len(notes(await poll(t, session), nonce)) == 2, "a poll without after lost events")


# §9 Deadlines ---------------------------------------------------------------------------------


@case("s9.budget_passed_on", "a handler's own Request carries what is left of its meta.timeout")
async def budget_passed_on(t: Target) -> None:
    budget = max(t.timeout, 1.0)
    async with opened(t) as sock:
        asked = await sock.request(
            "ask_me",
            {"command": QUESTION, "params": {}, "timeout": 10 * budget},
            meta={"timeout": budget},
        )
        asking = await question(sock)
        meta = asking.get("meta")
        passed = meta.get("timeout") if isinstance(meta, dict) else None
        check(
            isinstance(passed, int | float) and not isinstance(passed, bool),
            f"the server's Request carries no meta.timeout: {short(asking)}",
        )
        assert isinstance(passed, int | float)
        check(0 < passed <= budget, f"its meta.timeout is {passed!r}, not within (0, {budget:g}]")
        reply = {"id": asking.get("id"), "type": "response", "status": "ok", "code": 0}
        await sock.send(reply | {"data": None})
        expect_ok(await sock.response(asked), "ask_me")


# §10 Cancellation and streams -----------------------------------------------------------------


@case("s10.cancel_answered_ignored", "a cancel for an id already answered leaves its answer kept")
async def cancel_answered_ignored(t: Target) -> None:
    tag = t.tag("cancel-answered")
    packet_id = str(uuid.uuid4())
    async with opened(t) as sock:
        first = expect_ok(await sock.call("bump", {"tag": tag}, id=packet_id), "bump")
        await sock.cancel(packet_id)
        repeat = await sock.call("bump", {"tag": tag}, id=packet_id)
        expect_ok(repeat, "a repeat of the id after a cancel that came too late")
        check(
            not any(p.get("type") == "response" and p.get("id") != packet_id for p in sock.backlog),
            f"the cancel was answered: {short(sock.backlog)}",
        )
    check(isinstance(first, dict) and first.get("tag") == tag, f"bump answered {short(first)}")


@case("s10.stream_array_too_large", "a stream asked without a window, over the limit, gets 413")
async def stream_array_too_large(t: Target) -> None:
    n = items_over(t.max_message_size)
    if n > COUNT_MAX:
        raise CaseSkippedError(f"--max-message-size {t.max_message_size} needs count n={n}")
    async with opened(t) as sock:
        expect_error(await sock.call("count", {"n": n}), 413, f"count of {n} items, no window")
        expect_ok(await sock.call("echo", {}), "echo after the 413")
