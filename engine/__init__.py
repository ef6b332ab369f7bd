"""streamvsr's engines: Stream-DiffVSR (causal diffusion VSR) and a bicubic baseline.

engine = load_engine("Jamichsu/Stream-DiffVSR")      # or a local checkpoint folder
state = engine.new_session(seed=0)
[result] = engine.step([FrameRequest(state, lr_frame)])   # lr_frame: uint8 (H, W, 3)
state, hr_frame = result.state, result.frame             # hr_frame: uint8 (4H, 4W, 3)
"""

from .base import Engine, FrameRequest, FrameResult, PixelFormat
from .bicubic import BicubicEngine
from .errors import CheckpointError, DeviceError, EngineError
from .loading import download, load_engine
from .options import EngineOptions
from .random_checkpoint import write_random_checkpoint
from .state import SessionState
from .stream_diffvsr import StreamDiffVSR
from .timing import StageTimer

__all__ = [
    "BicubicEngine",
    "CheckpointError",
    "DeviceError",
    "Engine",
    "EngineError",
    "EngineOptions",
    "FrameRequest",
    "FrameResult",
    "PixelFormat",
    "SessionState",
    "StageTimer",
    "StreamDiffVSR",
    "download",
    "load_engine",
    "write_random_checkpoint",
]
