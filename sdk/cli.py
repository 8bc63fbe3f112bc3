"""The `edgeship` command: a thin client of the converters and sdk libraries.

This is the only module that prints or picks exit codes. Every EdgeshipError becomes
one line on stderr and its exit code; anything else becomes one "internal error" line
(``--debug`` shows tracebacks and TensorFlow's own logs). Heavy imports happen inside
commands, so ``edgeship --help`` and ``edgeship inspect x.tflite`` never load TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from device_agent import __version__
from sdk.errors import EdgeshipError, UsageError

EXIT_INTERNAL = 70  # EX_SOFTWARE
EXIT_INTERRUPTED = 130


class _Group(click.Group):
    """Runs a command and turns failures into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeshipError as exc:
            _fail(str(exc), exc.exit_code, exc)
        except KeyboardInterrupt:
            _fail("interrupted", EXIT_INTERRUPTED, None)
        except click.UsageError as exc:  # unknown option, missing argument: one line too
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _fail(exc.format_message() + hint, 2, None)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug: still one line, with the way to get the traceback
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                  EXIT_INTERNAL, exc)


def _debug() -> bool:
    return bool(os.environ.get("EDGESHIP_DEBUG"))


def _fail(message: str, code: int, exc: BaseException | None) -> None:
    if exc is not None and _debug():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    click.echo(f"edgeship: error: {message}", err=True)
    sys.exit(code)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _progress(enabled: bool) -> Callable[[str], None] | None:
    if not enabled:
        return None

    def say(message: str) -> None:
        click.echo(f"  {message}", err=True)

    return say


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    Console(soft_wrap=True).print(table)


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _quant(q: dict[str, Any] | None) -> str:
    if not q:
        return "-"
    if len(q["scale"]) == 1:
        return f"scale {q['scale'][0]:.6g}, zero point {q['zero_point'][0]}"
    return f"per-axis ({len(q['scale'])} scales, axis {q['axis']})"


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgeship")
@click.option("--debug", is_flag=True, help="Show tracebacks and TensorFlow's logs (also EDGESHIP_DEBUG=1).")
def main(debug: bool) -> None:
    """Ship TensorFlow models to edge boards: convert, inspect, analyse and evaluate them."""
    if debug:
        os.environ["EDGESHIP_DEBUG"] = "1"
    logging.basicConfig(level=logging.DEBUG if _debug() else logging.WARNING, format="edgeship: %(levelname)s: %(message)s")


# --- convert ---------------------------------------------------------------------------

def _parse_range(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError as exc:
        raise UsageError(f"--image-range {value!r}: expected LO,HI such as 0,1 or -1,1") from exc
    return lo, hi


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--recipe", "-r", required=True, metavar="RECIPE",
              help="float32 | float16 | dynamic | int8 | qat")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Bundle directory to create.")
@click.option("--signature", default="serving_default", show_default=True, help="SavedModel signature to convert.")
@click.option("--batch", default=1, show_default=True, type=int, help="Static batch size of the converted model.")
@click.option("--io", "io_type", default=None, metavar="TYPE",
              help="Model input/output type for int8/qat: int8 (default) | uint8 | float32.")
@click.option("--calib", type=click.Path(path_type=Path),
              help="int8: calibration data, .npz (x or one array per input) or an image folder.")
