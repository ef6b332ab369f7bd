"""Native memory that closed sessions leave behind, given back to the system (glibc's malloc).

A session's media runs in threads: aiortc's decoder thread per received track, the decoders' and
x264's own threads, the default executor that encodes. glibc's malloc gives threads arenas of
their own (up to 8 per core) and, once a large block has been freed, raises its mmap threshold
(up to 32 MiB), so that later frame-sized blocks come from those arenas instead of their own
mappings. Freed arena memory stays with the process: with 320x240 input (1280x960 out), 16 live
sessions left the server 550 MiB above its idle RSS after they closed, and 150 more short
sessions added 160 MiB (``streamvsr bench-churn``).

``limit_arenas`` caps the arenas (``mallopt(M_ARENA_MAX)``); ``trimming_after_close`` wraps
aiortc's ``RTCPeerConnection.close`` so that, a moment after a connection closes (its threads
have ended, its frames are freed), ``malloc_trim(0)`` returns the arenas' free pages to the
system, in an executor thread and at most once per ``TRIM_DELAY_S``. ``streamvsr.startup``
installs both. Other C libraries (musl) have neither call: then nothing changes.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
TRIM_DELAY_S = 1.0  # after a close: its session's objects are dropped, and closes come together


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The process's C library if it has glibc's ``mallopt`` and ``malloc_trim``, else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int) -> bool:
    """At most ``arenas`` malloc arenas from now on (threads share them); False where glibc's
    malloc is not in use."""
    libc = glibc()
    if libc is None or not libc.mallopt(M_ARENA_MAX, arenas):
        log.debug("malloc arenas not limited: no glibc mallopt")
        return False
    return True


class Trimmer:
    """``soon()`` (from an event loop) runs ``malloc_trim(0)`` in the loop's default executor
    ``delay`` seconds later, unless a trim is already due or running: one trim for a burst."""

    def __init__(self, delay: float = TRIM_DELAY_S, trim: Callable[[], object] | None = None):
        self.delay = delay
        self._trim = trim
        self._due = False
        self.trims = 0  # trims run
        self.seconds = 0.0  # spent trimming

    def soon(self) -> None:
        if self._due or (self._trim is None and glibc() is None):
            return
        self._due = True
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            future = loop.run_in_executor(None, self.trim_now)
        except RuntimeError:  # the loop's executor is shut down: the process is ending
            self._due = False
            return
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future) -> None:
        self._due = False
        if not future.cancelled() and future.exception() is not None:
            log.debug("malloc_trim failed", exc_info=future.exception())

    def trim_now(self) -> None:
        started = time.perf_counter()
        if self._trim is not None:
            self._trim()
        else:
            glibc().malloc_trim(0)  # type: ignore[union-attr]  # soon() checked
        self.trims += 1
        self.seconds += time.perf_counter() - started


TRIMMER = Trimmer()


def trimming_after_close(close: Callable[..., Awaitable[None]]):
    """Wraps ``RTCPeerConnection.close``: once it has closed, ``TRIMMER`` trims soon."""

    @functools.wraps(close)
    async def close_and_trim(self) -> None:
        try:
            await close(self)
        finally:
            TRIMMER.soon()

    return close_and_trim
