"""streamvsr: real-time 4x video super-resolution (Stream-DiffVSR) over WebRTC, WHIP and WHEP.

Packages (each one of the repository's top-level folders, mapped into this namespace):

- ``streamvsr.engine`` (``engine/``): the model and its per-session state; no I/O, no networking.
- ``streamvsr.server`` (``server/``): the WebRTC server (page, WHIP, WHEP, metrics).
- ``streamvsr.upscale``: the offline tool (frame folders and video files).
- ``streamvsr.bench`` (``bench/``): benchmarks and their commands.
- ``streamvsr.web``, ``streamvsr.configs``: the page and the default settings (package data).
- ``streamvsr.config``, ``streamvsr.cli``: settings and the ``streamvsr`` command.
"""

import logging
from pathlib import Path

__version__ = "0.1.0"

# Library hygiene: records go to the handlers the application sets up (the command line does); an
# application that sets none gets nothing rather than Python's bare stderr fallback.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# An installed copy holds the subpackages inside this folder. A source checkout that is not
# installed (or is shadowed by the current directory, as with ``python -m`` from the repository
# root) keeps them in the top-level folders beside it, so look there too.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "engine" / "__init__.py").is_file():
    __path__.append(str(_checkout))
