"""Asyncio client for backend services, agents, tests and benchmarks.

    client = RealtimeClient(ws_url=..., sse_url=..., get_token=fetch_token, topics=["*"])
    async with client:
        async for item in client:
            if isinstance(item, ReplayGap):
                reload_state()
            else:
                handle(item.topic, item.data)

Behaviour (the same as ``static/rtstream.js``): WebSocket first, SSE when the
WebSocket cannot be opened or keeps failing; reconnects with capped exponential
backoff and full jitter; every reconnect resumes from the last delivered id
(WebSocket ``since``, SSE ``Last-Event-ID``) and drops ids already delivered, so
each event is delivered exactly once; a ``ping`` keeps the connection under the
idle timeout, and its ``pong`` (which carries the entity's newest id) shows a
push path that stalled: behind it for ``stall_after`` seconds, the client goes
to SSE (or resumes on the WebSocket when it is the only transport) and the connection is renewed before the 2-hour limit; the token
comes from ``get_token`` before every connect; a ``replay_gap`` (cursor older
than the retained history) is delivered in-stream so the caller reloads state.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import httpx
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .logic import (
    FATAL_CODES,
    WILDCARD,
    Cursor,
    SseDecoder,
    StallWatch,
    TransportChooser,
    backoff_delay,
    classify_ws_frame,
    frame_from_sse,
    is_replayed,
    normalize_topics,
    sse_query,
    subscribe_frame,
    with_query,
)

log = logging.getLogger("rtstream_client")


@dataclass(frozen=True, slots=True)
class StreamEvent:
    id: str | None
    topic: str
    data: Any
    source: str | None
    timestamp: str | None
    transport: str  # "ws" | "sse"
    replayed: bool  # delivered by a resume, published while disconnected

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any], *, transport: str, replayed: bool) -> "StreamEvent":
        return cls(
            id=frame.get("id"),
            topic=str(frame.get("topic") or ""),
            data=frame.get("data"),
            source=frame.get("source"),
            timestamp=frame.get("timestamp"),
            transport=transport,
            replayed=replayed,
        )


@dataclass(frozen=True, slots=True)
class ReplayGap:
    """The server no longer holds the events after ``since``: reload state."""

    since: str | None
    message: str
    transport: str


@dataclass(frozen=True, slots=True)
class ClientState:
    status: str = "idle"  # idle | connecting | open | reconnecting | closed
    transport: str | None = None  # ws | sse while open/connecting
    retry_in: float | None = None  # seconds until the next attempt while reconnecting
    attempt: int = 0
    reconnects: int = 0  # successful opens after the first
    replayed: int = 0  # events delivered by resumes
    last_event_id: str | None = None
    error: str | None = None


class ServerRefused(Exception):
    """The server answered the subscription with an error no retry can fix."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class _SessionFailed(Exception):
    """A transport attempt ended before the subscription was confirmed."""


TokenSource = Callable[[], "str | Awaitable[str]"]


