"""The network end of an RTMP forward (``rtmp.RtmpForward``), in a process of its own: run as a
script by its path (the server imports only its names and ``message``).

PyAV calls FFmpeg's ``avio_open`` (which connects and runs the RTMP handshake) and
``av_write_trailer`` holding the GIL: a target that accepts the connection and then says nothing
would freeze the whole server, event loop included. Here, it freezes only this process, which
the egress kills when the stream ends or the target stops taking data.

Reads FLV (the egress's encoded video and audio) on stdin and pushes it unchanged to the URL in
the environment variable ``STREAMVSR_PUSH_URL`` (not on the command line, where every local user
would see the stream key). Prints ``connected`` on stdout once the target has taken the stream;
on failure, prints one line (no URL) to stderr and exits with 1.
"""

from __future__ import annotations

import os
import sys

import av

URL_VARIABLE = "STREAMVSR_PUSH_URL"
CONNECTED = "connected"  # the line on stdout once the target has taken the stream
FLV_OPTIONS = {"flvflags": "no_duration_filesize", "flush_packets": "1"}


def message(exc: BaseException) -> str:
    """An error in one line, without the URL (FFmpeg's errors name it, and it holds the key)."""
    if isinstance(exc, av.FFmpegError):
        text = exc.strerror or type(exc).__name__
        if exc.log:
            text += f" ({exc.log[2].strip()})"
    else:
        text = str(exc) or type(exc).__name__
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def push(url: str) -> None:
    with av.open("pipe:0", "r", format="flv") as source:
        streams = [s for s in source.streams if s.type in ("video", "audio")]
        with av.open(url, "w", format="flv", container_options=FLV_OPTIONS) as target:
            outputs = {s.index: target.add_stream_from_template(s) for s in streams}
            target.start_encoding()  # connects, handshakes, writes the FLV header
            print(CONNECTED, flush=True)  # the egress's state is running from now on
            for packet in source.demux(streams):
                if packet.dts is None:  # the demuxer's end-of-stream packets
                    continue
                packet.stream = outputs[packet.stream.index]
                target.mux(packet)


def main() -> int:
    url = os.environ.pop(URL_VARIABLE, "")
    if not url:
        print(f"{URL_VARIABLE} is not set", file=sys.stderr)
        return 2
    try:
        push(url)
    except Exception as exc:
        print(message(exc), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
