"""The public Python API behind ``import edgeship``: the CLI's main jobs as functions.

Each function takes what a notebook has at hand (paths as ``str`` or ``Path``, a board by its
catalogue name, the ``ConversionResult`` a conversion returned) and returns typed results;
failures are ``edgeship.errors`` exceptions whose ``option`` names the parameter at fault.
Nothing here prints. docs/api.md shows the flow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from edgeship.converters.convert import ConversionResult
    from edgeship.converters.recipe import Recipe
    from edgeship.device_agent.options import RunOptions
    from edgeship.sdk.boards import Board
    from edgeship.sdk.report import Report
    from edgeship.sdk.results import RunResult
    from edgeship.sdk.transport.base import Transport

PathArg = Union[str, "PathLike[str]"]
BundleArg = Union[str, "PathLike[str]", "ConversionResult"]
TargetArg = Union[str, "Board", "Transport"]


def _path(value: PathArg | None) -> Path | None:
    return None if value is None else Path(value)


def _bundle(bundle: BundleArg) -> Path:
    """A bundle directory, from a path or from what `convert` returned."""
    from edgeship.converters.convert import ConversionResult

    return bundle.bundle if isinstance(bundle, ConversionResult) else Path(bundle)


def board(name: str) -> Board:
    """A board by catalogue name (boards.yaml, the user's boards file) or inline form (`local`, `pi@host`, ...)."""
    from edgeship.sdk.catalogue import resolve

    return resolve(name)


def _target(target: TargetArg) -> Board | Transport:
    return board(target) if isinstance(target, str) else target


def convert(model: PathArg, recipe: Recipe | str, out: PathArg, *, calib: PathArg | None = None,
            calib_samples: int | None = None, train: PathArg | None = None, io: str | None = None,
            eval_data: PathArg | None = None, output: str | None = None, signature: str = "serving_default",
            batch: int = 1, force: bool = False, custom_objects: Sequence[str] = (),
            progress: Callable[[str], None] | None = None, **recipe_options: Any) -> ConversionResult:
    """Convert a .keras/.h5 model or a SavedModel into a bundle directory `out`.

    `recipe` is a Recipe or a recipe name (float32, float16, dynamic, int8, int16x8, qat); with
    a name, `calib`, `calib_samples`, `train`, `io` and `recipe_options` (the recipe's options:
    epochs, learning_rate, sparsity, clusters, keep_float, ...) build it as `edgeship convert` does.
    """
    from edgeship.converters.convert import convert as run
    from edgeship.converters.recipe import Recipe
    from edgeship.converters.source import refuse_tflite

    refuse_tflite(Path(model))
    if isinstance(recipe, str):
        recipe = Recipe.from_name(recipe, calibration=_path(calib), samples=calib_samples, train=_path(train),
                                  io=io, **recipe_options)
    return run(Path(model), recipe, Path(out), signature=signature, batch=batch, eval_data=_path(eval_data),
               output=output, force=force, progress=progress, custom_objects=tuple(custom_objects))


def inspect(path: PathArg) -> dict[str, Any]:
    """What a .tflite, SavedModel or Keras file holds (the `edgeship inspect --json` document)."""
    from edgeship.converters.inspect import inspect_path

    return inspect_path(Path(path))


def push(bundle: BundleArg, target: TargetArg, *, accept_new_host: bool = False,
         progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Place a bundle's model on a board (resumable; a no-op when it is already there): board, model, upload."""
    from edgeship.sdk import device

    return device.push(_bundle(bundle), _target(target), accept_new_host=accept_new_host, progress=progress)


def bench(bundle: BundleArg, target: TargetArg, *, options: RunOptions | None = None, data: PathArg | None = None,
          accept_new_host: bool = False) -> RunResult:
    """Latency of a bundle's model on a board (load, first inference, warm-up, steady-state percentiles)."""
    from edgeship.sdk import device

    return device.bench(_bundle(bundle), _target(target), options=options, data=_path(data),
                        accept_new_host=accept_new_host)


def evaluate(bundle: BundleArg, target: TargetArg, data: PathArg, *, options: RunOptions | None = None,
             accept_new_host: bool = False) -> RunResult:
    """Accuracy of a bundle's model on a board against labelled data (x, y), next to the host's answers."""
    from edgeship.sdk import device

    return device.evaluate(_bundle(bundle), _target(target), Path(data), options=options,
                           accept_new_host=accept_new_host)


def check_gates(result: RunResult, *, min_accuracy: float | None = None, max_p90_ms: float | None = None,
                min_agreement: float | None = None) -> None:
    """Raise GateError naming every gate (in %, ms) the result missed; return None when it met them all."""
    from edgeship.sdk import device

    device.check_gates(result, min_accuracy=min_accuracy, max_p90_ms=max_p90_ms, min_agreement=min_agreement)


def write_result(result: RunResult, directory: PathArg) -> Path:
    """Write a result as one JSON document in `directory` (what `--results-dir` does); its path."""
    from edgeship.sdk.fleet import write_result as write

    return write(result, Path(directory))


def report(results: Sequence[PathArg], *, html: PathArg | None = None, markdown: PathArg | None = None) -> Report:
    """Load result documents (files or directories) and, if asked, write the HTML and Markdown reports."""
    from edgeship.sdk.report import load_results, render_html, render_markdown

    rep = load_results([Path(p) for p in results])
    for where, render in ((html, render_html), (markdown, render_markdown)):
        if where is not None:
            Path(where).parent.mkdir(parents=True, exist_ok=True)
            Path(where).write_text(render(rep), encoding="utf-8")
    return rep