class RealtimeClient:
    def __init__(
        self,
        *,
        ws_url: str | None = None,
        sse_url: str | None = None,
        token: str | None = None,
        get_token: TokenSource | None = None,
        topics: Iterable[str] | str = ("*",),
        filters: Mapping[str, Any] | None = None,
        since: str | None = None,
        rewind: int | None = None,
        transport: str = "auto",
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        ws_failures_before_fallback: int = 2,
        ws_retry_after: float = 300.0,
        outage_probe_after: float = 1.0,
        open_timeout: float = 5.0,
        ping_interval: float = 300.0,  # well under API Gateway's 10-minute idle timeout
        pong_timeout: float = 15.0,
        stall_after: float = 10.0,  # behind the pong's cursor this long (and stall_pongs pongs): stalled
        stall_pongs: int = 2,
        renew_after: float = 7200.0 - 300.0,  # reconnect before the 2-hour maximum
        sse_read_timeout: float = 45.0,  # the SSE server sends a heartbeat every 15 s
        on_state: Callable[[ClientState], Any] | None = None,
        rand: Callable[[], float] = random.random,
    ):
        if transport not in ("auto", "ws", "sse"):
            raise ValueError(f"transport must be auto, ws or sse, got {transport!r}")
        if transport == "ws" and not ws_url:
            raise ValueError("transport='ws' needs ws_url")
        if transport == "sse" and not sse_url:
            raise ValueError("transport='sse' needs sse_url")
        if not ws_url and not sse_url:
            raise ValueError("give ws_url, sse_url or both")
        if token is None and get_token is None:
            raise ValueError("give token or get_token")
        self.ws_url = ws_url
        self.sse_url = sse_url
        self._static_token = token
        self._get_token = get_token
        self.topics = normalize_topics(topics)
        self.filters = dict(filters or {})
        self.cursor = Cursor(since)
        self.rewind = rewind
        mode = transport
        if mode == "auto" and not ws_url:
            mode = "sse"
        elif mode == "auto" and not sse_url:
            mode = "ws"
        self.chooser = TransportChooser(mode, ws_failures_before_fallback, ws_retry_after, outage_probe_after)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.stall_after = stall_after
        self.stall_pongs = stall_pongs
        self.renew_after = renew_after
        self.sse_read_timeout = sse_read_timeout
        self._on_state = on_state
        self._rand = rand
        self.state = ClientState()
        self._queue: asyncio.Queue[StreamEvent | ReplayGap | BaseException | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._state_changed = asyncio.Event()
        self._opened_once = False
        self._fatal: BaseException | None = None

    # ---- lifecycle ----------------------------------------------------------

    async def start(self) -> "RealtimeClient":
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="rtstream-client")
        return self

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._set_state(status="closed", transport=None, retry_in=None)
        self._queue.put_nowait(None)

    async def __aenter__(self) -> "RealtimeClient":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __aiter__(self) -> "RealtimeClient":
        return self

    async def __anext__(self) -> StreamEvent | ReplayGap:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # every later reader ends too
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    async def next(self, timeout: float) -> StreamEvent | ReplayGap:
        """The next event or gap, or TimeoutError (handy in tests and scripts)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def wait_for(self, predicate: Callable[[ClientState], bool], timeout: float) -> ClientState:
        """Wait until the state satisfies ``predicate`` (e.g. ``lambda s: s.status == "open"``)."""
        async with asyncio.timeout(timeout):
            while not predicate(self.state):
                self._state_changed.clear()
                await self._state_changed.wait()
        return self.state

    @property
    def last_event_id(self) -> str | None:
        return self.cursor.last_id

    # ---- internals ----------------------------------------------------------

    def _set_state(self, **changes: Any) -> None:
        self.state = replace(self.state, last_event_id=self.cursor.last_id, **changes)
        self._state_changed.set()
        if self._on_state is not None:
            try:
                self._on_state(self.state)
            except Exception:  # a broken callback must not kill the connection loop
                log.exception("on_state callback failed")

    async def _token(self) -> str:
        if self._get_token is None:
            return self._static_token or ""
        value = self._get_token()
        if inspect.isawaitable(value):
            value = await value
        return str(value)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        try:
            while True:
                transport = self.chooser.choose()
                if self.state.status != "reconnecting":
                    self._set_state(status="connecting", transport=transport, retry_in=None, attempt=attempt)
                else:
                    self._set_state(transport=transport, retry_in=None)
                opened = False
                renew = False
                error: str | None = None
                try:
                    token = await self._token()
                    if transport == "ws":
                        renew = await self._ws_session(token)
                    else:
                        renew = await self._sse_session(token)
                    opened = True
                except ServerRefused:
                    raise
                except _SessionFailed as exc:
                    error = str(exc)
                except _OpenedThenLost as exc:
                    opened, error = True, str(exc.__cause__ or exc)
                except _Stalled as exc:
                    # open but silent: SSE (auto) or a resume on the WebSocket, at once
                    self.chooser.stalled(loop.time())
                    log.warning("%s", exc)
                    self._set_state(status="reconnecting", retry_in=0.0, attempt=0, error=str(exc))
                    attempt = 0
                    continue
                except (OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed, httpx.HTTPError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                if opened:
                    attempt = 0
                    if renew:
                        self._set_state(status="reconnecting", retry_in=0.0, attempt=0, error=None)
                        continue
                else:
                    self.chooser.failed(transport, loop.time())
                delay = backoff_delay(attempt, base=self.backoff_base, cap=self.backoff_cap, rand=self._rand)
                attempt += 1
                self._set_state(status="reconnecting", retry_in=round(delay, 3), attempt=attempt, error=error)
                await asyncio.sleep(delay)
        except ServerRefused as exc:
            self._fatal = exc
            self._set_state(status="closed", transport=None, error=str(exc))
            self._queue.put_nowait(exc)

    def _opened(self, transport: str) -> None:
        self.chooser.opened(transport, asyncio.get_running_loop().time())
        reconnects = self.state.reconnects + (1 if self._opened_once else 0)
        self._opened_once = True
        self._set_state(status="open", transport=transport, retry_in=None, attempt=0, reconnects=reconnects, error=None)

    def _deliver(self, frame: Mapping[str, Any], *, transport: str, resumed: bool, started_ms: int, since: str | None) -> None:
        kind = frame.get("type")
        if kind == "cursor":
            # where this stream starts: later resumes replay from here, not from "now"
            self.cursor.advance(frame.get("id"))
            self._set_state()
        elif kind == "event":
            # a fresh start with rewind gets the start point first, then older events it has not seen
            rewinding = since is None and bool(self.rewind)
            if not self.cursor.accept(frame.get("id"), older=rewinding):
                return
            replayed = is_replayed(frame.get("id"), resumed=resumed, session_started_ms=started_ms)
            self._queue.put_nowait(StreamEvent.from_frame(frame, transport=transport, replayed=replayed))
            self._set_state(replayed=self.state.replayed + (1 if replayed else 0))
        elif kind == "error":
            code = str(frame.get("code") or "")
            message = str(frame.get("message") or "")
            if code == "replay_gap":
                self._queue.put_nowait(ReplayGap(since=since, message=message, transport=transport))
            else:
                log.warning("server error %s: %s", code, message)

    async def _ws_session(self, token: str) -> bool:
        """One WebSocket connection. Returns True when it ended to renew before the
        connection age limit; raises _SessionFailed if it never got subscribed and
        _OpenedThenLost if it was lost afterwards."""
        assert self.ws_url
        loop = asyncio.get_running_loop()
        since = self.cursor.last_id
        resumed = since is not None
        try:
            ws = await websockets.connect(
                with_query(self.ws_url, token=token),
                open_timeout=self.open_timeout,
                ping_interval=None,  # the protocol's own ping frame keeps API Gateway's idle timer reset
                close_timeout=2,
                max_size=2**20,
            )
        except InvalidStatus as exc:
            raise _SessionFailed(f"websocket handshake refused: HTTP {exc.response.status_code}") from exc
        except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
            raise _SessionFailed(f"websocket unreachable: {type(exc).__name__}: {exc}") from exc
        try:
            started_ms = int(time.time() * 1000)
            first = subscribe_frame(self.topics, self.filters, since, None if since else self.rewind)
            await ws.send(json.dumps(first))
            # only a subscription that sees every id of the entity can tell it is behind the pong's cursor
            watch = StallWatch(self.stall_after, self.stall_pongs) if first["topic"] == WILDCARD and "filters" not in first else None
            if watch is not None:
                watch.caught_up(since)
            subscribed = False
            now = loop.time()
            subscribe_deadline = now + self.open_timeout
            renew_at = now + self.renew_after
            next_ping = now + self.ping_interval
            pong_deadline: float | None = None
            while True:
                now = loop.time()
                deadline = min(renew_at, next_ping, pong_deadline or float("inf"), subscribe_deadline if not subscribed else float("inf"))
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=max(0.0, deadline - now))
                except asyncio.TimeoutError:
                    now = loop.time()
                    if not subscribed and now >= subscribe_deadline:
                        raise _SessionFailed("no subscription confirmation")
                    if now >= renew_at:
                        return True
                    if pong_deadline is not None and now >= pong_deadline:
                        raise _OpenedThenLost("no pong: connection is dead")
                    if now >= next_ping:
                        await ws.send('{"type":"ping"}')
                        pong_deadline = now + self.pong_timeout
                        next_ping = now + self.ping_interval
                    continue
                except ConnectionClosed as exc:
                    if not subscribed:
                        raise _SessionFailed(f"closed before subscription: {exc}") from exc
                    raise _OpenedThenLost(str(exc)) from exc
                try:
                    frame = json.loads(raw)
                except ValueError:
                    log.warning("ignoring a non-JSON frame")
                    continue
                kind = classify_ws_frame(frame, subscribed)
                if kind == "confirm":
                    subscribed = True
                    if frame.get("cursor") and since is None:
                        self._deliver({"type": "cursor", "id": frame["cursor"]}, transport="ws", resumed=resumed, started_ms=started_ms, since=since)
                        if watch is not None:
                            watch.caught_up(frame["cursor"])
                    self._opened("ws")
                elif kind == "pong":
                    pong_deadline = None
                    if watch is not None:
                        verdict = watch.pong(frame.get("cursor"), loop.time())
                        if verdict == "ok":
                            self.chooser.delivered()
                        elif verdict == "stalled":
                            raise _Stalled(f"websocket stalled: no events past {watch.seen or 'the start'} while the server has {frame.get('cursor')}")
                elif kind == "fatal":
                    raise ServerRefused(str(frame.get("code")), str(frame.get("message") or ""))
                elif kind == "event":
                    if not subscribed:
                        # a server that replays before confirming still confirms by delivering
                        subscribed = True
                        self._opened("ws")
                    if watch is not None:
                        watch.caught_up(frame.get("id"))
                    self.chooser.delivered()
                    self._deliver(frame, transport="ws", resumed=resumed, started_ms=started_ms, since=since)
                elif kind in ("gap", "error"):
                    self._deliver(frame, transport="ws", resumed=resumed, started_ms=started_ms, since=since)
        finally:
            await ws.close()

    async def _sse_session(self, token: str) -> bool:
        """One SSE stream. Returns True when it ended on purpose (renewal, or a
        WebSocket probe succeeded), like :meth:`_ws_session`."""
        assert self.sse_url
        since = self.cursor.last_id
        resumed = since is not None
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if since:
            headers["Last-Event-ID"] = since
        timeout = httpx.Timeout(connect=self.open_timeout, read=self.sse_read_timeout, write=self.open_timeout, pool=self.open_timeout)
        started_ms = int(time.time() * 1000)
        async with httpx.AsyncClient(timeout=timeout) as http:
            try:
                response_cm = http.stream("GET", self.sse_url, params=sse_query(self.topics, self.filters, None if since else self.rewind), headers=headers)
                response = await response_cm.__aenter__()
            except httpx.HTTPError as exc:
                raise _SessionFailed(f"sse unreachable: {type(exc).__name__}: {exc}") from exc
            try:
                if response.status_code != 200:
                    body = (await response.aread())[:300].decode("utf-8", "replace")
                    code = ""
                    try:
                        code = str(json.loads(body).get("code") or "")
                    except (ValueError, AttributeError):
                        pass
                    if response.status_code in (400, 403) and code in FATAL_CODES:
                        raise ServerRefused(code, body)
                    raise _SessionFailed(f"sse refused: HTTP {response.status_code}")
                self._opened("sse")
                reading = asyncio.create_task(self._sse_read(response, resumed=resumed, started_ms=started_ms, since=since))
                probing = asyncio.create_task(self._probe_ws(token)) if self.ws_url and self.chooser.mode == "auto" else None
                try:
                    done, _ = await asyncio.wait({t for t in (reading, probing) if t}, return_when=asyncio.FIRST_COMPLETED)
                    if probing is not None and probing in done:
                        return probing.result()  # the WebSocket is back: switch, resuming from the cursor
                    return reading.result()
                finally:
                    for task in (reading, probing):
                        if task is not None and not task.done():
                            task.cancel()
                            await asyncio.gather(task, return_exceptions=True)
            finally:
                await response_cm.__aexit__(None, None, None)

    async def _sse_read(self, response: httpx.Response, *, resumed: bool, started_ms: int, since: str | None) -> bool:
        decoder = SseDecoder()
        try:
            async with asyncio.timeout(self.renew_after):
                async for line in response.aiter_lines():
                    message = decoder.feed(line.rstrip("\r\n"))
                    if message is None:
                        continue
                    frame = frame_from_sse(message)
                    if frame is not None:
                        self._deliver(frame, transport="sse", resumed=resumed, started_ms=started_ms, since=since)
        except TimeoutError:
            return True
        except httpx.HTTPError as exc:
            raise _OpenedThenLost(f"{type(exc).__name__}: {exc}") from exc
        raise _OpenedThenLost("sse stream ended")

    async def _probe_ws(self, token: str) -> bool:
        """While on SSE: try a WebSocket handshake when the chooser says so; True
        once one succeeds (the caller then switches). Never returns False."""
        loop = asyncio.get_running_loop()
        assert self.ws_url
        while True:
            probe_at = self.chooser.probe_at
            if probe_at is None:
                await asyncio.sleep(self.chooser.ws_retry_after)
                continue
            await asyncio.sleep(max(0.0, probe_at - loop.time()))
            try:
                ws = await websockets.connect(with_query(self.ws_url, token=token), open_timeout=self.open_timeout, ping_interval=None, close_timeout=1)
            except (OSError, asyncio.TimeoutError, InvalidHandshake):
                self.chooser.probed(False, loop.time())
                continue
            await ws.close()
            self.chooser.probed(True, loop.time())
            return True


class _OpenedThenLost(Exception):
    """An open, subscribed connection was lost: reconnect, not a fallback reason."""


class _Stalled(Exception):
    """An open WebSocket stayed behind the newest id its pongs report."""


async def collect(client: RealtimeClient, count: int, timeout: float) -> list[StreamEvent | ReplayGap]:
    """The next ``count`` items, or TimeoutError with what arrived in the message."""
    items: list[StreamEvent | ReplayGap] = []
    try:
        async with asyncio.timeout(timeout):
            while len(items) < count:
                items.append(await client.__anext__())
    except TimeoutError as exc:
        raise TimeoutError(f"got {len(items)} of {count} items: {items!r}") from exc
    return items
