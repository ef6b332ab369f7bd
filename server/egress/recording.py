"""A recording: a stream's upscaled video (H.264) and audio (AAC) as fragmented MP4 in a file,
``{stream}-{UTC time}.mp4`` in ``record_dir``. A fragment per keyframe (one a second), so the
file plays up to its last fragment even if the server is killed; a write error (disk full) ends
the recording with one log line and a metric, and the stream goes on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import av

from .encoding import EncodingEgress
from .output import Output
from .push import message

log = logging.getLogger(__name__)

MP4_OPTIONS = {
    # a moov without samples first, then a moof+mdat per keyframe: every fragment written is
    # playable, whatever happens to the process later
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "flush_packets": "1",  # each fragment goes to the file at once, not when a buffer fills
    "max_interleave_delta": "1000000",  # a track that stalls holds the other back 1 s at most
}


class Recording(EncodingEgress):
    """The stream as fragmented MP4 in a file."""

    kind = "record"
    title = "recording"

    def __init__(self, path: Path, *args, new_file: bool = True, **kwargs):
        """``new_file``: a free name next to ``path`` if it exists (a stream recorded twice in
        one second); False: ``path`` itself (a device such as /dev/full)."""
        self.path = path
        self._new_file = new_file
        super().__init__(*args, **kwargs)

    @property
    def target(self) -> str:
        return str(self.path)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": str(self.path)}

    def _open(self) -> av.container.OutputContainer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stem, n = self.path.stem, 1
        while self._new_file and self.path.exists():  # never overwrite a recording
            n += 1
            self.path = self.path.with_name(f"{stem}-{n}{self.path.suffix}")
        return av.open(str(self.path), "w", format="mp4", container_options=MP4_OPTIONS)

    async def _serve(self) -> None:
        try:
            await self._write(Output(self._open, self.config, self._has_audio))
        except Exception as exc:
            self.error = message(exc)
            self.metrics.failures.labels(self.kind).inc()
            self._set_state("failed")
            log.error("%s stopped: %s (the stream goes on)", self, self.error)
            await self._discard_until_ended()
