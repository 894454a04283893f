"""Where pyganx keeps what it computes once per machine (trained judges, tuning
decisions): outside the source tree, in the user's cache directory."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$PYGANX_CACHE_DIR``, else ``$XDG_CACHE_HOME/pyganx``, else ``~/.cache/pyganx``."""
    env = os.environ.get("PYGANX_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyganx"
