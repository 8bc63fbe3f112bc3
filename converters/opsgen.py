"""Selective op registration: the op list of one or more models, and the code that registers it.

Output follows the two runtimes' own generators: TFLite's ``RegisterSelectedOps``
(gen_op_registration: builtins sorted by name, ``, min, max`` only when the range is not
(1, 1), custom ops by normalised name) and TFLite Micro's ``MicroMutableOpResolver<N>``
(generate_micro_mutable_op_resolver_from_model: ``Add<CamelCase>()``). Select-TF (Flex)
ops cannot be registered this way; they are listed as such, never dropped silently. A
builtin TFLite Micro has no kernel for (device_agent/micro_ops.py, asked of TFLM itself by
tools/gen_tflm_ops.py; e.g. DENSIFY) gets no ``Add...()`` call, which would not compile: the
header names it in a NOT IN TFLITE MICRO comment, and ops.json lists it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from edgeship.converters.tflite_model import TFLiteModel
from edgeship.device_agent import __version__
from edgeship.device_agent.micro_ops import BUILTIN_OPS as MICRO_BUILTIN_OPS

TEMPLATES = Path(__file__).resolve().parent / "templates"
OPS_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class OpRange:
    """One operator across a set of models: the versions used span min_version..max_version."""

    name: str
    kind: str  # builtin | custom | select_tf
    min_version: int
    max_version: int
    count: int  # nodes using it, summed over models


@dataclass(frozen=True)
class OpSet:
    models: tuple[tuple[str, str], ...]  # (file name, sha256)
    ops: tuple[OpRange, ...]

    @classmethod
    def of(cls, models: list[tuple[str, TFLiteModel]]) -> OpSet:
        """The union of the models' operators, each with its version range."""
        merged: dict[tuple[str, str], list[int]] = {}
        for _, model in models:
            for use in model.op_uses:
                entry = merged.setdefault((use.kind, use.name), [use.version, use.version, 0])
                entry[0] = min(entry[0], use.version)
                entry[1] = max(entry[1], use.version)
                entry[2] += use.count
        ops = tuple(OpRange(name, kind, lo, hi, n) for (kind, name), (lo, hi, n) in
                    sorted(merged.items(), key=lambda kv: (kv[0][1], kv[0][0])))
        return cls(tuple((label, m.sha256) for label, m in models), ops)

    def of_kind(self, kind: str) -> list[OpRange]:
        return [op for op in self.ops if op.kind == kind]

    def micro_unsupported(self) -> list[OpRange]:
        """Builtins TFLite Micro has no kernel (no ``Add...()`` method) for."""
        return [op for op in self.of_kind("builtin") if op.name not in MICRO_BUILTIN_OPS]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": OPS_SCHEMA_VERSION,
            "models": [{"file": name, "sha256": sha} for name, sha in self.models],
            "builtin": [_op_json(op) for op in self.of_kind("builtin")],
            "custom": [_op_json(op) for op in self.of_kind("custom")],
            "select_tf": [_op_json(op) for op in self.of_kind("select_tf")],
            "micro_unsupported": [op.name for op in self.micro_unsupported()],
        }


def _op_json(op: OpRange) -> dict[str, Any]:
    return {"name": op.name, "min_version": op.min_version, "max_version": op.max_version, "nodes": op.count}


def custom_register_name(name: str) -> str:
    """TFLite's normalisation of a custom op name for Register_<NAME>(): MyOp -> MY_OP."""
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).upper()


# Where TFLM's method name is not what its own generator's CamelCasing produces
# (the generator emits AddCumsum/AddPadv2, which do not compile).
_MICRO_NAME_FIXES = {"CUMSUM": "AddCumSum", "PADV2": "AddPadV2"}


def micro_add_name(name: str) -> str:
    """TFLM's resolver method for an op name: CONV_2D -> AddConv2D, TFLite_Detection_PostProcess -> AddDetectionPostprocess."""
    if name in _MICRO_NAME_FIXES:
        return _MICRO_NAME_FIXES[name]
    word = name.replace("TFLite", "")
    out = ""
    for part in re.split(r"_|-", word):
        if len(part) > 1 and part[0].isalpha():
            out += part[0].upper() + part[1:].lower()
        else:
            out += part.upper()
    return "Add" + out.replace("Lstm", "LSTM").replace("BatchMatmul", "BatchMatMul")


