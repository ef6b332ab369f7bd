"""What ``streamvsr upscale`` writes: PNG frames and MP4 files, never half-written.

Everything is written under a temporary name next to the final one and renamed into place when
the job succeeds (``Staged``); a failure or Ctrl-C removes the temporary files instead.
"""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from .errors import UpscaleError

# Audio codecs the MP4 muxer takes as they are; others are transcoded to AAC.
MP4_AUDIO = {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}
DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}


class Staged:
    """A final path and its temporary twin; ``commit`` renames, ``discard`` deletes."""

    def __init__(self, final: Path, overwrite: bool):
        self.final = final
        if final.exists() and not overwrite:
            raise UpscaleError(f"{final} already exists (pass --overwrite to replace it)")
        parent = final.parent
        if not parent.is_dir():
            raise UpscaleError(f"output folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise UpscaleError(f"output folder {parent} is not writable")
        self.temp = parent / f".{final.name}.partial-{os.getpid()}{final.suffix}"

    def commit(self) -> None:
        if self.final.is_dir() and not self.final.is_symlink():
            shutil.rmtree(self.final)
        elif self.final.exists():
            self.final.unlink()
        os.replace(self.temp, self.final)

    def discard(self) -> None:
        if self.temp.is_dir():
            shutil.rmtree(self.temp, ignore_errors=True)
        else:
            self.temp.unlink(missing_ok=True)


def write_png(folder: Path, name: str, pixels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / (Path(name).stem + ".png"), compress_level=1)


class VideoWriter:
    """H.264 (or another codec) in MP4 with the source's timestamps and audio.

    Audio packets are copied (or transcoded to AAC) in step with the video, so memory stays
    constant however long the file is.
    """

    def __init__(
        self,
        path: Path,
        size: tuple[int, int],
        rate: Fraction,
        time_base: Fraction,
        codec: str = "libx264",
        crf: int = 18,
        preset: str = "medium",
        audio_from: Path | None = None,
        trim_audio: bool = False,
    ):
        self.container = av.open(str(path), mode="w", format="mp4")
        try:
            self.video = self.container.add_stream(codec, rate=rate)
        except (av.FFmpegError, ValueError) as exc:
            self.container.close()
            raise UpscaleError(f"cannot encode with {codec!r}: {exc}") from exc
        self.video.width, self.video.height = size
        self.video.pix_fmt = "yuv420p"
        self.video.time_base = time_base
        if codec in ("libx264", "libx265"):
            self.video.options = {"crf": str(crf), "preset": preset}
        self.time_base = time_base
        self.frame_seconds = float(1 / rate)
        self.first_pts: int | None = None
        self.last_time = 0.0
        self.trim_audio = trim_audio  # end the audio with the video (a chosen frame range)
        self.audio = AudioCopy(self.container, audio_from) if audio_from else None

    def write(self, pixels: np.ndarray, pts: int) -> None:
        if self.first_pts is None:
            self.first_pts = pts
            if self.audio is not None:  # the output's t=0 is the first frame's time
                self.audio.start = float(pts * self.time_base)
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts = pts - self.first_pts  # the output starts at 0; spacing kept
        frame.time_base = self.time_base
        self.last_time = float(frame.pts * self.time_base)
        self._encode(frame)
        if self.audio is not None:
            self.audio.copy_until(self.last_time)

    def _encode(self, frame: av.VideoFrame | None) -> None:
        try:
            for packet in self.video.encode(frame):
                self.container.mux(packet)
        except av.FFmpegError as exc:
            raise UpscaleError(f"the video encoder refused its settings or input: {exc}") from exc

    def close(self) -> None:
        self._encode(None)
        if self.audio is not None:
            self.audio.copy_until(self.last_time + self.frame_seconds if self.trim_audio else None)
            self.audio.close()
        self.container.close()

    def abort(self) -> None:
        if self.audio is not None:
            self.audio.input.close()
        self.container.close()


class AudioCopy:
    """The source's first audio stream, written into ``output`` up to a given time."""

    def __init__(self, output, source: Path):
        self.input = av.open(str(source))
        self.stream = self.input.streams.audio[0]
        self.start = 0.0  # source time (s) of the output's t=0: set from the first video frame
        context = self.stream.codec_context
        self.copy = context.name in MP4_AUDIO
        self.output = output
        if self.copy:
            self.out = output.add_stream_from_template(self.stream)
        else:
            self.out = output.add_stream("aac", rate=context.sample_rate)
            # A plain channel count ("2 channels") is not a layout AAC takes: use the default.
            channels = len(context.layout.channels)
            self.out.layout = DEFAULT_LAYOUTS.get(channels, context.layout.name)
        self.out.time_base = self.stream.time_base
        self.packets = self.input.demux(self.stream)
        self.pending = None

    def copy_until(self, seconds: float | None) -> None:
        """Write audio whose time (relative to the output's start) is before ``seconds``."""
        tb = self.stream.time_base
        offset = round(self.start / tb)
        for packet in self._packets():
            if packet.pts is None:
                continue
            source_time = float(packet.pts * tb)
            if source_time < self.start:
                continue
            if seconds is not None and source_time - self.start >= seconds:
                self.pending = packet
                return
            packet.pts -= offset
            if packet.dts is not None:
                packet.dts -= offset
            self._write(packet)

    def _packets(self):
        if self.pending is not None:
            packet, self.pending = self.pending, None
            yield packet
        while (packet := next(self.packets, None)) is not None:
            yield packet

    def _write(self, packet) -> None:
        if self.copy:
            packet.stream = self.out
            self.output.mux(packet)
            return
        for frame in packet.decode():
            frame.pts = None  # let the encoder count samples from 0
            for out in self.out.encode(frame):
                self.output.mux(out)

    def close(self) -> None:
        if not self.copy:
            for out in self.out.encode(None):
                self.output.mux(out)
        self.input.close()
