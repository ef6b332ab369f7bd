"""Sessions, one per peer connection (a browser page, a WHIP publisher or a WHEP viewer), and the
registry that limits them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from typing import ClassVar

from aiortc import InvalidStateError, RTCPeerConnection
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamTrack

from .metrics import Metrics
from .problems import Problem
from .publisher import Publisher
from .scheduler import FrameScheduler

log = logging.getLogger(__name__)


class PeerConnection(RTCPeerConnection):
    """aiortc's connection, quiet when it is closed while it connects.

    ``setLocalDescription`` starts a connect task that nobody awaits; closed during the DTLS
    handshake, that task goes on to start the bundled transceivers' ICE transport, now closed, and
    its ``InvalidStateError`` is logged as "Task exception was never retrieved".
    """

    async def _RTCPeerConnection__connect(self) -> None:
        try:
            await super()._RTCPeerConnection__connect()
        except InvalidStateError:
            if self.connectionState != "closed":
                raise


class PeerSession:
    """A peer connection and the tasks that move its media."""

    kind: ClassVar[str]  # the label of its metrics and its name in the logs

    def __init__(self, pc: RTCPeerConnection):
        self.pc = pc
        # 122 random bits: the session URL's secret (DELETE and PATCH need nothing else), so
        # logs name a session by a prefix that grants nothing.
        self.id = uuid.uuid4().hex
        self.tasks: list[asyncio.Task] = []
        self.closed = False

    @property
    def log_id(self) -> str:
        return self.id[:8]

    def __str__(self) -> str:
        return f"{self.kind} session {self.log_id}"

    def dependents(self) -> list[PeerSession]:
        """Sessions that end with this one."""
        return []

    async def close(self) -> None:
        """End the media and the connection (once, from the registry)."""
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:  # the task that closes it ends by itself
                task.cancel()
        await self.pc.close()


class UpscaledSession(PeerSession):
    """A peer whose video the engine upscales; its publisher sends the result on."""

    def __init__(self, pc: RTCPeerConnection, publisher: Publisher):
        super().__init__(pc)
        self.publisher = publisher

    def receive_audio(self, track: MediaStreamTrack) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        self.publisher.stop()
        await super().close()


class BrowserSession(UpscaledSession):
    """The page: its video comes back upscaled on its own connection."""

    kind = "browser"

    def __init__(self, pc: RTCPeerConnection, publisher: Publisher):
        super().__init__(pc, publisher)
        [self.output] = publisher.subscribe()

    def receive_audio(self, track: MediaStreamTrack) -> None:
        """Not sent back; read so that it does not pile up."""
        sink = MediaBlackhole()
        sink.addTrack(track)
        self.tasks.append(asyncio.create_task(sink.start()))


class WhipSession(UpscaledSession):
    """A WHIP publisher of a named stream, upscaled for its WHEP viewers with its audio."""

    kind = "whip"

    def __init__(self, pc: RTCPeerConnection, publisher: Publisher, stream: str):
        super().__init__(pc, publisher)
        self.stream = stream
        self.viewers: set[WhepSession] = set()

    def __str__(self) -> str:
        return f"{self.kind} session {self.log_id} of stream {self.stream!r}"

    def receive_audio(self, track: MediaStreamTrack) -> None:
        self.publisher.publish_audio(track)

    def dependents(self) -> list[PeerSession]:
        return list(self.viewers)


class WhepSession(PeerSession):
    """A WHEP viewer of a WHIP stream: its subscription to the stream's publisher."""

    kind = "whep"

    def __init__(self, pc: RTCPeerConnection, source: WhipSession):
        super().__init__(pc)
        self.source = source
        self.tracks = source.publisher.subscribe()
        source.viewers.add(self)

    @property
    def stream(self) -> str:
        return self.source.stream

    def __str__(self) -> str:
        return f"{self.kind} session {self.log_id} of stream {self.stream!r}"

    async def close(self) -> None:
        self.source.viewers.discard(self)
        self.source.publisher.unsubscribe(self.tracks)
        await super().close()


class EndedSessions:
    """The last ``size`` sessions that ended, for ``ttl_s``: OBS and WHEP players close their peer
    connection (which ends the session) and only then send DELETE, which still deserves a 200."""

    def __init__(
        self, size: int = 256, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ):
        self.size, self.ttl_s, self.clock = size, ttl_s, clock
        self._ended: OrderedDict[str, tuple[str, str | None, float]] = OrderedDict()

    def add(self, session: PeerSession) -> None:
        self._expire()
        self._ended[session.id] = (session.kind, getattr(session, "stream", None), self.clock())
        while len(self._ended) > self.size:
            self._ended.popitem(last=False)

    def find(self, session_id: str) -> tuple[str, str | None] | None:
        """The kind and stream of a session that ended lately."""
        self._expire()
        ended = self._ended.get(session_id)
        return ended and ended[:2]

    def _expire(self) -> None:
        oldest = self.clock() - self.ttl_s
        while self._ended and next(iter(self._ended.values()))[2] < oldest:
            self._ended.popitem(last=False)


