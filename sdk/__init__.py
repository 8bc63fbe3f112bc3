"""edgeship host SDK: the library behind the ``edgeship`` command.

Importing it is cheap: TensorFlow is only imported by the converters, when they run.
"""

from edgeship.device_agent import __version__

__all__ = ["__version__"]