def _header(ops: OpSet) -> dict[str, str]:
    files = " ".join(name for name, _ in ops.models)
    sources = "; ".join(f"{name} (sha256 {sha})" for name, sha in ops.models)
    return {"version": __version__, "sources": sources, "cli_args": files}


def _select_tf_note(ops: OpSet) -> str:
    flex = ops.of_kind("select_tf")
    if not flex:
        return ""
    return ("// NOT REGISTERED HERE: Select-TF (Flex) ops need the Flex delegate "
            "(tensorflow/lite/delegates/flex): " + ", ".join(op.name for op in flex) + "\n")


def render_tflite(ops: OpSet, namespace: str = "") -> str:
    """C++ for a TFLite runtime with only these ops (the format of TFLite's gen_op_registration)."""
    def versions(op: OpRange) -> str:
        return "" if (op.min_version, op.max_version) == (1, 1) else f", {op.min_version}, {op.max_version}"

    builtin_lines = []
    for op in ops.of_kind("builtin"):
        builtin_lines.append(f"  resolver->AddBuiltin(::tflite::BuiltinOperator_{op.name}, "
                             f"::tflite::ops::builtin::Register_{op.name}(){versions(op)});")
    customs = ops.of_kind("custom")
    custom_lines = [f'  resolver->AddCustom("{op.name}", '
                    f'::tflite::ops::custom::Register_{custom_register_name(op.name)}(){versions(op)});'
                    for op in customs]
    decls = ""
    if customs:
        decls = ("namespace tflite {\nnamespace ops {\nnamespace custom {\n// Forward-declarations for the custom ops.\n"
                 + "".join(f"TfLiteRegistration* Register_{custom_register_name(op.name)}();\n" for op in customs)
                 + "}  // namespace custom\n}  // namespace ops\n}  // namespace tflite\n")
    text = Template((TEMPLATES / "registration.cc.tmpl").read_text()).substitute(
        **_header(ops),
        custom_decls=decls,
        namespace_open=f"namespace {namespace} {{" if namespace else "",
        namespace_close=f"}}  // namespace {namespace}" if namespace else "",
        body="\n".join(builtin_lines + custom_lines),
        select_tf_note=_select_tf_note(ops),
    )
    return _tidy(text)


def render_micro(ops: OpSet) -> str:
    """A TFLite Micro header whose get_resolver() adds exactly these ops, sized to fit."""
    missing = ops.micro_unsupported()
    builtins = [op for op in ops.of_kind("builtin") if op not in missing]
    customs = ops.of_kind("custom")
    lines = [f"  micro_op_resolver.{micro_add_name(op.name)}();" for op in builtins]
    lines += [f'  micro_op_resolver.AddCustom("{op.name}", Register_{custom_register_name(op.name)}());'
              for op in customs]
    decls = "".join(f"const TFLMRegistration* Register_{custom_register_name(op.name)}();  // provide this\n"
                    for op in customs)
    versions = ", ".join(f"{op.name} v{op.min_version}" + (f"-{op.max_version}" if op.max_version != op.min_version else "")
                         for op in builtins) or "none"
    text = Template((TEMPLATES / "micro_op_resolver.h.tmpl").read_text()).substitute(
        **_header(ops), custom_decls=decls, count=len(builtins) + len(customs), add_lines="\n".join(lines),
        versions=versions, select_tf_note=_select_tf_note(ops) + _micro_missing_note(missing))
    return _tidy(text)


def _micro_missing_note(missing: list[OpRange]) -> str:
    if not missing:
        return ""
    return ("// NOT IN TFLITE MICRO: it has no kernel (no Add...() method) for " + ", ".join(op.name for op in missing)
            + "; these models cannot run on TFLM as they are\n")


def _tidy(text: str) -> str:
    """Collapse the blank lines left by empty template slots."""
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def write_ops_dir(ops: OpSet, directory: Path) -> list[Path]:
    """Write ops.json, registration.cc and micro_op_resolver.h into directory."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "ops.json": json.dumps(ops.to_json(), indent=2) + "\n",
        "registration.cc": render_tflite(ops),
        "micro_op_resolver.h": render_micro(ops),
    }
    written = []
    for name, text in files.items():
        (directory / name).write_text(text)
        written.append(directory / name)
    return written
