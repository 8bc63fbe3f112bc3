"""python -m edgeship.sdk.emulate serve NAME STORE BAUD: the background process behind `edgeship emulate up`."""

import sys
from pathlib import Path

from edgeship.sdk.emulate.services import serve_forever

if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "serve":
    serve_forever(sys.argv[2], Path(sys.argv[3]).expanduser(), int(sys.argv[4]))
