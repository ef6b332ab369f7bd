"""What every egress shares: its life (started with its stream, ended with it or by ``stop``), its
state in the metrics and the API, and the reconnects of a forward."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, ClassVar

from .metrics import EgressMetrics
from .push import message

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0  # how long a stop waits for the file or the connection to be finished
BACKOFF_S = (1.0, 30.0)  # a forward's reconnects: first delay, largest delay
STABLE_S = 30.0  # a connection that lasted this long starts the backoff over


class Egress:
    """One subscriber of a stream that sends it somewhere. ``_serve`` does the work until the
    stream ends (``_ended``); a subclass sets ``_ended`` when its subscription ends."""

    kind: ClassVar[str]  # its metrics' label
    title: ClassVar[str]  # its name in the logs

    def __init__(self, stream: str, session_id: str, metrics: EgressMetrics):
        self.stream, self.session_id = stream, session_id
        self.metrics = metrics
        self.state: str | None = None
        self.error: str | None = None
        self._ended = asyncio.Event()
        self._set_state("starting")
        self.task = asyncio.create_task(self._run())

    @property
    def target(self) -> str:
        """Where it goes, as logs and answers show it."""
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.title} of stream {self.stream!r} to {self.target}"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "state": self.state,
            **({"error": self.error} if self.error else {}),
        }

    def _set_state(self, state: str | None) -> None:
        if self.state is not None:
            self.metrics.state.labels(self.kind, self.state).dec()
        if state is not None:
            self.metrics.state.labels(self.kind, state).inc()
        self.state = state

    async def stop(self) -> None:
        """End it: the file or connection is finished (``_run`` gives that ``STOP_TIMEOUT_S``)."""
        self._end()
        await asyncio.wait([self.task])

    def _end(self) -> None:
        """End the subscription; ``_ended`` is set once it has."""
        raise NotImplementedError

    async def _serve(self) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Let go of the subscription and whatever else ``_serve`` left (it may have been
        cancelled)."""

    async def _run(self) -> None:
        log.info("%s started", self)
        serve = asyncio.create_task(self._serve())
        try:
            ended = asyncio.create_task(self._ended.wait())
            await asyncio.wait([serve, ended], return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            # Once the stream has ended, the file or connection has STOP_TIMEOUT_S to be
            # finished: a writer stuck on a peer that stopped reading is left behind (its thread
            # is a daemon) rather than holding the egress forever.
            done, _ = await asyncio.wait([serve], timeout=STOP_TIMEOUT_S)
            if not done:
                log.warning(
                    "%s: not finished %g s after the stream ended; left behind", self,
                    STOP_TIMEOUT_S,
                )  # fmt: skip
                serve.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serve
        except Exception:
            log.exception("%s failed unexpectedly", self)
        finally:
            serve.cancel()
            self._finish()
            self._set_state(None)
            log.info("%s ended%s", self, self._summary())

    def _summary(self) -> str:
        return ""

    async def _keep_connected(self, connect) -> None:
        """Run ``connect()`` (one connection, returning when the stream has ended) again after
        each failure, after 1, 2, 4 ... 30 s, or the failure's ``retry_after`` if longer; a
        connection that lasted ``STABLE_S`` starts the backoff over. Each failure is counted,
        logged and kept in ``error``."""
        delay = BACKOFF_S[0]
        while not self._ended.is_set():
            started = time.monotonic()
            try:
                await connect()
                return
            except Exception as exc:
                self.error = self._error_text(exc)
                self.metrics.failures.labels(self.kind).inc()
                if self._ended.is_set():
                    log.warning("%s: %s", self, self.error)
                    return
                if time.monotonic() - started >= STABLE_S:
                    delay = BACKOFF_S[0]
                # A busy target's Retry-After, where it asked for longer than the backoff.
                wait = max(delay, getattr(exc, "retry_after", None) or 0.0)
                self._set_state("retrying")
                log.warning("%s: %s; retrying in %g s", self, self.error, wait)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ended.wait(), wait)
            delay = min(delay * 2, BACKOFF_S[1])

    def _error_text(self, exc: Exception) -> str:
        """An error in one line for the logs and the API, without secrets."""
        return message(exc)