@click.option("--calib-samples", type=int, default=None, help="int8: how many calibration samples to use [200].")
@click.option("--image-range", default=None, metavar="LO,HI", help="int8 with an image folder: map pixels 0..255 to LO..HI [0,1].")
@click.option("--train", type=click.Path(path_type=Path), help="qat: training data .npz with x (or per-input arrays) and y.")
@click.option("--epochs", type=int, default=None, help="qat: fine-tuning epochs [3].")
@click.option("--learning-rate", type=float, default=None, help="qat: Adam learning rate [1e-5].")
@click.option("--qat-leave-float", default=None, metavar="LAYER,...", help="qat: layers to leave unwrapped (trained in float).")
@click.option("--qat-leave-unsupported", is_flag=True, help="qat: leave layers QAT cannot wrap in float instead of failing.")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path), help="Measure host accuracy on this .npz (x, y).")
@click.option("--force", is_flag=True, help="Replace an existing bundle directory.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@json_option
def convert(model: Path, recipe: str, out: Path, signature: str, batch: int, io_type: str | None, calib: Path | None,
            calib_samples: int | None, image_range: str | None, train: Path | None, epochs: int | None,
            learning_rate: float | None, qat_leave_float: str | None, qat_leave_unsupported: bool,
            eval_data: Path | None, force: bool, quiet: bool, as_json: bool) -> None:
    """Convert a .keras/.h5 model or SavedModel directory into a TFLite bundle.

    The bundle holds model.tflite, manifest.json and ops/ (selective op registration
    for TFLite and TFLite Micro). It is written atomically: on any error, nothing is left.
    """
    from converters.recipe import Recipe

    r = Recipe.from_name(
        recipe, io=io_type, calibration=calib, samples=calib_samples, image_range=_parse_range(image_range),
        train=train, epochs=epochs, learning_rate=learning_rate,
        leave_float=tuple(n.strip() for n in qat_leave_float.split(",") if n.strip()) if qat_leave_float else None,
        leave_unsupported_float=qat_leave_unsupported or None)
    if not model.exists():
        from sdk.errors import ModelNotFoundError

        raise ModelNotFoundError(f"{model}: no such file or directory")
    from converters.convert import convert as run

    result = run(model, r, out, signature=signature, batch=batch, eval_data=eval_data, force=force,
                 progress=_progress(not quiet and not as_json))
    m = result.manifest
    if as_json:
        _emit_json({"bundle": str(result.bundle), "manifest": m.model_dump(mode="json")})
        return
    click.echo(f"wrote {result.bundle}/ ({m.recipe['name']}, {_kib(m.size)}, sha256 {m.sha256[:12]})")
    _table("inputs / outputs", ["", "name", "shape", "dtype", "quantization"],
           [[kind, t.name, "x".join(map(str, t.shape)), t.dtype,
             _quant(t.quantization.model_dump() if t.quantization else None)]
            for kind, ts in (("in", m.inputs), ("out", m.outputs)) for t in ts])
    click.echo("operators: " + ", ".join(f"{o.name} v{o.version}" for o in m.operators))
    click.echo("integer-only: " + ("yes" if m.integer.fully_integer else
                                   "yes, with float I/O" if not m.integer.float_ops else "no"))
    if m.accuracy:
        a = m.accuracy
        click.echo(f"host accuracy on {a.samples} samples: model {a.model * 100:.2f}%, "
                   f"float source {a.float_model * 100:.2f}% ({(a.model - a.float_model) * 100:+.2f} points)")


# --- inspect ---------------------------------------------------------------------------

@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@json_option
def inspect(path: Path, as_json: bool) -> None:
    """Describe a .tflite file, a .keras/.h5 model or a SavedModel directory."""
    from converters.inspect import inspect_path

    info = inspect_path(path)
    if as_json:
        _emit_json(info)
        return
    {"tflite": _show_tflite, "savedmodel": _show_saved_model, "keras": _show_keras}[info["kind"]](info)


def _show_tflite(info: dict[str, Any]) -> None:
    click.echo(f"{info['path']}: TFLite model, {_kib(info['size'])} (weights {_kib(info['weights_bytes'])}, "
               f"graph {_kib(info['graph_bytes'])}; zlib {_kib(info['zlib_size'])}), {info['tensors']} tensors, "
               f"{info['subgraphs']} subgraph(s), min runtime {info['min_runtime_version'] or 'unknown'}")
    _table("inputs / outputs", ["", "name", "shape", "dtype", "quantization"],
           [[kind, t["name"], "x".join(map(str, t["shape"])), t["dtype"], _quant(t["quantization"])]
            for kind, ts in (("in", info["inputs"]), ("out", info["outputs"])) for t in ts])
    _table("operators", ["op", "kind", "version", "nodes"],
           [[o["name"], o["kind"], o["version"], o["count"]] for o in info["operators"]])
    if info["fully_integer"]:
        verdict = "yes"
    elif not info["float_ops"]:
        verdict = "integer ops, float I/O"
    else:
        verdict = f"no ({len(info['float_ops'])} float ops: {', '.join(info['float_ops'][:6])})"
    click.echo(f"fully integer: {verdict}")


def _show_saved_model(info: dict[str, Any]) -> None:
    click.echo(f"{info['path']}: SavedModel, variables {_kib(info['variables_bytes'])}, "
               f"{len(info['assets'])} asset(s){' (Keras metadata)' if info['keras_metadata'] else ''}")
    for mg in info["meta_graphs"]:
        for sig in mg["signatures"]:
            rows = [[kind, t["name"], t["dtype"], "unknown" if t["shape"] is None else
                     "x".join("?" if d is None else str(d) for d in t["shape"]), t["tensor"]]
                    for kind, ts in (("in", sig["inputs"]), ("out", sig["outputs"])) for t in ts]
            _table(f"signature {sig['key']!r} (tags {', '.join(mg['tags'])})",
                   ["", "name", "dtype", "shape", "tensor"], rows)
    for asset in info["assets"]:
        click.echo(f"asset: {asset}")


def _show_keras(info: dict[str, Any]) -> None:
    click.echo(f"{info['path']}: {info['keras']} model {info['name']!r}, {info['params']:,} parameters "
               f"({info['trainable_params']:,} trainable)")
    _table("layers", ["name", "class", "output shape", "params"],
           [[la["name"], la["class"], la["output_shape"], f"{la['params']:,}"] for la in info["layers"]])


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
    from converters.opsgen import OpSet, render_micro, render_tflite
    from converters.tflite_model import TFLiteModel

    loaded = [(_model_file(p).name if not p.is_dir() else f"{p.name}/model.tflite", TFLiteModel.from_path(_model_file(p)))
              for p in models]
    opset = OpSet.of(loaded)
    if out is not None:
        if out.exists() and not out.is_dir():
            from sdk.errors import BundleError

            raise BundleError(f"{out}: exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        (out / "ops.json").write_text(json.dumps(opset.to_json(), indent=2) + "\n")
        (out / "registration.cc").write_text(render_tflite(opset, namespace))
        (out / "micro_op_resolver.h").write_text(render_micro(opset))
    if as_json:
        _emit_json(opset.to_json())
        return
    _table(f"operators of {len(loaded)} model(s)", ["op", "kind", "versions", "nodes"],
           [[o.name, o.kind, f"{o.min_version}" if o.min_version == o.max_version else f"{o.min_version}-{o.max_version}",
             o.count] for o in opset.ops])
    flex = opset.of_kind("select_tf")
    if flex:
        click.echo(f"warning: Select-TF ops need the Flex delegate and are not in the generated registration: "
                   f"{', '.join(o.name for o in flex)}", err=True)
    if out is not None:
        click.echo(f"wrote {out}/ops.json, registration.cc, micro_op_resolver.h")


# --- eval-host -------------------------------------------------------------------------

@main.command("eval-host")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Test data .npz: x (or one array per input) and y.")
@click.option("--output", default=None, help="Output to score (default: the first).")
@click.option("--threads", type=int, default=None, help="Interpreter threads.")
@click.option("--runtime", default=None, type=click.Choice(["ai_edge_litert", "tflite_runtime", "tensorflow"]),
              help="Force a runtime (default: the first importable of these).")
@json_option
def eval_host(model: Path, data: Path, output: str | None, threads: int | None, runtime: str | None,
              as_json: bool) -> None:
    """Top-1 accuracy and latency of a .tflite (or bundle) with the host's TFLite interpreter.

    Inputs are quantized and outputs dequantized with the model's own scale and zero point.
    This is the reference every board result is compared with.
    """
    from sdk.hosteval import eval_host as run

    report = run(_model_file(model), data, output=output, threads=threads, runtime=runtime)
    if as_json:
        _emit_json(report)
        return
    lat = report["latency_ms"]
    click.echo(f"{report['model']}: accuracy {report['accuracy'] * 100:.2f}% on {report['samples']} samples "
               f"({report['runtime']}, {report['threads'] or 'default'} threads)")
    click.echo(f"latency per invoke: mean {lat['mean']:.3f} ms, p50 {lat['p50']:.3f}, p90 {lat['p90']:.3f}, "
               f"p99 {lat['p99']:.3f}, max {lat['max']:.3f} ms")


if __name__ == "__main__":  # pragma: no cover
    main()
