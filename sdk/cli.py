"""The `edgeship` command: a thin client of the converters and sdk libraries.

This module parses arguments, calls the library and picks exit codes; what a command prints
about a result is drawn by its rendering half, sdk/render.py (together, the only code that prints).
Every EdgeshipError becomes one line on stderr and its exit code, an error about one option
worded with the command's flag (_cli_wording); anything else becomes one "internal error" line
(``--debug`` shows tracebacks and TensorFlow's own logs). Heavy imports happen inside
commands, so ``edgeship --help`` and ``edgeship inspect x.tflite`` never load TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from edgeship.device_agent import __version__
from edgeship.device_agent.options import STATES, RunOptions
from edgeship.device_agent.runtime import RUNTIMES
from edgeship.sdk.errors import EdgeshipError, UsageError
from edgeship.sdk.extras import missing_extra
from edgeship.sdk.render import Bars as _Bars
from edgeship.sdk.render import LiveTable as _LiveTable
from edgeship.sdk.render import emit_json as _emit_json
from edgeship.sdk.render import emulator_where as _where
from edgeship.sdk.render import fleet_table as _fleet_table
from edgeship.sdk.render import kib as _kib
from edgeship.sdk.render import printable as _printable
from edgeship.sdk.render import progress_printer as _progress
from edgeship.sdk.render import report_run as _report_run
from edgeship.sdk.render import show_bundle as _show_bundle
from edgeship.sdk.render import show_bundle_info as _show_bundle_info
from edgeship.sdk.render import show_checks as _show_checks
from edgeship.sdk.render import show_compatible as _show_compatible
from edgeship.sdk.render import show_debug_quant as _show_debug_quant
from edgeship.sdk.render import show_host_accuracy as _show_host_accuracy
from edgeship.sdk.render import show_host_eval as _show_host_eval
from edgeship.sdk.render import show_keras as _show_keras
from edgeship.sdk.render import show_ops as _show_ops
from edgeship.sdk.render import show_ping as _show_ping
from edgeship.sdk.render import show_saved_model as _show_saved_model
from edgeship.sdk.render import show_setup as _show_setup
from edgeship.sdk.render import show_tflite as _show_tflite
from edgeship.sdk.render import source_text as _source_text
from edgeship.sdk.render import table as _table

EXIT_INTERNAL = 70  # EX_SOFTWARE
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
_INTERRUPTED_NOTE = "a push or run left half-way resumes where it stopped next time"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so a terminated command unwinds like Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _usage_line(exc: click.UsageError, command_path: str | None = None) -> str:
    """A command line click rejects, as one line: the problem and the --help to read.

    A group given no command says which commands it has, instead of printing its whole help.
    """
    ctx = exc.ctx
    path = ctx.command_path if ctx is not None else command_path
    if isinstance(exc, click.exceptions.NoArgsIsHelpError) and ctx is not None and isinstance(ctx.command, click.Group):
        names = sorted(ctx.command.list_commands(ctx))
        return f"{path} needs a command: {', '.join(names[:-1])} or {names[-1]} (see '{path} --help')"
    return exc.format_message() + (f" (see '{path} --help')" if path else "")


class _Group(click.Group):
    """Runs a command and turns failures into one line and an exit code."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        """The group's own options parsed (`edgeship --bogus`, a bare `edgeship`): a mistake is one line, exit 2."""
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            _fail(_usage_line(exc, info_name), 2, None)

    def invoke(self, ctx: click.Context) -> Any:
        import threading

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return super().invoke(ctx)
        except EdgeshipError as exc:
            _fail(_cli_wording(self, ctx, exc), exc.exit_code, exc)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
            note = f"; {_INTERRUPTED_NOTE}" if ctx.invoked_subcommand in ("push", "bench", "eval") else ""
            if isinstance(exc, Terminated):
                _fail(f"terminated (SIGTERM){note}", EXIT_TERMINATED, None)
            _fail(f"interrupted{note}", EXIT_INTERRUPTED, None)
        except click.UsageError as exc:  # unknown option, missing argument, a group without its command: one line too
            _fail(_usage_line(exc), 2, None)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except ModuleNotFoundError as exc:  # an optional dependency this install lacks: name the extra that has it
            hint = missing_extra(exc.name)
            if hint is not None:
                _fail(hint, 1, exc)
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                  EXIT_INTERNAL, exc)
        except Exception as exc:  # a bug: still one line, with the way to get the traceback
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                  EXIT_INTERNAL, exc)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _flag(command: click.Command, option: str) -> str | None:
    """The long flag of ``command`` (or of a command under it) for the library parameter ``option``.

    A click parameter of that name, else the flag spelled like it (``io`` is ``--io`` whatever click calls it).
    """
    for param in command.params:
        if param.name == option and isinstance(param, click.Option):
            return max(param.opts, key=len)
    spelled = "--" + option.replace("_", "-")
    for param in command.params:
        if isinstance(param, click.Option) and spelled in param.opts:
            return spelled
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            flag = _flag(sub, option)
            if flag:
                return flag
    return None


def _cli_wording(group: click.Group, ctx: click.Context, exc: EdgeshipError) -> str:
    """An error about one argument, worded with the command's flag (the library names its parameter)."""
    if not exc.option:
        return str(exc)
    command = group.get_command(ctx, ctx.invoked_subcommand or "")
    flag = (_flag(command, exc.option) if command is not None else None) or _flag(group, exc.option)
    return f"{flag or exc.option}: {exc.detail}"


def _debug() -> bool:
    return bool(os.environ.get("EDGESHIP_DEBUG"))


def _fail(message: str, code: int, exc: BaseException | None) -> NoReturn:
    if exc is not None and _debug():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    from edgeship.sdk.report import safe_text

    # Lines (an SSH stderr tail) joined with " | "; each part escaped, as it may quote what a board sent.
    one_line = " | ".join(safe_text(part.strip()) for part in message.splitlines() if part.strip())
    click.echo(f"edgeship: error: {one_line}", err=True)
    sys.exit(code)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")


# --- shell completion (docs/cli.md, "Shell completion") ------------------------------------

