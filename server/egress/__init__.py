"""Egress: where a WHIP stream's upscaled output goes next, with its audio.

An egress is one more subscriber of a stream's ``Publisher``:

* a **recording** (``recording``) writes fragmented MP4 to a file;
* an **RTMP forward** (``rtmp``) pushes FLV to an ``rtmp://`` or ``rtmps://`` URL, its network
  end in a child process (``push``);
* a **WHIP forward** (``whip``) sends the stream by WebRTC to an ``http(s)://`` WHIP endpoint,
  as a WHEP viewer gets it.

The first two encode the raw frames themselves (``encoding``, ``output``); none ever slows the
engine or the live session. They start with a WHIP session (``manager.start_configured``) or per
request (``api``), end when it closes, and reconnect (``base``) while a target fails.

The names below are imported on first use, so that ``targets`` (which the settings use) stays
light to import.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "Egress": "base",
    "EgressMetrics": "metrics",
    "EncodeConfig": "output",
    "Output": "output",
    "Recording": "recording",
    "RtmpForward": "rtmp",
    "WhipForward": "whip",
    "Egresses": "manager",
    "egresses_of": "manager",
    "start_configured": "manager",
    "add_routes": "api",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
