"""Offline upscaling (``streamvsr upscale``): frame folders and video files, streamed end to end."""

from .errors import UpscaleError
from .job import UpscaleOptions, prepare_upscale, run_upscale

__all__ = ["UpscaleError", "UpscaleOptions", "prepare_upscale", "run_upscale"]
