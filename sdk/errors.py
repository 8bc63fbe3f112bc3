"""The one exception tree of edgeship.

Every failure a user can cause or meet is one of these; library code raises them,
the CLI turns them into one line and an exit code. Third-party errors (TensorFlow,
paramiko, pyserial, zipfile, ...) are translated once, where they happen, with
``raise ... from exc`` so the cause stays available under ``--debug``.

    EdgeshipError                 base: message says what went wrong and what to do
    ├── UsageError                an option value that cannot work (unknown recipe, bad --io)
    ├── ModelError                the model given to a command
    │   ├── ModelNotFoundError    no such file or directory
    │   ├── CorruptModelError     the file exists but cannot be read as that kind of model
    │   ├── SignatureNotFoundError  SavedModel has no signature of that name
    │   ├── DynamicShapeError     the model cannot be made fully static
    │   └── UnsupportedLayerError   a layer stops the Keras 3 -> tf_keras rebuild or QAT
    ├── DatasetError              calibration / training / eval data: missing, wrong shape or dtype, too small
    ├── ConversionError           the TFLite converter failed or its result breaks the recipe's promise
    │   └── ConverterCrashError   the converter's process died of a signal (``signal``); edgeship did not
    ├── BundleError               writing or reading a bundle (output dir, manifest schema)
    ├── CatalogueError            boards.yaml: names the file, the board and the key
    ├── TransportError            reaching a board
    │   ├── LinkError             the stream could not open, broke, or stopped answering (retries exhausted)
    │   │   └── BoardProtocolError  the board answered, but not as the protocol says (a field of the wrong type,
    │   │                         an absurd value, an upload that never advances, a run past its deadline)
    │   ├── HostKeyError          SSH host key unknown (not accepted) or changed
    │   ├── AuthError             the board refused our credentials
    │   ├── AgentError            the agent answered with an error frame (``code`` says why)
    │   └── BoardNotReadyError    the agent runs, but the board lacks numpy or a TFLite runtime (`boards setup`)
    ├── BoardSetupError           `boards setup` cannot prepare the board (no venv module, no runtime wheel, no index)
    ├── ResultsError              a result could not be written to --results-dir (the result itself is kept)
    ├── Cancelled                 the command was interrupted (Ctrl-C / SIGTERM) while talking to boards
    ├── RunError                  the model did not run on the board (``status``: invalid, crashed, timeout, ...)
    └── GateError                 a result missed a CI gate (exit code 3)

Callers dispatch on these types, never on message text.

An error about one argument carries ``option``: the library's parameter name (``calib_samples``).
``str(err)`` then reads ``calib_samples: <detail>``; the CLI shows the same detail after the
command's flag (``--calib-samples: <detail>``), so library messages never name CLI flags.
"""

from __future__ import annotations


class EdgeshipError(Exception):
    """Base of all edgeship errors; ``str(err)`` is a complete, user-facing sentence."""

    exit_code: int = 1

    def __init__(self, message: str = "", *args: object, option: str | None = None) -> None:
        super().__init__(message, *args)
        self.detail = message
        self.option = option

    def __str__(self) -> str:
        return f"{self.option}: {self.detail}" if self.option else str(self.detail)


class UsageError(EdgeshipError):
    """An option or argument value that cannot work."""

    exit_code = 2


class ModelError(EdgeshipError):
    """A problem with the model a command was given."""


class ModelNotFoundError(ModelError):
    """The model path does not exist."""


class CorruptModelError(ModelError):
    """The model file exists but is not a readable model of the kind its name says."""


class SignatureNotFoundError(ModelError):
    """A SavedModel lacks the requested signature."""


class DynamicShapeError(ModelError):
    """The model has dimensions that cannot be fixed, so a static graph is impossible."""


class UnsupportedLayerError(ModelError):
    """Layers that stop a Keras 3 -> tf_keras rebuild or quantization-aware training."""

    def __init__(self, message: str, layers: list[str], *, option: str | None = None) -> None:
        super().__init__(message, option=option)
        self.layers = layers


class DatasetError(EdgeshipError):
    """Calibration, training or evaluation data that cannot be used with this model."""


class ConversionError(EdgeshipError):
    """The TFLite converter failed, or its output does not keep the recipe's promise."""


class ConverterCrashError(ConversionError):
    """TensorFlow's converter crashed (in its own process, so edgeship lives on); ``signal`` is what killed it."""

    def __init__(self, message: str, signal: int, *, option: str | None = None) -> None:
        super().__init__(message, option=option)
        self.signal = signal


class BundleError(EdgeshipError):
    """A bundle directory or manifest that cannot be written or read."""


class CatalogueError(EdgeshipError):
    """boards.yaml (shipped or the user's) is malformed; the message names the file, the board and the key."""


class TransportError(EdgeshipError):
    """Reaching a board failed: the link, its authentication, or the agent's answers."""


class LinkError(TransportError):
    """The byte stream to a board could not be opened, broke, or stopped answering."""


class BoardProtocolError(LinkError):
    """The board's agent answered in a way the protocol does not allow; the message names the request and the field.

    The session is unusable afterwards (the host no longer knows what the board will send next).
    """


class HostKeyError(TransportError):
    """An SSH host key is unknown (and not accepted) or has changed."""


class AuthError(TransportError):
    """The board refused our credentials."""


class AgentError(TransportError):
    """The agent answered with an error frame; ``code`` is its machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.args = (code, message)  # what pickling (and copy) rebuilds it from
        self.code = code


class BoardNotReadyError(TransportError):
    """The board's agent answers, but the board cannot run models: numpy or a TFLite runtime is missing."""


class BoardSetupError(EdgeshipError):
    """`edgeship boards setup` cannot bring the board to a working runtime; the message says what to do by hand."""


class ResultsError(EdgeshipError):
    """A result document could not be written where --results-dir says; the run itself succeeded."""


class Cancelled(EdgeshipError):
    """The operation was cancelled (the CLI was interrupted); boards are left resumable."""

    exit_code = 130


class RunError(EdgeshipError):
    """The board ran the request but the model did not run: invalid, crashed, timeout, out of memory, bad dataset."""

    def __init__(self, status: str, message: str, *, option: str | None = None) -> None:
        super().__init__(message, option=option)
        self.args = (status, message)
        self.status = status


class GateError(EdgeshipError):
    """A bench/eval result missed a CI gate (--min-accuracy, --max-p90-ms, --min-agreement)."""

    exit_code = 3
