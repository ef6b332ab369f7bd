"""Sessions: one per peer connection, with its media tasks, and the registry that limits them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from .fanout import Fanout
from .metrics import Metrics
from .problems import Problem
from .scheduler import FrameScheduler
from .tracks import UpscaledTrack

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Session:
    """A peer connection: a browser or WHIP publisher (upscaled by the engine) or a WHEP viewer."""

    kind: str  # browser | whip | whep
    pc: RTCPeerConnection
    stream: str | None = None  # WHIP/WHEP stream name
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Upscaled video goes to these tracks: the browser's own, or each WHEP viewer's.
    outputs: list[UpscaledTrack] = field(default_factory=list)
    audio: Fanout | None = None  # a WHIP publisher's audio, copied to its viewers
    publisher: Session | None = None  # a WHEP viewer's publisher
    tracks: list[MediaStreamTrack] = field(default_factory=list)  # a viewer's outgoing tracks
    tasks: list[asyncio.Task] = field(default_factory=list)
    closed: bool = False


class SessionRegistry:
    def __init__(self, max_sessions: int, scheduler: FrameScheduler, metrics: Metrics):
        self.max_sessions = max_sessions
        self.scheduler = scheduler
        self.metrics = metrics
        self._sessions: dict[str, Session] = {}
        self._pending = 0  # sessions being negotiated (counted against the limit)
        self._claimed: set[str] = set()  # streams whose publisher is being negotiated

    def __len__(self) -> int:
        return len(self._sessions)

    @contextlib.contextmanager
    def reservation(self, publishing: str | None = None) -> Iterator[None]:
        """Hold a place for a session while it is negotiated (503 when the server is full) and,
        for a publisher, its stream name (409 when the stream has one or is being claimed)."""
        if publishing is not None and (
            publishing in self._claimed or self.publisher(publishing) is not None
        ):
            raise Problem(409, "Stream already published", f"stream {publishing!r} has a publisher")
        self._reserve()
        if publishing is not None:
            self._claimed.add(publishing)
        try:
            yield
        finally:
            self._pending -= 1
            self._claimed.discard(publishing)

    def _reserve(self) -> None:
        if len(self._sessions) + self._pending >= self.max_sessions:
            self.metrics.sessions_rejected.labels("503").inc()
            raise Problem(
                503, "Server busy",
                f"all {self.max_sessions} session slots are in use; try again shortly",
                {"Retry-After": "10"},
            )  # fmt: skip
        self._pending += 1

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session
        self.metrics.sessions.labels(session.kind).inc()
        log.info("session %s (%s%s) opened", session.id, session.kind,
                 f" {session.stream}" if session.stream else "")  # fmt: skip

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def publisher(self, stream: str) -> Session | None:
        return next(
            (s for s in self._sessions.values() if s.kind == "whip" and s.stream == stream), None
        )

    def viewers(self, stream: str) -> list[Session]:
        return [s for s in self._sessions.values() if s.kind == "whep" and s.stream == stream]

    async def close(self, session: Session, reason: str = "closed") -> None:
        if session.closed:
            return
        session.closed = True
        if self._sessions.pop(session.id, None) is not None:
            self.metrics.sessions.labels(session.kind).dec()
        log.info("session %s (%s) closed: %s", session.id, session.kind, reason)
        self.scheduler.remove_stream(session.id)
        current = asyncio.current_task()
        for task in session.tasks:
            if task is not current:
                task.cancel()
        if session.publisher is not None:  # a viewer leaves its publisher's fan-out
            for track in session.tracks:
                if track in session.publisher.outputs:
                    session.publisher.outputs.remove(track)
                if session.publisher.audio is not None:
                    session.publisher.audio.unsubscribe(track)
        for track in session.outputs + session.tracks:
            track.stop()
        await session.pc.close()
        if session.kind == "whip" and session.stream is not None:
            for viewer in self.viewers(session.stream):
                await self.close(viewer, "the stream's publisher left")

    async def close_all(self) -> None:
        await asyncio.gather(
            *(self.close(s, "server shutdown") for s in list(self._sessions.values()))
        )
