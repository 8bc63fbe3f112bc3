"""What every benchmark records about the machine it ran on, so numbers can be compared."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine(*dists: str) -> dict[str, Any]:
    """Date, CPU, core count, platform, Python and the versions of `dists` (plus edgeship), and the load."""
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "nproc": os.cpu_count(),
            "cpu": cpu, "platform": platform.platform(), "python": platform.python_version(),
            "python_executable": sys.executable, **{d: version(d) for d in ("edgeship", *dists)},
            "loadavg_1m_start": loadavg()}
