"""Where slmflow keeps what it writes: one folder, ``SLMFLOW_HOME`` (default ``./.slmflow``).

Why one folder: traces, the call log, adapters, indexes, caches and assembled model files all
belong to one project, are backed up or wiped together, and must never scatter into ``~`` or the
package directory. Sub-folders are created on first use, not at import.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The slmflow home folder (created if missing)."""
    p = Path(os.environ.get("SLMFLOW_HOME") or ".slmflow").expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p


def subdir(name: str) -> Path:
    """A sub-folder of the home (``models``, ``adapters``, ``cache``, ...), created if missing."""
    p = home() / name
    p.mkdir(parents=True, exist_ok=True)
    return p