def _complete_boards(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Board names for the shell: the catalogue with the user's boards file (and --boards, when given first).

    After a comma (``--board a,b``) the name after the last comma is completed. A boards file that
    does not load completes nothing rather than printing an error into the shell.
    """
    from click.shell_completion import CompletionItem

    from edgeship.sdk.catalogue import load_catalogue

    given = ctx.find_root().params.get("boards_file")
    try:
        boards = load_catalogue(Path(given) if given else None)
    except EdgeshipError:
        return []
    head, comma, last = incomplete.rpartition(",")
    if param.name == "names":  # emulate up/down: only emulated boards
        boards = {n: s for n, s in boards.items() if s.transport == "emulated" and s.emulator}
    names = ["local", *(n for n in boards if n != "local")] if param.name != "names" else list(boards)
    return [CompletionItem(head + comma + n, help=boards[n].description if n in boards else None)
            for n in names if n.startswith(last)]


def _complete_recipes(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    from edgeship.converters.recipe import RECIPES

    return [CompletionItem(r) for r in RECIPES if r.startswith(incomplete)]


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgeship")
@click.option("--debug", is_flag=True, help="Show tracebacks and TensorFlow's logs (also EDGESHIP_DEBUG=1).")
@click.option("--boards", "boards_file", type=click.Path(path_type=Path), default=None,
              help="Your boards file, added to the shipped boards.yaml (also EDGESHIP_BOARDS).")
def main(debug: bool, boards_file: Path | None) -> None:
    """Ship TensorFlow models to edge boards: convert, inspect, analyse and evaluate them."""
    if debug:
        os.environ["EDGESHIP_DEBUG"] = "1"
    if boards_file is not None:
        os.environ["EDGESHIP_BOARDS"] = str(boards_file)
    logging.basicConfig(level=logging.DEBUG if _debug() else logging.WARNING, format="edgeship: %(levelname)s: %(message)s")
    if not _debug():  # paramiko logs its transport thread's failures; ours are reported once, as one line
        logging.getLogger("paramiko").setLevel(logging.CRITICAL + 1)


# --- convert ---------------------------------------------------------------------------

def _parse_range(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError as exc:
        raise UsageError(f"expected LO,HI such as 0,1 or -1,1 (got {value!r})", option="image_range") from exc
    return lo, hi


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--recipe", "-r", required=True, metavar="RECIPE", shell_complete=_complete_recipes,
              help="float32 | float16 | dynamic | int8 | int16x8 | qat")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Bundle directory to create.")
@click.option("--signature", default="serving_default", show_default=True, help="SavedModel signature to convert.")
@click.option("--batch", default=1, show_default=True, type=int, help="Static batch size of the converted model.")
@click.option("--io", "io_type", default=None, metavar="TYPE",
              help="Model input/output type: int8/qat: int8 (default) | uint8 | float32; int16x8: int16 (default) | float32.")
@click.option("--calib", "calibration", type=click.Path(path_type=Path),
              help="int8, int16x8: calibration data, .npz (x or one array per input) or an image folder.")
@click.option("--calib-samples", type=int, default=None, help="int8: how many calibration samples to use [200].")
@click.option("--image-range", default=None, metavar="LO,HI", help="int8 with an image folder: map pixels 0..255 to LO..HI [0,1].")
@click.option("--train", type=click.Path(path_type=Path),
              help="qat, --sparsity, --clusters: training data .npz with x (or per-input arrays) and y.")
@click.option("--epochs", type=int, default=None, help="Fine-tuning epochs per stage [qat 3, pruning 4, clustering 3].")
@click.option("--learning-rate", type=float, default=None,
              help="Fine-tuning Adam learning rate [qat 1e-5, pruning 1e-3, clustering 1e-4].")
@click.option("--qat-leave-float", "leave_float", default=None, metavar="LAYER,...",
              help="qat: layers to leave unwrapped (trained in float).")
@click.option("--qat-leave-unsupported", "leave_unsupported_float", is_flag=True,
              help="qat: leave layers QAT cannot wrap in float instead of failing.")
@click.option("--sparsity", type=float, default=None, metavar="S",
              help="Any recipe: prune to this fraction of zero weights (0..1), fine-tuning on --train.")
@click.option("--prune-block", type=int, default=None, metavar="N",
              help="Pruning: zero Dense weights in runs of N along the input axis [auto: 16 where it divides].")
@click.option("--clusters", type=int, default=None, metavar="K",
              help="Any recipe: cluster each weight tensor to K shared values, fine-tuning on --train.")
@click.option("--batch-size", type=int, default=None, metavar="N",
              help="Fine-tuning: global batch, split across replicas [32].")
@click.option("--strategy", default=None, type=click.Choice(["default", "mirrored", "multiworker"]),
              help="Fine-tuning: tf.distribute strategy (multiworker reads TF_CONFIG) [default].")
@click.option("--replicas", type=int, default=None, metavar="N",
              help="mirrored on a machine without GPUs: split the CPU into N logical devices.")
@click.option("--worker-timeout", type=float, default=None, metavar="SECONDS",
              help="multiworker: give up when not every worker in TF_CONFIG has joined by then [600].")
@click.option("--keep-float", default=None, metavar="LAYER,...|auto:N",
              help="int8: leave these layers (or the N with the worst quantization error) in float.")
@click.option("--int8-strict", is_flag=True,
              help="int8/int16x8/qat: refuse a model in which the converter leaves ops float (default: keep them float and name them).")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path), help="Measure host accuracy on this .npz (x, y).")
@click.option("--output", default=None, metavar="NAME",
              help="--eval: the output that y scores, by name [the source model's first output].")
@click.option("--custom-objects", "custom_objects", multiple=True, metavar="FILE.py|MODULE",
              help="Import this module first: it defines (registers) the model's custom Keras layers. Repeatable.")
@click.option("--force", is_flag=True, help="Replace an existing bundle directory.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@json_option
def convert(model: Path, recipe: str, out: Path, signature: str, batch: int, io_type: str | None, calibration: Path | None,
            calib_samples: int | None, image_range: str | None, train: Path | None, epochs: int | None,
            learning_rate: float | None, leave_float: str | None, leave_unsupported_float: bool,
            sparsity: float | None, prune_block: int | None, clusters: int | None, batch_size: int | None,
            strategy: str | None, replicas: int | None, worker_timeout: float | None, keep_float: str | None,
            int8_strict: bool, eval_data: Path | None, output: str | None, custom_objects: tuple[str, ...],
            force: bool, quiet: bool, as_json: bool) -> None:
    """Convert a .keras/.h5 model or SavedModel directory into a TFLite bundle.

    The bundle holds model.tflite, manifest.json and ops/ (selective op registration
    for TFLite and TFLite Micro). It is written atomically: on any error, nothing is left.
    """
    from edgeship.converters.recipe import Recipe
    from edgeship.converters.source import refuse_tflite

    refuse_tflite(model)  # before the recipe's own checks: a .tflite needs `bundle`, not other options
    r = Recipe.from_name(
        recipe, io=io_type, calibration=calibration, samples=calib_samples, image_range=_parse_range(image_range),
        train=train, epochs=epochs, learning_rate=learning_rate,
        leave_float=tuple(n.strip() for n in leave_float.split(",") if n.strip()) if leave_float else None,
        leave_unsupported_float=leave_unsupported_float or None, sparsity=sparsity, prune_block=prune_block,
        clusters=clusters, batch_size=batch_size, strategy=strategy, replicas=replicas, worker_timeout=worker_timeout,
        keep_float=keep_float, int8_strict=int8_strict)
    if not model.exists():
        from edgeship.sdk.errors import ModelNotFoundError

        raise ModelNotFoundError(f"{model}: no such file or directory")
    from edgeship.converters.convert import convert as run

    result = run(model, r, out, signature=signature, batch=batch, eval_data=eval_data, output=output, force=force,
                 progress=_progress(not quiet and not as_json), custom_objects=custom_objects)
    m = result.manifest
    for warning in m.accuracy.warnings if m.accuracy else []:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        _emit_json({"bundle": str(result.bundle), "manifest": m.model_dump(mode="json")})
        return
    _show_bundle(result.bundle, m)
    if m.accuracy:
        _show_host_accuracy(m.accuracy)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Bundle directory to create.")
@click.option("--force", is_flag=True, help="Replace an existing bundle directory.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@json_option
def bundle(model: Path, out: Path, force: bool, quiet: bool, as_json: bool) -> None:
    """Make a bundle of a .tflite that another tool made, as it is (no conversion, no TensorFlow).

    The manifest is read from the flatbuffer: I/O with quantization, operators (custom ones
    named), min runtime, and what the model computes in; ops/ registers its operators. Then
    check, push, bench, eval and report work on it like on a converted bundle.
    """
    from edgeship.converters.bundle import bundle_tflite

    result = bundle_tflite(model, out, force=force, progress=_progress(not quiet and not as_json))
    m = result.manifest
    if as_json:
        _emit_json({"bundle": str(result.bundle), "manifest": m.model_dump(mode="json")})
        return
    _show_bundle(result.bundle, m)


# --- inspect ---------------------------------------------------------------------------

@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@json_option
def inspect(path: Path, as_json: bool) -> None:
    """Describe a .tflite file, a bundle directory, a .keras/.h5 model or a SavedModel directory."""
    from edgeship.converters.inspect import inspect_path

    info = inspect_path(path)
    if as_json:
        _emit_json(info)
        return
    {"tflite": _show_tflite, "savedmodel": _show_saved_model, "keras": _show_keras,
     "bundle": _show_bundle_info}[info["kind"]](info)


# --- ops -------------------------------------------------------------------------------

def _model_file(path: Path) -> Path:
    return path / "model.tflite" if path.is_dir() else path


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Write ops.json, registration.cc, micro_op_resolver.h here.")
@click.option("--namespace", default="", help="C++ namespace for RegisterSelectedOps.")
@json_option
def ops(models: tuple[Path, ...], out: Path | None, namespace: str, as_json: bool) -> None:
    """The union of the operators of several models (.tflite files or bundles), and its registration code."""
    from edgeship.converters.opsgen import OpSet, render_micro, render_tflite
    from edgeship.converters.tflite_model import TFLiteModel

    loaded = [(_model_file(p).name if not p.is_dir() else f"{p.name}/model.tflite", TFLiteModel.from_path(_model_file(p)))
              for p in models]
    opset = OpSet.of(loaded)
    if out is not None:
        if out.exists() and not out.is_dir():
            from edgeship.sdk.errors import BundleError

            raise BundleError(f"{out}: exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        (out / "ops.json").write_text(json.dumps(opset.to_json(), indent=2) + "\n")
        (out / "registration.cc").write_text(render_tflite(opset, namespace))
        (out / "micro_op_resolver.h").write_text(render_micro(opset))
    if as_json:
        _emit_json(opset.to_json())
        return
    _show_ops(opset, len(loaded))
    if out is not None:
        click.echo(f"wrote {out}/ops.json, registration.cc, micro_op_resolver.h")


# --- eval-host -------------------------------------------------------------------------

@main.command("eval-host")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Test data .npz: x (or one array per input) and y.")
@click.option("--output", default=None, metavar="NAME",
              help="The output that y scores, by name [the bundle manifest's first source output, else the "
                   "first signature output].")
@click.option("--state", type=click.Choice(["reset", "keep"]), default="reset", show_default=True,
              help="Variable tensors (LSTM state) between samples: reset before each, or keep for streaming models.")
@click.option("--threads", type=int, default=None, help="Interpreter threads.")
@click.option("--runtime", default=None, type=click.Choice(["ai_edge_litert", "tflite_runtime", "tensorflow"]),
              help="Force a runtime (default: the first importable of these).")
@json_option
def eval_host(model: Path, data: Path, output: str | None, state: str, threads: int | None, runtime: str | None,
              as_json: bool) -> None:
    """Top-1 accuracy and latency of a .tflite (or bundle) with the host's TFLite interpreter.

    Inputs are quantized and outputs dequantized with the model's own scale and zero point.
    This is the reference every board result is compared with.
    """
    from edgeship.sdk.hosteval import eval_host as run

    report = run(model, data, output=output, threads=threads, runtime=runtime, state=state)
    if as_json:
        _emit_json(report)
        return
    _show_host_eval(report)


# --- debug-quant -----------------------------------------------------------------------

@main.command("debug-quant")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", required=True, type=click.Path(path_type=Path),
              help="Calibration data: .npz (x or one array per input) or an image folder; layers are ranked on it.")
@click.option("--eval", "eval_data", required=True, type=click.Path(path_type=Path),
              help="Test data .npz (x, y): float vs int8 accuracy and output error.")
@click.option("--signature", default="serving_default", show_default=True, help="SavedModel signature to debug.")
@click.option("--batch", default=1, show_default=True, type=int, help="Static batch size, as for convert.")
@click.option("--calib-samples", type=int, default=None, help="Calibration samples to use [200, or all if fewer].")
@click.option("--image-range", default=None, metavar="LO,HI", help="Image folder calibration: map pixels 0..255 to LO..HI [0,1].")
@click.option("--top", default=20, show_default=True, type=int, metavar="N", help="Show the N worst layers (0: all).")
@click.option("--try-float", "trials", default=3, show_default=True, type=int, metavar="N",
              help="Also measure accuracy and size with the 1..N worst layers in float (what --keep-float auto:N gives).")
@click.option("--out", "-o", "out", type=click.Path(path_type=Path), default=None,
              help="Write the result document here [.edgeship/results/debug-quant-host-<sha>-<time>.json].")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@json_option
def debug_quant(model: Path, calib: Path, eval_data: Path, signature: str, batch: int, calib_samples: int | None,
                image_range: str | None, top: int, trials: int, out: Path | None, quiet: bool, as_json: bool) -> None:
    """Per-layer int8 error of a model (TFLite's quantization debugger), worst layer first.

    RMSE/scale near 0.29 is plain rounding; much more marks a layer that quantizes badly.
    Keep such layers in float with `convert --recipe int8 --keep-float LAYER,...` (or auto:N).
    """
    from edgeship.converters.quantdebug import debug_quantization

    if top < 0:
        raise UsageError(f"must be 0 (all layers) or more (got {top})", option="top")
    report = debug_quantization(model, calib, eval_data, signature=signature, batch=batch, samples=calib_samples,
                                image_range=_parse_range(image_range) or (0.0, 1.0), trials=trials,
                                progress=_progress(not quiet and not as_json))
    doc = report.result_document()
    if out is not None:
        if out.is_dir():
            raise UsageError(f"--out {out}: is a directory; give a file name such as result.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        written = out
    else:
        from edgeship.sdk.fleet import write_result

        written = write_result(doc, Path(".edgeship/results"))
    if as_json:
        _emit_json(doc)
        return
    _show_debug_quant(report, top)
    click.echo(f"wrote {written}")


# --- boards: push / bench / eval / ping ------------------------------------------------------

board_option = click.option("--board", "-b", "board_spec", default=None, metavar="BOARD", shell_complete=_complete_boards,
                            help="A name from boards.yaml (several: a,b,c), or local | ssh://user@host:port?python=...&key=... | "
                                 "serial://<device or URL>?baud=N  [default: $EDGESHIP_BOARD, else local]")
accept_option = click.option("--accept-new-host", is_flag=True,
                             help="SSH: trust an unknown host key and record it (like OpenSSH accept-new).")


def _default_board() -> str | None:
    """The board of $EDGESHIP_BOARD (commands given no board), if set."""
    from edgeship.sdk.catalogue import BOARD_ENV_VAR

    return os.environ.get(BOARD_ENV_VAR, "").strip() or None


def _board_spec(given: str | None) -> str:
    """--board as given, else $EDGESHIP_BOARD, else local (the agent on this machine)."""
    return given if given is not None else (_default_board() or "local")


def _board(spec: str | None) -> Any:
    from edgeship.sdk.catalogue import BOARD_ENV_VAR, resolve

    if spec is None and _default_board() is not None:
        try:
            return resolve(_board_spec(None))
        except UsageError as exc:
            raise UsageError(f"{BOARD_ENV_VAR}={_default_board()}: {exc}") from exc
    return resolve(_board_spec(spec))


all_option = click.option("--all", "all_boards", is_flag=True, help="Every catalogue board that is not an example profile.")
jobs_option = click.option("--jobs", "-j", type=int, default=4, show_default=True, help="Boards at once (several boards).")



def _board_entries(outcomes: list[Any]) -> list[dict[str, Any]]:
    """--json of a command on several boards: one entry per board (sdk.schemas.board_entry)."""
    from edgeship.sdk.schemas import board_entry

    return [board_entry(o.board, o.doc, error=o.error) for o in outcomes]


def _push_line(doc: dict[str, Any]) -> None:
    doc = _printable(doc)
    up = doc["upload"]
    how = ("already on the board, nothing sent" if up["skipped"] else
           f"sent {_kib(up['sent_bytes'])} ({up['encoding']}"
           + (f", resumed at {_kib(up['resumed_from'])}" if up["resumed_from"] else "") + f") in {up['seconds']:.2f} s")
    click.echo(f"{doc['board']}: model {doc['model_sha256'][:12]} ({_kib(up['size'])}): {how}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@board_option
@all_option
@jobs_option
@accept_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@json_option
def push(bundle: Path, board_spec: str | None, all_boards: bool, jobs: int, accept_new_host: bool, quiet: bool,
         as_json: bool) -> None:
    """Place a bundle's model on boards (resumes an interrupted push; skips an unchanged model)."""
    from edgeship.sdk.device import push as run

    boards = _fleet_boards(board_spec, all_boards)
    if len(boards) > 1:
        from edgeship.sdk.fleet import push_boards, push_failure

        with _LiveTable([b.name for b in boards], not (quiet or as_json)) as live:
            outcomes = push_boards(bundle, boards, accept_new_host=accept_new_host, jobs=jobs, on_update=live.update)
        if as_json:
            _emit_json(_board_entries(outcomes))
        for o in outcomes if not as_json else []:
            if o.doc is not None:
                _push_line(o.doc)
            else:
                click.echo(f"{o.board}: FAILED: {_printable(o.error)}")
        problem = push_failure(outcomes)
        if problem is not None:
            raise problem
        return
    with _Bars(not (quiet or as_json)) as bars:
        doc = run(bundle, boards[0], accept_new_host=accept_new_host, progress=bars.upload, phase=bars.phase)
    if as_json:
        from edgeship.sdk.schemas import board_entry

        _emit_json([board_entry(doc["board"], doc)])
        return
    _push_line(doc)


def named_delegates(specs: tuple[str, ...], required: bool) -> list[dict[str, Any]]:
    """--delegate NAME[:k=v,...] values as a run's `delegates` (sdk.device.parse_delegates)."""
    from edgeship.sdk.device import parse_delegates

    return [d.to_json() for d in parse_delegates(specs, required=required)]


def _run_options(runs: int | None, warmup: int | None, min_seconds: float | None, threads: int | None,
                 delegate: tuple[str, ...], no_xnnpack: bool, runtime: str | None, require_delegate: bool) -> RunOptions:
    from edgeship.sdk.device import parse_delegates

    d = RunOptions()  # an option not given is its default
    return RunOptions(runs=d.runs if runs is None else runs, warmup=d.warmup if warmup is None else warmup,
                      min_seconds=d.min_seconds if min_seconds is None else min_seconds, threads=threads,
                      runtime=runtime, xnnpack=not no_xnnpack, delegates=parse_delegates(delegate, required=require_delegate))


run_options = [
    click.option("--runs", type=int, default=None, help=f"Steady-state runs at least [{RunOptions.runs}]."),
    click.option("--warmup", type=int, default=None, help=f"Warm-up runs [{RunOptions.warmup}]."),
    click.option("--min-seconds", type=float, default=None,
                 help=f"Steady state lasts at least this long [{RunOptions.min_seconds}]."),
    click.option("--threads", type=int, default=None, help="Interpreter threads."),
    click.option("--delegate", multiple=True, metavar="NAME[:k=v,...]",
                 help="External delegate the board allows, by name, and its options."),
    click.option("--require-delegate", is_flag=True, help="Fail instead of falling back when a delegate does not load."),
    click.option("--no-xnnpack", is_flag=True, help="Disable the default XNNPACK delegate."),
    click.option("--runtime", type=click.Choice(list(RUNTIMES)), default=None, help="Force the board's runtime."),
    click.option("--max-p90-ms", type=float, default=None, help="Gate: fail (exit 3) if p90 latency is above this."),
    click.option("--all", "all_boards", is_flag=True, help="Run on every catalogue board that is not an example profile."),
    click.option("--jobs", "-j", type=int, default=4, show_default=True, help="Boards run at once (fleet runs)."),
    click.option("--results-dir", type=click.Path(path_type=Path), default=Path(".edgeship/results"), show_default=True,
                 help="Where each run's result JSON is written (docs/results.md)."),
]


def _with(options: list[Any]) -> Callable[[Any], Any]:
    def apply(f: Any) -> Any:
        for opt in reversed(options):
            f = opt(f)
        return f

    return apply


def _fleet_boards(board_spec: str | None, all_boards: bool) -> list[Any]:
    from edgeship.sdk.catalogue import load_catalogue

    if all_boards:
        return [_board(n) for n, s in load_catalogue().items() if not s.example]
    if board_spec is None and "," not in (_default_board() or ""):
        return [_board(None)]
    return [_board(n.strip()) for n in _board_spec(board_spec).split(",") if n.strip()]


def _run_command(kind: str, bundle: Path, board_spec: str | None, data: Path | None, accept_new_host: bool, quiet: bool,
                 as_json: bool, opts: RunOptions, gates: dict[str, Any], all_boards: bool = False, jobs: int = 4,
                 results_dir: Path | None = None) -> None:
    from edgeship.sdk.fleet import failure, run_boards
    from edgeship.sdk.schemas import run_entry

    command = click.get_current_context().command

    def flag(option: str) -> str | None:  # a gate by the flag that set it
        return _flag(command, option)

    boards = _fleet_boards(board_spec, all_boards)
    if len(boards) == 1:
        with _Bars(not (quiet or as_json)) as bars:
            (outcome,) = run_boards(kind, bundle, boards, data=data, options=opts, gates=gates,
                                    accept_new_host=accept_new_host, results_dir=results_dir,
                                    upload_progress=bars.upload, run_progress=bars.run, phase=bars.phase)
        if outcome.result is not None:  # one board: a run that could not happen has raised
            if as_json:
                _emit_json([run_entry(outcome, flag)])
            else:
                _report_run(outcome.result.to_json())
        problem = failure([outcome], flag)
        if problem is not None:
            raise problem
        return
    with _LiveTable([b.name for b in boards], not (quiet or as_json)) as live:
        outcomes = run_boards(kind, bundle, boards, data=data, options=opts, gates=gates, accept_new_host=accept_new_host,
                              jobs=jobs, results_dir=results_dir, on_update=live.update)
    if as_json:
        _emit_json([run_entry(o, flag) for o in outcomes])
    else:
        _fleet_table(kind, outcomes, flag)
    problem = failure(outcomes, flag)
    if problem is not None:
        raise problem


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@board_option
@click.option("--data", type=click.Path(path_type=Path), help="Feed these samples (.npz) instead of random inputs.")
@_with(run_options)
@accept_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@json_option
def bench(bundle: Path, board_spec: str | None, data: Path | None, runs: int | None, warmup: int | None,
          min_seconds: float | None, threads: int | None, delegate: tuple[str, ...], require_delegate: bool,
          no_xnnpack: bool, runtime: str | None, max_p90_ms: float | None, all_boards: bool, jobs: int,
          results_dir: Path, accept_new_host: bool, quiet: bool, as_json: bool) -> None:
    """Latency of a bundle's model on a board: load, first inference, warm-up, steady state percentiles."""
    _run_command("bench", bundle, board_spec, data, accept_new_host, quiet, as_json,
                 _run_options(runs, warmup, min_seconds, threads, delegate, no_xnnpack, runtime, require_delegate),
                 {"max_p90_ms": max_p90_ms}, all_boards, jobs, results_dir)


@main.command("eval")
@click.argument("bundle", type=click.Path(path_type=Path))
@board_option
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Test data .npz: x (or per-input arrays) and y.")
@_with(run_options)
@click.option("--min-accuracy", type=float, default=None, help="Gate: fail (exit 3) below this top-1 accuracy, in %.")
@click.option("--min-agreement", type=float, default=None, help="Gate: fail (exit 3) below this argmax agreement with the host, in %.")
@click.option("--output", default=None, metavar="NAME",
              help="The output that y scores, by name [the bundle manifest's first source output].")
@click.option("--state", type=click.Choice(list(STATES)), default=RunOptions.state, show_default=True,
              help="Variable tensors (LSTM state) between samples: reset before each, or keep for streaming models.")
@accept_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@json_option
def eval_board(bundle: Path, board_spec: str | None, data: Path, runs: int | None, warmup: int | None,
               min_seconds: float | None, threads: int | None, delegate: tuple[str, ...], require_delegate: bool,
               no_xnnpack: bool, runtime: str | None, max_p90_ms: float | None, all_boards: bool, jobs: int,
               results_dir: Path, min_accuracy: float | None, min_agreement: float | None, output: str | None,
               state: str, accept_new_host: bool, quiet: bool, as_json: bool) -> None:
    """Accuracy on a board, and agreement with the host's outputs on the same samples."""
    from dataclasses import replace

    opts = _run_options(runs, warmup, min_seconds, threads, delegate, no_xnnpack, runtime, require_delegate)
    opts = replace(opts, state=state)
    if output is not None:  # checked once here, not once per board of a fleet
        from edgeship.converters.tflite_model import TFLiteModel
        from edgeship.sdk.device import load_bundle
        from edgeship.sdk.hosteval import scored_output

        manifest, model = load_bundle(bundle)
        opts = replace(opts, output=scored_output(TFLiteModel.from_bytes(model, source=str(bundle)), manifest, output))
    _run_command("eval", bundle, board_spec, data, accept_new_host, quiet, as_json, opts,
                 {"max_p90_ms": max_p90_ms, "min_accuracy": min_accuracy, "min_agreement": min_agreement},
                 all_boards, jobs, results_dir)


@main.group()
def agent() -> None:
    """Build or run the on-board agent."""


@agent.command("build")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("build/edgeship-agent.pyz"), show_default=True,
              help="Where to write the zipapp.")
@json_option
def agent_build(out: Path, as_json: bool) -> None:
    """Write the agent as one zipapp file (stdlib + numpy + a TFLite runtime on the board)."""
    from edgeship.sdk.agentbuild import write_zipapp

    path, sha = write_zipapp(out)
    serial = f"python3 {path.name} --serial /dev/ttyS0 --baud 115200 --store ~/.edgeship/store"
    stdio = f"python3 {path.name} --stdio --store ~/.edgeship/store"
    if as_json:
        _emit_json({"path": str(path), "size": path.stat().st_size, "sha256": sha, "command": stdio})
        return
    click.echo(f"wrote {path} ({_kib(path.stat().st_size)}, sha256 {sha[:12]})")
    click.echo("copy it to the board (which needs Python 3 with numpy and a TFLite runtime: pip install 'edgeship[agent]'), "
               "then run there:")
    for command, what in ((serial, "a serial board: serve forever on its UART"),
                          (stdio, "serve one host on stdin/stdout")):
        click.echo(f"  {command}    # {what}")


@agent.command("serve", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def agent_serve(args: tuple[str, ...]) -> None:
    """Run the agent here: --stdio, or --serial PATH [--baud N] (see `python -m edgeship.device_agent --help`)."""
    from edgeship.device_agent.__main__ import main as agent_main

    sys.exit(agent_main(list(args)))


@main.group()
def emulate() -> None:
    """Keep emulated boards running between commands (they also start on demand)."""


@emulate.command("setup")
@json_option
def emulate_setup(as_json: bool) -> None:
    """Provision the emulated boards (idempotent; the emu-pi root is cached), and say what was done."""
    from edgeship.sdk.emulate import pi

    root = pi.provision(pi.DEFAULT_CACHE, progress=None if as_json else (lambda m: click.echo(f"  {m}", err=True)))
    doc = {"emu-pi": {"root": str(root.root), "provisioned": root.provisioned, "download_bytes": root.download_bytes,
                      "root_bytes": root.root_bytes, "seconds": round(root.seconds, 2), "report": root.report},
           "emu-mcu": "needs nothing beyond the tflite-micro package", "emu-serial": "needs nothing beyond pyserial"}
    if as_json:
        _emit_json(doc)
        return
    state = "provisioned" if root.provisioned else "already provisioned"
    click.echo(f"emu-pi: {state} in {root.seconds:.1f} s at {root.root} ({root.root_bytes / 1e6:.0f} MB; "
               f"downloaded {root.download_bytes / 1e6:.1f} MB)")
    click.echo("emu-mcu, emu-serial: nothing to provision")


@emulate.command("up")
@click.argument("names", nargs=-1, required=True, metavar="NAME...", shell_complete=_complete_boards)
@json_option
def emulate_up(names: tuple[str, ...], as_json: bool) -> None:
    """Start emulated boards in the background."""
    from edgeship.sdk.catalogue import load_catalogue
    from edgeship.sdk.emulate import services
    from edgeship.sdk.schemas import board_entry

    boards = load_catalogue()
    entries = []
    for name in names:
        spec = boards.get(name)
        if spec is None or spec.transport != "emulated" or spec.emulator is None:
            raise UsageError(f"{name!r} is not an emulated board; emulated boards: "
                             f"{', '.join(n for n, s in boards.items() if s.transport == 'emulated')}")
        state = services.up(spec.emulator, Path(spec.store.dir).expanduser(), spec.serial.baud if spec.serial else 115200)
        entries.append(board_entry(name, state))
        if not as_json:
            click.echo(f"{name}: up (pid {state['pid']}, {_where(state)})")
    if as_json:
        _emit_json(entries)


@emulate.command("down")
@click.argument("names", nargs=-1, required=True, metavar="NAME...", shell_complete=_complete_boards)
@json_option
def emulate_down(names: tuple[str, ...], as_json: bool) -> None:
    """Stop emulated boards started with `emulate up`."""
    from edgeship.sdk.catalogue import load_catalogue
    from edgeship.sdk.emulate import services
    from edgeship.sdk.schemas import board_entry

    boards = load_catalogue()
    entries = []
    for name in names:
        spec = boards.get(name)
        emulator = spec.emulator if spec is not None and spec.emulator else name
        stopped = services.down(emulator)
        entries.append(board_entry(name, {"was_running": stopped}))
        if not as_json:
            click.echo(f"{name}: {'stopped' if stopped else 'was not running'}")
    if as_json:
        _emit_json(entries)


@emulate.command("status")
@json_option
def emulate_status(as_json: bool) -> None:
    """Which emulated boards are kept up."""
    from edgeship.sdk.emulate import services

    states = {name: services.running(name) for name in services.EMULATORS}
    if as_json:
        _emit_json(states)
        return
    for name, state in states.items():
        click.echo(f"{name}: " + (f"up (pid {state['pid']}, {_where(state)})" if state else "down (starts on demand)"))


@main.group()
def boards() -> None:
    """Reach boards."""


@boards.command("list")
@json_option
def boards_list(as_json: bool) -> None:
    """The boards: built-in ones, your boards file's, and --boards'; each with the file it comes from."""
    from edgeship.sdk.catalogue import load_sources

    boards = load_sources()
    if as_json:
        _emit_json({name: {**spec.model_dump(mode="json"), "source": _source_text(path, short=False)}
                    for name, (spec, path) in boards.items()})
        return
    _table("boards", ["name", "transport", "arch", "runtime", "source", "description"],
           [[name, s.transport, s.arch or "", s.runtime or "", _source_text(path),
             s.description if len(s.description) <= 60 else s.description[:59] + "…"]
            for name, (s, path) in boards.items()])


def _named(given: str | None, what: str) -> str:
    """A BOARD argument as given, else $EDGESHIP_BOARD; else a usage error that says both ways."""
    from edgeship.sdk.catalogue import BOARD_ENV_VAR

    name = given or _default_board()
    if name is None:
        raise UsageError(f"name a board{what}, or set {BOARD_ENV_VAR}=NAME (a board of `edgeship boards list`)")
    return name


@boards.command("show")
@click.argument("board_spec", metavar="BOARD", required=False, shell_complete=_complete_boards)
@json_option
def boards_show(board_spec: str | None, as_json: bool) -> None:
    """Everything the catalogue says about one board (default: $EDGESHIP_BOARD), and which file says it."""
    from edgeship.sdk.catalogue import BOARD_ENV_VAR, load_sources

    name = _named(board_spec, "")
    boards = load_sources()
    if name not in boards:
        origin = "" if board_spec else f"{BOARD_ENV_VAR}={name}: "
        raise UsageError(f"{origin}unknown board {name!r}; the catalogue has {', '.join(sorted(boards))}")
    spec, path = boards[name]
    data = spec.model_dump(mode="json")
    if as_json:
        _emit_json({"name": name, "source": _source_text(path, short=False), **data})
        return
    import yaml

    click.echo(f"# {name}: from {_source_text(path)}")
    click.echo(yaml.safe_dump({name: data}, sort_keys=False).rstrip())


@boards.command("add")
@click.argument("name")
@click.argument("address", metavar="URL")
@click.option("--runtime", type=click.Choice(["ai_edge_litert", "tflite_runtime", "tensorflow", "tflite_micro"]),
              help="The TFLite runtime the board runs (boards.yaml `runtime`).")
@click.option("--description", help="Shown by `boards list` (default: the address).")
@click.option("--force", is_flag=True, help="Replace a board of that name in your boards file.")
@json_option
def boards_add(name: str, address: str, runtime: str | None, description: str | None, force: bool,
               as_json: bool) -> None:
    """Add a board to your boards file (~/.config/edgeship/boards.yaml, XDG rules), keeping what it holds."""
    from edgeship.sdk.catalogue import add_board, entry_for

    path, kept = add_board(name, entry_for(address, description=description, runtime=runtime), force=force)
    if as_json:
        _emit_json({"board": name, "path": str(path), "comments_kept": kept})
        return
    click.echo(f"{name}: written to {path}" + ("" if kept else " (rewritten from its data: its comments could "
                                                               "not be kept in place)"))
    click.echo(f"  next: edgeship boards ping {name}")


@boards.command("ping")
@click.argument("board_specs", metavar="BOARD", nargs=-1, shell_complete=_complete_boards)
@click.option("--all", "all_boards", is_flag=True, help="Every board in the catalogue except example profiles.")
@accept_option
@json_option
def boards_ping(board_specs: tuple[str, ...], all_boards: bool, accept_new_host: bool, as_json: bool) -> None:
    """Connect to boards' agents: version, runtime, delegates and the round-trip time.

    Exits 1 when a board is unreachable or cannot run models (no numpy or no TFLite runtime on it).
    """
    from edgeship.sdk.catalogue import load_catalogue
    from edgeship.sdk.ping import failure, ping_board, ping_boards

    names = list(board_specs)
    if all_boards:
        names += [n for n, s in load_catalogue().items() if not s.example and n not in names]
    if not names:
        names = [_named(None, " or pass --all")]
    targets = [_board(None)] if not board_specs and not all_boards else [_board(n) for n in names]
    if len(targets) == 1:  # one board: its failure is the command's error, as it is
        results = [ping_board(targets[0], accept_new_host=accept_new_host)]
    else:
        results = ping_boards(targets, accept_new_host=accept_new_host)
    if as_json:
        _emit_json([r.entry() for r in results])
    else:
        _show_ping(results)
    problem = failure(results)
    if problem is not None:
        raise problem


@boards.command("setup")
@click.argument("board_spec", metavar="BOARD", shell_complete=_complete_boards)
@click.option("--dry-run", is_flag=True, help="Probe the board and print the plan; change nothing.")
@click.option("--device", "serial_device", default="ttyS0", show_default=True,
              help="Serial boards: the board's own tty that the agent serves on (in the printed steps).")
@accept_option
@json_option
def boards_setup(board_spec: str, dry_run: bool, serial_device: str, accept_new_host: bool, as_json: bool) -> None:
    """Prepare a board to run models: a venv with numpy and a TFLite runtime, the agent, then a ping.

    SSH boards are set up over SSH (idempotent: a second run changes nothing); for serial boards
    the steps, with a systemd unit, are printed.
    """
    from edgeship.sdk.setup import setup_board

    doc = setup_board(_board(board_spec), dry_run=dry_run, accept_new_host=accept_new_host, serial_device=serial_device,
                      say=_progress(not as_json))
    if as_json:
        _emit_json(doc)
        return
    _show_setup(doc, dry_run)


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RESULTS...")
@click.option("--html", "html_out", type=click.Path(path_type=Path), help="Write an HTML report with plots here.")
@click.option("--markdown", "md_out", type=click.Path(path_type=Path), help="Write a Markdown report here.")
@json_option
def report(results: tuple[Path, ...], html_out: Path | None, md_out: Path | None, as_json: bool) -> None:
    """Compare result documents (files or directories) across boards and recipes."""
    from edgeship.sdk.report import load_results, render_html, render_markdown

    rep = load_results(list(results))
    if html_out is None and md_out is None and not as_json:
        from edgeship.sdk.report import safe_text

        click.echo("\n".join(safe_text(line) for line in render_markdown(rep).splitlines()))  # boards wrote some of it
        return
    for out, render in ((html_out, render_html), (md_out, render_markdown)):
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render(rep))
    if as_json:
        from edgeship.sdk.schemas import report_document

        _emit_json(report_document(rep, html=html_out, markdown=md_out))
        return
    if html_out is not None:
        click.echo(f"wrote {html_out} ({len(rep.rows)} results{', ' + str(len(rep.flags)) + ' flagged' if rep.flags else ''})")
    if md_out is not None:
        click.echo(f"wrote {md_out}")


def _check_doc(board: Any, manifest: Any, model: bytes, delegates: list[dict[str, Any]]) -> dict[str, Any]:
    """What `check` finds for one board: compatible or the problems, custom ops, the TFLM arena, notes."""
    from edgeship.sdk.compat import check as run_check
    from edgeship.sdk.compat import custom_ops
    from edgeship.sdk.compat import notes as check_notes

    problems = run_check(manifest, board.spec, model=model, delegates=delegates)
    arena = None
    if board.spec is not None and board.spec.runtime == "tflite_micro" and not problems:
        from edgeship.sdk.compat import micro_arena_needed

        arena_size = board.spec.constraints.arena_bytes
        arena = {"needed": micro_arena_needed(model, arena_size), "size": arena_size}
    return {"board": board.name, "compatible": not problems, "custom_ops": custom_ops(manifest), "arena": arena,
            "problems": [{"code": p.code, "message": p.message} for p in problems],
            "notes": check_notes(manifest, board.spec)}


def _check_entry(doc: dict[str, Any]) -> dict[str, Any]:
    """One board's check as a --json entry: the board's findings, and the one incompatibility line as its error."""
    from edgeship.sdk.compat import IncompatibleError, Problem
    from edgeship.sdk.schemas import board_entry

    found = {k: v for k, v in doc.items() if k != "board"}
    error = None if doc["compatible"] else str(IncompatibleError(doc["board"], [Problem(**p) for p in doc["problems"]]))
    return board_entry(doc["board"], found, error=error)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@board_option
@all_option
@click.option("--delegate", multiple=True, metavar="NAME[:k=v,...]",
              help="Check that the board offers this delegate (boards.yaml `delegates`); repeatable.")
@click.option("--require-delegate", is_flag=True, help="The run would require the --delegate(s).")
@json_option
def check(bundle: Path, board_spec: str | None, all_boards: bool, delegate: tuple[str, ...], require_delegate: bool,
          as_json: bool) -> None:
    """Will this bundle run on those boards? Checked from boards.yaml, without connecting."""
    from edgeship.sdk.compat import IncompatibleError, Problem
    from edgeship.sdk.device import load_bundle

    manifest, model = load_bundle(bundle)
    boards = _fleet_boards(board_spec, all_boards)
    delegates = named_delegates(delegate, require_delegate)
    docs = [_check_doc(board, manifest, model, delegates) for board in boards]
    incompatible = [d for d in docs if not d["compatible"]]
    if len(docs) > 1:
        if as_json:
            _emit_json([_check_entry(d) for d in docs])
        else:
            _show_checks(manifest, docs)
        if incompatible:
            raise EdgeshipError(f"{len(incompatible)} of {len(docs)} boards cannot run this model: "
                                f"{', '.join(d['board'] for d in incompatible)}")
        return
    (doc,) = docs
    if as_json:
        _emit_json([_check_entry(doc)])
        if incompatible:
            sys.exit(1)
        return
    if incompatible:
        raise IncompatibleError(doc["board"], [Problem(**p) for p in doc["problems"]])
    _show_compatible(doc["board"], manifest, doc["custom_ops"], doc["arena"], doc["notes"])


@main.command()
@click.argument("name", required=False)
@click.option("--list", "list_names", is_flag=True, help="List the documents that have a schema.")
def schema(name: str | None, list_names: bool) -> None:
    """The JSON Schema of what a command prints with --json (NAME: the command, e.g. bench, boards-ping), or of `result`."""
    from edgeship.sdk.schemas import SCHEMAS, json_schema

    if list_names:
        click.echo("\n".join(SCHEMAS))
        return
    if name is None:
        raise UsageError(f"name a document ({', '.join(SCHEMAS)}), or give --list")
    _emit_json(json_schema(name))


if __name__ == "__main__":  # pragma: no cover
    main()
