"""Prometheus metrics. Units are seconds and bytes; no label carries a per-session value."""

from __future__ import annotations

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Resolve GPU frames (~10-50 ms) as well as CPU frames (seconds).
LATENCY_BUCKETS = (
    0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0,
)  # fmt: skip
STAGE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
SESSION_KINDS = ("browser", "whip", "whep")
DROP_REASONS = (
    "stale", "engine_error", "session_closed", "decode_error", "encoder_busy", "encoder_behind",
    "viewer_behind",
)  # fmt: skip

# Counted in aiortc's decoder threads, which know no app: one count per process, shown by every
# app's registry (a server is one process).
UNDECODABLE_FRAMES = Counter(
    "streamvsr_undecodable_frames_total",
    "Received frames that could not be decoded (before a keyframe, after lost packets)",
    registry=None,
)


class Metrics:
    """All of streamvsr's metrics, in a registry of their own (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.frame_latency = Histogram(
            "streamvsr_frame_latency_seconds",
            "Time from a frame's arrival (its first RTP packet) to handing its upscaled frame to "
            "its stream's encoder (once per codec that its viewers use)",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.frame_encoded_latency = Histogram(
            "streamvsr_frame_encoded_latency_seconds",
            "Time from a frame's arrival (its first RTP packet) to its upscaled frame leaving the "
            "encoder (what viewers wait, less the network and their decoder)",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "streamvsr_queue_wait_seconds",
            "Time a frame waited for the engine",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.engine_step = Histogram(
            "streamvsr_engine_step_seconds",
            "Time of one batched engine step",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.engine_stage = Histogram(
            "streamvsr_engine_stage_seconds",
            "Time of each stage within an engine step",
            ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.encode = Histogram(
            "streamvsr_encode_seconds",
            "Time to encode one outgoing video frame",
            ["codec"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "streamvsr_batch_size",
            "Frames per engine step",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r,
        )  # fmt: skip
        self.frames_received = Counter(
            "streamvsr_frames_received_total", "Video frames received", registry=r
        )
        self.frames_sent = Counter(
            "streamvsr_frames_sent_total",
            "Encoded upscaled frames handed to viewers' senders",
            registry=r,
        )
        self.frames_dropped = Counter(
            "streamvsr_frames_dropped_total",
            "Frames not upscaled, or upscaled and not sent, by reason", ["reason"], registry=r,
        )  # fmt: skip
        self.undecodable_frames = UNDECODABLE_FRAMES
        r.register(UNDECODABLE_FRAMES)
        self.frames_downscaled = Counter(
            "streamvsr_frames_downscaled_total",
            "Input frames larger than the limit, downscaled before the engine", registry=r,
        )  # fmt: skip
        self.sessions = Gauge(
            "streamvsr_sessions_active", "Open sessions by kind", ["kind"], registry=r
        )
        self.sessions_rejected = Counter(
            "streamvsr_sessions_rejected_total",
            "Session requests refused, by HTTP status", ["status"], registry=r,
        )  # fmt: skip
        self.ready = Gauge(
            "streamvsr_ready", "1 when the engine is loaded and warmed up", registry=r
        )
        self.gpu_memory = Gauge(
            "streamvsr_gpu_memory_bytes", "GPU memory allocated by torch", registry=r
        )
        self.gpu_memory.set_function(_gpu_memory)
        self.model = Info("streamvsr_model", "The engine that runs", registry=r)
        self.device_sessions = Gauge(
            "streamvsr_device_sessions", "Engine sessions by device (engine.devices)",
            ["device"], registry=r,
        )  # fmt: skip
        self.device_busy = Counter(
            "streamvsr_device_busy_seconds",
            "Engine step time by device: its rate is the device's utilisation", ["device"],
            registry=r,
        )  # fmt: skip
        for kind in SESSION_KINDS:
            self.sessions.labels(kind)
        for reason in DROP_REASONS:
            self.frames_dropped.labels(reason)

    def record_step(
        self, batch: int, seconds: float, stages: dict[str, float], device: str = ""
    ) -> None:
        if device:
            self.device_busy.labels(device).inc(seconds)
        self.batch_size.observe(batch)
        self.engine_step.observe(seconds)
        for stage, value in stages.items():
            self.engine_stage.labels(stage).observe(value)


def _gpu_memory() -> float:
    return float(torch.cuda.memory_allocated()) if torch.cuda.is_available() else 0.0
