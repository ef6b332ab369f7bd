"""The egresses' metrics, on the app's registry; labels are bounded (kind, state, media)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

KINDS = ("record", "rtmp", "whip")
ENCODING_KINDS = ("record", "rtmp")  # those that encode the frames themselves
STATES = ("starting", "running", "retrying", "failed")
MEDIA = ("video", "audio")


class EgressMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.state = Gauge(
            "streamvsr_egress_state",
            "Egresses (recordings, RTMP and WHIP forwards) by kind and state: starting (not "
            "written or connected yet), running, retrying (a forward reconnecting after an "
            "error), failed (recording: write error)",
            ["kind", "state"], registry=registry,
        )  # fmt: skip
        self.frames = Counter(
            "streamvsr_egress_frames_total",
            "Upscaled video frames written (recordings, RTMP) or sent (WHIP) by egresses, by kind",
            ["kind"], registry=registry,
        )  # fmt: skip
        self.dropped = Counter(
            "streamvsr_egress_frames_dropped_total",
            "Frames an egress had no time for (its encoder was busy with an earlier one), by kind "
            "and media",
            ["kind", "media"], registry=registry,
        )  # fmt: skip
        self.failures = Counter(
            "streamvsr_egress_failures_total",
            "Egress errors by kind: a recording that could not be written, a forward target that "
            "refused or dropped the connection",
            ["kind"], registry=registry,
        )  # fmt: skip
        for kind in KINDS:
            self.failures.labels(kind)
            self.frames.labels(kind)
            for state in STATES:
                self.state.labels(kind, state)
        for kind in ENCODING_KINDS:  # a WHIP forward's drops are its stream's viewer_behind
            for media in MEDIA:
                self.dropped.labels(kind, media)
