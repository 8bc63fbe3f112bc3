"""`edgeship agent build`: the agent as one reproducible zipapp file.

Same sources give the same bytes (sorted entries, fixed timestamps), so the file's
sha256 identifies the agent: the SSH transport places it on a board only when the
board's copy differs.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import edgeship
from edgeship import device_agent

_FIXED_TIME = (2020, 1, 1, 0, 0, 0)
_MAIN = b"import sys\nfrom edgeship.device_agent.__main__ import main\nsys.exit(main())\n"


def build_zipapp() -> bytes:
    """edgeship/__init__.py and the agent package (edgeship/device_agent/*.py) plus a __main__, as zipapp bytes.

    The agent keeps its installed name, edgeship.device_agent, on the board too.
    """
    pkg = Path(device_agent.__file__).parent
    buf = io.BytesIO()
    buf.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        entries = [("__main__.py", _MAIN), ("edgeship/__init__.py", Path(edgeship.__file__).read_bytes())] + [
            (f"edgeship/device_agent/{p.name}", p.read_bytes()) for p in sorted(pkg.glob("*.py"))]
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def write_zipapp(out: Path) -> tuple[Path, str]:
    data = build_zipapp()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    out.chmod(0o755)
    return out, hashlib.sha256(data).hexdigest()
