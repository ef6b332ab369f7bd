"""Process-wide changes to libraries, all made here, each with the reason it is needed.

The code that needs a change asks ``install`` for it: the server's start (encoders, decoders,
ICE, consent, DTLS logging), the engine choice (torch threads) and the command line (log
levels). Installing the same thing again changes nothing more. Libraries are imported where they
are changed, so that a process pays only for what it asks for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

# Per-packet (aioice, aiortc) and per-request (aiohttp.access) log records.
CHATTY_LOGGERS = ("aioice", "aiortc", "aiohttp.access")


def install(
    *,
    chatter_level: int | None = None,
    encoder_factory: Callable | None = None,
    decoder_factory: Callable | None = None,
    host_addresses: Sequence[str] = (),
    udp_ports: tuple[int, int] = (0, 0),
    cpu_threads: int | None = None,
    traffic_consent: bool = False,
    dtls_failure_log: bool = False,
    client_http_errors: bool = False,
    malloc_arenas: int = 0,
    trim_after_close: bool = False,
    ffmpeg_cpus: int = 0,
) -> None:
    """Install the changes asked for; a part left at its default is not touched.

    chatter_level: log level of the chatty libraries (diffusers and transformers are always held
        at errors, without progress bars).
    encoder_factory: aiortc's video encoder factory (``server.encoders.Encoders``); a
        receiver's PLI and FIR also reach its sender's track if that has ``request_keyframe``.
    decoder_factory: aiortc's decoder factory (``server.decoding.decoder_factory``); received
        video frames are stamped with their first RTP packet's arrival for its decoders.
    host_addresses: the only host ICE candidates aioice offers (empty: all but loopback).
    udp_ports: (low, high) ports for the running loop's "any port" UDP sockets ((0, 0): any).
    cpu_threads: torch's intra-op threads.
    traffic_consent: authenticated traffic from the peer on the selected ICE pair counts as its
        consent (RFC 7675) when it does not answer aioice's consent checks.
    dtls_failure_log: a failed DTLS handshake is logged (warning) with OpenSSL's reason.
    client_http_errors: malformed HTTP that aiohttp refuses gets a problem body and is logged
        as one info line.
    malloc_arenas: at most this many glibc malloc arenas, shared by all threads (0: glibc's 8
        per core).
    trim_after_close: a moment after peer connections close, glibc's malloc returns its free
        memory to the system (``server.memory``).
    ffmpeg_cpus: FFmpeg's automatic thread counts (PyAV's frame conversions and audio filter
        graphs, codecs left at automatic threads) count this many cores (0: all of them).
    """
    if chatter_level is not None:
        _quiet_libraries(chatter_level)
    if encoder_factory is not None:
        _replace_encoder_factory(encoder_factory)
        _pass_keyframe_requests_to_tracks()
    if decoder_factory is not None:
        _replace_decoder_factory(decoder_factory)
        _stamp_frame_arrivals()
    if host_addresses:
        _restrict_host_addresses(host_addresses)
    if udp_ports[0]:
        _bind_udp_port_range(*udp_ports)
    if cpu_threads is not None:
        _set_cpu_threads(cpu_threads)
    if traffic_consent:
        _accept_traffic_as_consent()
    if dtls_failure_log:
        _log_dtls_failures()
    if client_http_errors:
        _client_http_errors()
    if malloc_arenas:
        _limit_malloc_arenas(malloc_arenas)
    if trim_after_close:
        _trim_after_close()
    if ffmpeg_cpus:
        _force_ffmpeg_cpu_count(ffmpeg_cpus)


def _quiet_libraries(level: int) -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # Progress bars and dtype-casting advice while loading a checkpoint are not for our users.
    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def _replace_encoder_factory(factory: Callable) -> None:
    from aiortc import rtcrtpsender

    # aiortc caps bitrates for webcams and has no setting for its encoders: senders look the
    # factory up in this module on each new encoder, so replacing it reaches every sender.
    rtcrtpsender.get_encoder = factory


def _pass_keyframe_requests_to_tracks() -> None:
    from aiortc.rtcrtpsender import RTCRtpSender

    if getattr(RTCRtpSender._send_keyframe, "reaches_tracks", False):
        return
    send_keyframe = RTCRtpSender._send_keyframe

    # aiortc applies a PLI or FIR to the frames its sender encodes itself; a viewer's sender
    # sends what its stream's shared encoder made (server.stream_encoding), so the request must
    # reach that encoder, through the viewer's track.
    def _send_keyframe(self: RTCRtpSender) -> None:
        send_keyframe(self)
        request = getattr(self.track, "request_keyframe", None)
        if request is not None:
            request()

    _send_keyframe.reaches_tracks = True
    RTCRtpSender._send_keyframe = _send_keyframe


def _replace_decoder_factory(factory: Callable) -> None:
    from aiortc import rtcrtpreceiver

    from streamvsr.server.decoding import without_decode_failures

    # aiortc logs a warning per undecodable frame (seconds of them before OBS's first keyframe)
    # and counts none: receivers look the factory up here on each new decoder, and the watched
    # decoders log those failures instead (adding the same filter again changes nothing).
    rtcrtpreceiver.get_decoder = factory
    logging.getLogger(rtcrtpreceiver.__name__).addFilter(without_decode_failures)


def _stamp_frame_arrivals() -> None:
    from aiortc.jitterbuffer import JitterBuffer

    from streamvsr.server.decoding import stamping_arrivals

    # aiortc hands its decoders an encoded frame without the time its packets arrived, and
    # completes a frame only when the next one's first packet arrives: latency measured from
    # our consumer of the decoded frames would leave out that wait, the decoder's queue and the
    # decoding. The jitter buffer's completed frames carry their first packet's arrival instead.
    _wrap(JitterBuffer, "add", stamping_arrivals)


def _restrict_host_addresses(addresses: Sequence[str]) -> None:
    import aioice.ice

    from streamvsr.server.ice import host_address_filter

    # aioice offers every local address and has no option to choose: in Docker or on a host with
    # many interfaces only the configured ones are reachable.
    aioice.ice.get_host_addresses = host_address_filter(addresses)


def _bind_udp_port_range(low: int, high: int) -> None:
    from streamvsr.server.ice import port_range_endpoint

    # aioice has no port-range option (a firewall or Docker publishes only a range): it binds
    # port 0 through the running loop, so that loop's method is wrapped; other loops are not.
    loop = asyncio.get_running_loop()
    original = getattr(loop.create_datagram_endpoint, "unpatched", loop.create_datagram_endpoint)
    wrapper = port_range_endpoint(original, low, high)
    wrapper.unpatched = original  # type: ignore[attr-defined]  # a second install wraps this
    loop.create_datagram_endpoint = wrapper  # type: ignore[method-assign]


def _accept_traffic_as_consent() -> None:
    import aioice.ice
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    from streamvsr.server import consent

    # FFmpeg's WHIP muxer answers no STUN binding requests once it streams, so aioice's consent
    # checks (RFC 7675) go unanswered and it drops the publisher after ~30 s. Consent means "the
    # peer is still there and willing": its authenticated binding requests or SRTP/SRTCP on the
    # selected pair show that too. A peer that sends nothing still expires.
    _wrap(aioice.ice.StunProtocol, "datagram_received", consent.noting_datagrams)
    _wrap(aioice.ice.Connection, "request_received", consent.noting_requests)
    _wrap(RTCDtlsTransport, "_handle_rtp_data", consent.noting_media)
    _wrap(RTCDtlsTransport, "_handle_rtcp_data", consent.noting_media)
    _wrap(aioice.ice.StunProtocol, "request", consent.forgiving_consent)


def _log_dtls_failures() -> None:
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    from streamvsr.server import dtls

    # aiortc logs a failed handshake only at debug level and loses OpenSSL's reason on the way
    # ("error []"): a client whose certificate is refused (FFmpeg 8's WHIP with GnuTLS makes a
    # P-224 one: "wrong curve") would fail without a word.
    _wrap(RTCDtlsTransport, "_set_state", dtls.logging_dtls_failures)


def _client_http_errors() -> None:
    from aiohttp.log import server_logger
    from aiohttp.web_protocol import RequestHandler

    from streamvsr.server.problems import problem_for_refused_http, quiet_client_errors

    # aiohttp logs every malformed request it refuses at ERROR with a full traceback (580 bytes
    # for a 114-byte request): anyone can fill the log. Adding the same filter again does nothing.
    server_logger.addFilter(quiet_client_errors)
    # Its refusal is text/plain, where clients of this API expect a problem body.
    _wrap(RequestHandler, "handle_error", problem_for_refused_http)


def _limit_malloc_arenas(arenas: int) -> None:
    from streamvsr.server.memory import limit_arenas

    # Each session's media threads (decoders, x264, the encoding executor) would otherwise get
    # malloc arenas of their own, up to 8 per core, each keeping the frames freed in it.
    limit_arenas(arenas)


def _trim_after_close() -> None:
    from aiortc import RTCPeerConnection

    from streamvsr.server.memory import trimming_after_close

    # glibc keeps memory freed in its arenas: a closed session's frame buffers would stay
    # resident, and RSS would grow with every session that came and went.
    _wrap(RTCPeerConnection, "close", trimming_after_close)


def _force_ffmpeg_cpu_count(cpus: int) -> None:
    import ctypes
    import ctypes.util

    import av  # noqa: F401  # loads PyAV's libavutil, whose cores are counted

    # PyAV converts each frame with a swscale context of its own and asks for automatic threads,
    # and resamples audio (aiortc's Opus encoder, its own encoders) through filter graphs that do
    # too: every frame and every audio encoder started a pool of one thread per core, so threads
    # and malloc arenas per session grew with the machine. One thread also converted faster
    # (1280x720 RGB to YUV 3.8 ms, 6.5 ms with a new pool each frame, on 2 cores).
    path = _loaded_library("libavutil") or ctypes.util.find_library("avutil")
    if path is None:
        logging.getLogger(__name__).warning("libavutil not found: FFmpeg threads not limited")
        return
    ctypes.CDLL(path).av_cpu_force_count(cpus)


def _loaded_library(prefix: str) -> str | None:
    """The path of a shared library that this process has loaded (Linux), by its name's start."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1]
        if Path(path).name.startswith(prefix) and ".so" in path:
            return path
    return None


def _wrap(owner: type, name: str, wrapper: Callable[[Callable], Callable]) -> None:
    """Replace ``owner.name`` by ``wrapper(original)``; a second install wraps the original."""
    original = getattr(owner, name)
    original = getattr(original, "unpatched", original)
    wrapped = wrapper(original)
    wrapped.unpatched = original  # type: ignore[attr-defined]
    setattr(owner, name, wrapped)


def _set_cpu_threads(threads: int) -> None:
    import torch

    # One setting for the whole process: the caller says why its engine wants this many.
    torch.set_num_threads(threads)
