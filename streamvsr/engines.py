"""Turn engine settings into a running engine, including the ``auto`` choice and its reason."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from streamvsr.engine import BicubicEngine, Engine, EngineError, load_engine

from . import startup
from .config import EngineSettings

log = logging.getLogger(__name__)


@dataclass
class EngineChoice:
    engine: Engine
    reason: str  # why this engine runs, for logs, /readyz and the page


def create_engine(settings: EngineSettings) -> EngineChoice:
    """``stream-diffvsr`` loads or raises ``EngineError``; ``auto`` may fall back to bicubic."""
    if settings.kind == "bicubic":
        return EngineChoice(_bicubic(settings), "bicubic was asked for")
    if settings.kind == "stream-diffvsr":
        engine = load_engine(settings.model, settings)
        return EngineChoice(engine, "stream-diffvsr was asked for")
    if not torch.cuda.is_available() and settings.device in ("auto", "cuda"):
        reason = "no CUDA GPU is visible, so the bicubic engine runs (Stream-DiffVSR needs a GPU)"
    else:
        try:
            engine = load_engine(settings.model, settings)
            return EngineChoice(engine, "a GPU and the weights are available")
        except EngineError as exc:
            reason = f"Stream-DiffVSR could not be loaded, so the bicubic engine runs: {exc}"
    log.warning(reason)
    return EngineChoice(_bicubic(settings), reason)


def engine_devices(settings: EngineSettings) -> list[str]:
    """The devices that get an engine copy (``engine.devices``; ``auto``: every visible GPU)."""
    if list(settings.devices) == ["auto"]:
        count = torch.cuda.device_count()
        return [f"cuda:{n}" for n in range(count)] if count else [settings.device]
    return list(settings.devices) or [settings.device]


def create_engines(settings: EngineSettings) -> list[EngineChoice]:
    """One engine per device of ``engine_devices``, each with the same choice (and weights)."""
    choices = []
    for device in engine_devices(settings):
        choices.append(create_engine(replace(settings, device=device)))
        if choices[-1].engine.name != choices[0].engine.name:
            raise EngineError(
                f"{device} runs {choices[-1].engine.name} but {choices[0].engine.name} runs on "
                f"the first device: {choices[-1].reason}"
            )
    return choices


def _bicubic(settings: EngineSettings) -> BicubicEngine:
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        # Its SIMD uint8 kernel gains little from more threads, and idle OpenMP workers spinning
        # beside the video encoders cost a server more (measured: 117% -> 97% CPU per stream).
        startup.install(cpu_threads=1)
    return BicubicEngine(device)
