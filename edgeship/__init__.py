"""edgeship: one import namespace over the repository's top-level folders.

``edgeship.sdk`` (host library and CLI), ``edgeship.converters`` and ``edgeship.device_agent``
are sdk/, converters/ and device_agent/. In a checkout the entries of this folder are links
to them; a wheel holds the folders themselves, so an install adds only ``edgeship``.
"""

import os


def import_root() -> str:
    """The sys.path entry ``edgeship`` is imported from: a directory, or the agent zipapp file.

    A child Python that must import this same code (agent workers, the converter child, the
    local agent) puts it first on its path.
    """
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
