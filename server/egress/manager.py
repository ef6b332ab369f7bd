"""An app's egresses: started for a stream's configured targets when its WHIP session opens
(``start_configured``) or per request (``api``), found by session and target, finished at
shutdown."""

from __future__ import annotations

import asyncio
import datetime
import logging
import weakref
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

from ..metrics import Metrics
from ..problems import Problem
from .base import Egress
from .metrics import EgressMetrics
from .output import EncodeConfig
from .recording import Recording
from .rtmp import RtmpForward
from .targets import is_whip
from .whip import WhipForward

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..sessions import WhipSession

log = logging.getLogger(__name__)


class Egresses:
    """An app's egresses (one set per ``Metrics``, see ``egresses_of``), by their session and
    target: a stream published anew gets egresses of its own."""

    def __init__(self, metrics: Metrics):
        self.metrics = EgressMetrics(metrics.registry)
        self._egresses: dict[tuple[str, str], Egress] = {}

    def of(self, session: WhipSession) -> list[Egress]:
        return [e for (sid, _), e in self._egresses.items() if sid == session.id]

    def get(self, session: WhipSession, key: str) -> Egress | None:
        return self._egresses.get((session.id, key))

    def record(self, session: WhipSession, rt: Runtime) -> Recording:
        now = datetime.datetime.now(datetime.timezone.utc)
        path = Path(rt.settings.record_dir) / f"{session.stream}-{now:%Y%m%dT%H%M%SZ}.mp4"
        return self._add(session, "record", lambda: Recording(path, *self._encoding(session, rt)))

    def forward(self, session: WhipSession, url: str, rt: Runtime) -> RtmpForward | WhipForward:
        """An RTMP push or (http, https) a WHIP forward of ``session``'s stream to ``url``."""
        if is_whip(url):
            return self._add(session, url, lambda: WhipForward(url, session, rt, self.metrics))
        return self._add(session, url, lambda: RtmpForward(url, *self._encoding(session, rt)))

    def _encoding(self, session: WhipSession, rt: Runtime) -> tuple:
        """The arguments of an ``EncodingEgress`` of ``session``'s stream."""
        config = EncodeConfig.from_settings(rt.settings)
        return session.stream, session.id, session.publisher, config, self.metrics

    def _add(self, session: WhipSession, key: str, make):
        if session.closed:  # its publisher has stopped: a subscription would never end
            raise Problem(404, "Stream not live", f"stream {session.stream!r} has ended")
        egress = make()
        self._egresses[session.id, key] = egress
        egress.task.add_done_callback(lambda _: self._forget(session.id, key, egress))
        return egress

    def _forget(self, session_id: str, key: str, egress: Egress) -> None:
        if self._egresses.get((session_id, key)) is egress:
            del self._egresses[session_id, key]

    async def close_all(self) -> None:
        egresses = list(self._egresses.values())
        await asyncio.gather(*(e.stop() for e in egresses))


_EGRESSES: weakref.WeakKeyDictionary[Metrics, Egresses] = weakref.WeakKeyDictionary()


def egresses_of(metrics: Metrics) -> Egresses:
    """The egresses of the app whose metrics these are (made on first use)."""
    found = _EGRESSES.get(metrics)
    if found is None:
        found = _EGRESSES[metrics] = Egresses(metrics)
    return found


def start_configured(rt: Runtime, session: WhipSession) -> None:
    """Start what the settings ask for ``session``'s stream (``record_streams``, ``forward``);
    called when a WHIP session has opened. Never fails the session."""
    settings = rt.settings
    try:
        manager = egresses_of(rt.metrics)
        if any(fnmatchcase(session.stream, p) for p in settings.record_streams):
            if settings.record_dir:
                manager.record(session, rt)
            else:
                log.warning(
                    "stream %r is in record_streams but record_dir is not set: not recorded",
                    session.stream,
                )
        for url in dict(settings.forward).get(session.stream, ()):
            manager.forward(session, url, rt)
    except Exception:
        log.exception("could not start the egresses of %s", session)
