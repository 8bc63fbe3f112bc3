"""edgeship host SDK: the library behind the ``edgeship`` command.

Importing it is cheap: TensorFlow is only imported by the converters, when they run.
"""

from edgeship.device_agent import __version__

__all__ = ["__version__", "main"]

#: What the CLI imports that a board's install (`edgeship[agent]`) leaves out.
HOST_PACKAGES = ("click", "yaml", "pydantic", "rich")


def main() -> None:
    """The `edgeship` console script: the CLI, or one line naming the extra an install without it lacks."""
    import importlib.util
    import sys

    missing = [name for name in HOST_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"edgeship: error: this install has no host dependencies ({', '.join(missing)} missing); "
                 f"the CLI needs them: pip install 'edgeship[host]'")
    from edgeship.sdk.cli import main as cli

    cli()
