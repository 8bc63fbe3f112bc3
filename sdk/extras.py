"""Which extra of the distribution installs a module the host imports only when a command needs it.

pyproject.toml's [project.optional-dependencies] is the source of these names. The CLI turns a
failed import of one of these modules into one line naming the extra to install, instead of an
internal error; the host's TFLite runtime error (sdk.hosteval) names it too.
"""

from __future__ import annotations

#: module -> (the extra that installs it, what needs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "tensorflow": ("convert", "converting, inspecting or loading a Keras model or a SavedModel"),
    "keras": ("convert", "converting, inspecting or loading a Keras model or a SavedModel"),
    "tf_keras": ("convert", "fine-tuning (qat, sparsity, clusters)"),
    "tensorflow_model_optimization": ("convert", "fine-tuning (qat, sparsity, clusters)"),
    "ai_edge_litert": ("agent", "running a model on this host"),
    "tflite_runtime": ("agent", "running a model on this host"),
    "tflite_micro": ("micro", "running the emulated microcontroller board"),
    "paramiko": ("host", "reaching an SSH board"),
    "serial": ("host", "reaching a serial board"),
    "matplotlib": ("host", "drawing the HTML report's plots"),
}

#: The extra that gives the host a TFLite runtime.
RUNTIME_EXTRA = EXTRAS["ai_edge_litert"][0]


def missing_extra(module: str | None) -> str | None:
    """One sentence for a module this install lacks: what needs it and the extra to install; None for other modules."""
    top = (module or "").split(".")[0]
    if top not in EXTRAS:
        return None
    extra, what = EXTRAS[top]
    return f"{top} is not installed ({what} needs it): pip install 'edgeship[{extra}]'"