class SessionRegistry:
    """The open sessions, counted by kind in the sessions gauge and limited apart: at most
    ``max_sessions`` engine sessions (pages, WHIP publishers), ``max_viewers`` WHEP viewers and
    ``max_viewers_per_stream`` viewers of one stream, so that viewers never take a publisher's
    place."""

    def __init__(
        self,
        max_sessions: int,
        scheduler: FrameScheduler,
        metrics: Metrics,
        max_viewers: int = 8,
        max_viewers_per_stream: int = 8,
    ):
        self.max_sessions = max_sessions
        self.max_viewers = max_viewers
        self.max_viewers_per_stream = max_viewers_per_stream
        self.scheduler = scheduler
        self.metrics = metrics
        self._sessions: dict[str, PeerSession] = {}
        # Sessions being negotiated, counted against the limits of their pools (_pools_of).
        self._pending: Counter[str] = Counter()
        self._claimed: set[str] = set()  # streams whose publisher is being negotiated
        self.ended = EndedSessions()

    def __len__(self) -> int:
        return len(self._sessions)

    @contextlib.contextmanager
    def reservation(
        self, publishing: str | None = None, viewing: str | None = None
    ) -> Iterator[None]:
        """Hold a place for a session while it is negotiated (503 when its pool is full): an
        engine session's, or with ``viewing`` a viewer's of that stream; for a publisher also its
        stream name (409 when the stream has one or is being claimed)."""
        if publishing is not None and (
            publishing in self._claimed or self.source_of(publishing) is not None
        ):
            raise Problem(409, "Stream already published", f"stream {publishing!r} has a publisher")
        pools = self._pools_of(viewing)
        for pool, limit in zip(pools, self._limits(viewing), strict=True):
            self._check(pool, limit)
        self._pending.update(pools)
        if publishing is not None:
            self._claimed.add(publishing)
        try:
            yield
        finally:
            self._pending.subtract(pools)
            self._claimed.discard(publishing)

    @staticmethod
    def _pools_of(viewing: str | None) -> tuple[str, ...]:
        """The pools whose places a session takes (``viewing``: the stream of a viewer)."""
        return (
            ("engine sessions",)
            if viewing is None
            else ("viewers", f"viewers of stream {viewing!r}")
        )

    def _limits(self, viewing: str | None) -> tuple[int, ...]:
        if viewing is None:
            return (self.max_sessions,)
        return (self.max_viewers, self.max_viewers_per_stream)

    def _check(self, pool: str, limit: int) -> None:
        in_use = self._pending[pool] + sum(
            pool in self._pools_of(_viewed(session)) for session in self._sessions.values()
        )
        if in_use >= limit:
            self.metrics.sessions_rejected.labels("503").inc()
            raise Problem(
                503, "Server busy",
                f"all {limit} places for {pool} are in use; try again shortly",
                {"Retry-After": "10"},
            )  # fmt: skip

    def add(self, session: PeerSession) -> None:
        self._sessions[session.id] = session
        self.metrics.sessions.labels(session.kind).inc()
        log.info("%s opened", session)

    def get(self, session_id: str) -> PeerSession | None:
        return self._sessions.get(session_id)

    def in_use(self, viewers: bool = False) -> int:
        """Places taken in the engine sessions' pool (or the viewers'), negotiating included."""
        pool = "viewers" if viewers else "engine sessions"
        return self._pending[pool] + sum(
            (_viewed(s) is not None) == viewers for s in self._sessions.values()
        )

    def streams(self) -> list[str]:
        """The streams published here (live, or being negotiated)."""
        live = (s.stream for s in self._sessions.values() if isinstance(s, WhipSession))
        return sorted({*live, *self._claimed})

    def source_of(self, stream: str) -> WhipSession | None:
        """The WHIP session that publishes ``stream``, if it is live."""
        for session in self._sessions.values():
            if isinstance(session, WhipSession) and session.stream == stream:
                return session
        return None

    async def close(self, session: PeerSession, reason: str = "closed") -> None:
        if session.closed:
            return
        session.closed = True
        if self._sessions.pop(session.id, None) is not None:
            self.metrics.sessions.labels(session.kind).dec()
            self.ended.add(session)
        log.info("%s closed: %s", session, reason)
        self.scheduler.remove_source(session.id)
        await session.close()
        for dependent in session.dependents():
            await self.close(dependent, f"{session} closed")

    async def close_all(self) -> None:
        await asyncio.gather(
            *(self.close(s, "server shutdown") for s in list(self._sessions.values()))
        )


def _viewed(session: PeerSession) -> str | None:
    """The stream that a viewer views; None for an engine session."""
    return session.stream if isinstance(session, WhepSession) else None
