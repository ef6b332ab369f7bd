"""An RTMP forward: a stream's upscaled video and audio pushed as FLV to an ``rtmp://`` or
``rtmps://`` URL, reconnecting with exponential backoff (1 s .. 30 s) while the target refuses,
drops or stalls it. Its network end is a child process (``push.py``), because FFmpeg's RTMP
handshake holds the GIL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import av

from .encoding import EncodingEgress
from .output import Output
from .push import CONNECTED, URL_VARIABLE, message
from .targets import forward_url, host_and_port, redact

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
STALL_S = 10.0  # an RTMP target that takes no data for this long is dropped and retried
HANDSHAKE_TIMEOUT_S = 10.0  # an RTMP target that has not connected this long after the first data
PUSHER = Path(__file__).with_name("push.py")  # the RTMP push's process
FLV_OPTIONS = {
    "flvflags": "no_duration_filesize",  # a live push cannot seek back to fill these in
    "flush_packets": "1",
    "max_interleave_delta": "1000000",
}


class PipeWriter:
    """The write end of a pipe as the file PyAV writes FLV to. Its writes block without the GIL
    while the reader is behind; ``blocked_since`` tells a watchdog for how long."""

    def __init__(self, fd: int):
        self.fd = fd
        self.first_write: float | None = None
        self.blocked_since: float | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.blocked_since = time.monotonic()
        if self.first_write is None:
            self.first_write = self.blocked_since
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        finally:
            self.blocked_since = None
        return len(data)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class RtmpForward(EncodingEgress):
    """The stream pushed as FLV to an RTMP(S) server, reconnecting with backoff.

    This process encodes and muxes; the network end is a child process
    (``push.py``) fed through a pipe, because FFmpeg's RTMP connect and handshake
    run holding the GIL: a target that never answers would otherwise freeze the server. A child
    that takes no data for ``STALL_S`` (a target that stopped reading) is killed and the
    connection retried, as is one that has not connected ``HANDSHAKE_TIMEOUT_S`` after its
    first data. It is running once the pusher says it has connected."""

    kind = "rtmp"
    title = "RTMP forward"
    running_when_written = False

    def __init__(self, url: str, *args, **kwargs):
        self.url = forward_url(url)
        super().__init__(*args, **kwargs)

    @property
    def target(self) -> str:
        return redact(self.url)

    async def _serve(self) -> None:
        await self._keep_connected(self._connect)

    async def _connect(self) -> None:
        await _reachable(self.url)
        await self._push()  # until the stream ends: the connection is finished cleanly

    async def _push(self) -> None:
        """One connection, until the stream ends or it fails (``PushError``)."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        pipe = PipeWriter(write_fd)
        try:
            # -P: the script's folder is not put on sys.path, where this package's modules
            # (metrics.py, ...) would shadow libraries of those names.
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-P", str(PUSHER), stdin=read_fd, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env={**os.environ, URL_VARIABLE: self.url},
            )  # fmt: skip
        except BaseException:
            pipe.close()
            raise
        finally:
            os.close(read_fd)
        why: list[str] = []  # the watchdog's reason to kill the pusher
        watchdog = asyncio.create_task(self._watch(pipe, process, why))

        def open_container() -> av.container.OutputContainer:
            return av.open(pipe, "w", format="flv", container_options=FLV_OPTIONS)

        try:
            await self._write(Output(open_container, self.config, self._has_audio))
            await loop.run_in_executor(self._thread, pipe.close)  # the pusher's end of input
            if await process.wait() != 0:
                raise PushError(why[0] if why else await _last_words(process))
        except PushError:
            raise
        except Exception as exc:
            if why:
                raise PushError(why[0]) from exc
            raise PushError(await _last_words(process) or message(exc)) from exc
        finally:
            watchdog.cancel()
            if process.returncode is None:
                process.kill()  # a writer blocked on the pipe fails now, and goes on
            loop.run_in_executor(self._thread, pipe.close)  # after the writer's last job

    async def _watch(
        self, pipe: PipeWriter, process: asyncio.subprocess.Process, why: list[str]
    ) -> None:
        """Running once the pusher has connected; killed if it has not ``HANDSHAKE_TIMEOUT_S``
        after the first data (a target that never answers the handshake), or takes no data for
        ``STALL_S`` (a target that stopped reading)."""
        connected = asyncio.Event()

        async def listen() -> None:
            heard = (await process.stdout.readline()).decode().strip()
            if heard == CONNECTED and self.state not in (None, "running"):
                connected.set()
                self._set_state("running")
                log.info("%s: connected", self)

        listener = asyncio.create_task(listen())
        try:
            while process.returncode is None:
                await asyncio.sleep(0.25)
                now = time.monotonic()
                first, blocked = pipe.first_write, pipe.blocked_since
                if not connected.is_set() and first and now - first > HANDSHAKE_TIMEOUT_S:
                    why.append(f"no RTMP answer within {HANDSHAKE_TIMEOUT_S:g} s")
                elif blocked is not None and now - blocked > STALL_S:
                    why.append(f"the target took no data for {STALL_S:g} s")
                else:
                    continue
                process.kill()  # the writer's pipe breaks: it fails, and the forward retries
                return
        finally:
            listener.cancel()


class PushError(Exception):
    """An RTMP connection that failed; the message says why, without the URL."""


async def _last_words(process: asyncio.subprocess.Process) -> str:
    """The pusher's error line (it prints one when it fails)."""
    if process.returncode is None:
        process.kill()
    await process.wait()
    text = (await process.stderr.read(4096)).decode(errors="replace").strip()
    lines = text.splitlines()
    return lines[-1][:300] if lines else f"the RTMP pusher ended with {process.returncode}"


async def _reachable(url: str) -> None:
    """Connect to the target's host and port and hang up: an unreachable host fails in
    ``CONNECT_TIMEOUT_S`` here, not after the OS's connect timeout in the writer thread."""
    host, port = host_and_port(url)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise ConnectionError(f"{host}:{port} did not answer in {CONNECT_TIMEOUT_S:g} s") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
