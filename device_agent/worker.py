"""Run one model (bench or eval) in a child process, so a crash or hang costs a run, not the agent.

The parent (``run_in_worker``) starts ``python -c ...`` with a memory limit, sends the
request as JSON on stdin, relays progress lines and classifies the ending: ok, invalid
(the runtime rejected the model), bad_dataset, crashed (killed by a signal),
timeout, out_of_memory. The child hash-checks the model and dataset bytes it is given
(the store checked them too, but a file can change in between) and loads the model
with ``model_content=`` so TFLite's flatbuffer verifier runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from edgeship.device_agent import npzfile
from edgeship.device_agent.child import child_command, json_lines, kill, limit_memory
from edgeship.device_agent.delegates import DelegateRequired
from edgeship.device_agent.options import RunOptions


# --------------------------------------------------------------------------------- child side
def _emit(obj: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _read_sys(path: str, scale: float = 1.0) -> Optional[float]:
    try:
        return float(Path(path).read_text().strip()) * scale
    except (OSError, ValueError):
        return None


def board_sensors() -> Dict[str, Optional[float]]:
    """CPU temperature (deg C) and frequency (MHz) where the board exposes them."""
    return {
        "cpu_temp_c": _read_sys("/sys/class/thermal/thermal_zone0/temp", 1e-3),
        "cpu_freq_mhz": _read_sys("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", 1e-3),
    }


def _peak_rss_kib() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _build_interpreter(rt: Any, model: bytes, opts: RunOptions) -> Dict[str, Any]:
    """Interpreter with the requested threads and delegates; says what was applied, what it took, what fell back."""
    from edgeship.device_agent import delegates as external

    specs = [d.to_json() for d in opts.delegates]  # resolved by the board's allow-list: each names its library
    delegates, report, notes = external.load(rt, specs)
    kwargs: Dict[str, Any] = {}
    if rt.name == "tflite_micro" and opts.arena_size:
        kwargs["arena_size"] = opts.arena_size
    if not opts.xnnpack:
        resolver = getattr(rt.interpreter_cls, "OpResolverType", None) or getattr(
            sys.modules.get(rt.interpreter_cls.__module__), "OpResolverType", None)
        if resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    t0 = time.perf_counter_ns()
    try:
        interpreter = rt.interpreter(model, num_threads=opts.threads, experimental_delegates=delegates or None,
                                     **kwargs)
    except (ValueError, RuntimeError) as exc:
        if not delegates:
            raise
        # A delegate that loads but fails to apply to this model: required -> delegate_failed, else the CPU.
        # (If the model itself is bad, the build without delegates raises again: the usual refusal.)
        names = ", ".join(r["name"] for r in report if r["loaded"])
        why = str(exc)
        for spec in specs:
            why = external.scrub(why, spec["name"], spec["library"])
        if any(s.get("required") for s in specs):
            raise DelegateRequired(f"delegate {names} failed to apply to this model ({why}) and the request requires it") from exc
        notes.append(f"delegate {names} failed to apply to this model ({why}); running without it")
        for r in report:
            r["applied"] = False
        delegates = []
        t0 = time.perf_counter_ns()
        interpreter = rt.interpreter(model, num_threads=opts.threads, **kwargs)
    load_ns = time.perf_counter_ns() - t0
    ops = interpreter._get_ops_details() if hasattr(interpreter, "_get_ops_details") else []
    parts = external.partition(ops)
    applied = [r["name"] for r in report if r["applied"]]
    if parts["delegate_kernels"] and opts.xnnpack and rt.name != "tflite_micro":
        applied.append("xnnpack")
    return {
        "interpreter": interpreter,
        "load_ms": load_ns / 1e6,
        "delegate": {"applied": applied, **parts, "external": report, "notes": notes},
    }


# How the TFLite runtimes (LiteRT, tflite-runtime, tf.lite) and TFLM say they lack an op.
_OP_VERSION = re.compile(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'")
_CUSTOM_MISSING = re.compile(r"Encountered unresolved custom op: ([^\s.]+)")


def _refusal(rt: Any, exc: Exception) -> Dict[str, Any]:
    """The result for a model the runtime would not load: op_version, unsupported_op, arena_too_small or invalid."""
    text = str(exc).strip()
    level = getattr(rt, "tflite_level", None)
    m = _OP_VERSION.search(text)
    if m:
        return {"status": "op_version", "missing_op": m.group(1), "version": int(m.group(2)),
                "message": f"the board's runtime ({rt.name} {rt.version}, TFLite {level or 'level unknown'}) has no "
                           f"kernel for {m.group(1)} version {m.group(2)}: the model needs a newer runtime; upgrade "
                           f"the board's runtime or convert with an older TensorFlow"}
    m = _CUSTOM_MISSING.search(text)
    if m or type(exc).__name__ == "UnsupportedOpError":
        op = m.group(1) if m else str(getattr(exc, "op", ""))
        return {"status": "unsupported_op", "missing_op": op,
                "message": f"the board's runtime ({rt.name} {rt.version}) does not register op {op}: {text[:200]}"}
    if not text and isinstance(exc, RuntimeError) and rt.name != "tflite_micro":
        # LiteRT's allocate_tensors fails with no text when its arena cannot be allocated (tensors that
        # claim terabytes, or more than the worker's memory limit): say so rather than "rejected: ".
        memory = worker_memory_limit()
        limit = f"the worker memory limit of {npzfile.mib(memory)}" if memory else "the board's memory"
        return {"status": "out_of_memory",
                "message": f"the runtime could not allocate the model's tensors: they claim more than {limit}"}
    status = "arena_too_small" if type(exc).__name__ == "ArenaTooSmall" else "invalid"
    return {"status": status, "message": f"the runtime rejected the model: {text[:300]}"}


def _arena_of(rt: Any, opts: RunOptions) -> Optional[int]:
    """The tensor arena TFLM is given for this run (None for other runtimes)."""
    if rt.name != "tflite_micro":
        return None
    from edgeship.device_agent.micro import DEFAULT_ARENA_UPPER

    return int(opts.arena_size or DEFAULT_ARENA_UPPER)


#: Generated integer inputs that are not quantized (token ids, indices, lengths) are drawn from
#: 0..GENERATED_INT_HIGH-1: valid for any vocabulary or axis of at least this size, never a wild index.
GENERATED_INT_HIGH = 64


def _generation_rule(d: Dict[str, Any]) -> "tuple[str, int, int]":
    """How bench generates values for one input: ("bool"|"uniform"|"normal", low, high inclusive).

    Quantized integer inputs and 8/16-bit integers (raw pixels, say) take their dtype's full
    range, which is what the model's scale and zero point map; float inputs take standard
    normal values; other integers (token ids, indices) take small non-negative ones.
    """
    dtype = np.dtype(d["dtype"])
    scale = (d.get("quantization") or (0.0, 0))[0]
    if dtype == np.bool_:
        return "bool", 0, 1
    if np.issubdtype(dtype, np.integer) and (scale or dtype.itemsize <= 2):
        info = np.iinfo(dtype)
        return "uniform", int(info.min), int(info.max)
    if np.issubdtype(dtype, np.integer):
        return "uniform", 0, GENERATED_INT_HIGH - 1
    return "normal", 0, 0


def generated_inputs(details: List[Dict[str, Any]], rng: Any) -> Dict[int, Any]:
    """One set of inputs for a model without a dataset, each fitting its input's dtype and quantization."""
    out = {}
    for d in details:
        dtype = np.dtype(d["dtype"])
        shape = [int(n) for n in d["shape"]]
        kind, low, high = _generation_rule(d)
        if kind == "normal":
            out[d["index"]] = rng.standard_normal(size=shape).astype(dtype)
        else:
            out[d["index"]] = rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    return out


def generated_description(inputs: "List[tuple[str, Dict[str, Any]]]") -> List[Dict[str, Any]]:
    """What bench fed each input (by name) when it had no dataset: the result says so."""
    out = []
    for name, d in inputs:
        kind, low, high = _generation_rule(d)
        dtype = np.dtype(d["dtype"]).name
        how = {"bool": "random bool", "normal": f"standard normal {dtype}"}.get(kind, f"uniform {dtype} {low}..{high}")
        if (d.get("quantization") or (0.0, 0))[0]:
            how += " (quantized)"
        out.append({"name": name, "dtype": dtype, "shape": [int(n) for n in d["shape"]], "values": how})
    return out


#: The part of the worker's memory limit a dataset's arrays may take (declared sizes, checked before
#: anything is inflated): the runtime, the model's tensors and the outputs need the rest.
DATASET_SHARE = 4
#: Without a memory limit (``--memory-limit 0``), datasets may declare at most this much.
DATASET_LIMIT_UNLIMITED = 1 << 30


def worker_memory_limit() -> int:
    """The worker's memory limit in bytes (RLIMIT_AS, or EDGESHIP_WORKER_MEMORY_LIMIT where a launcher
    applies it outside the process); 0 when there is none."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    memory = soft if soft != resource.RLIM_INFINITY and soft > 0 else 0
    with contextlib.suppress(ValueError):
        memory = memory or int(os.environ.get("EDGESHIP_WORKER_MEMORY_LIMIT", "0"))
    return max(memory, 0)


def dataset_limit() -> "tuple[int, str]":
    """Bytes a run's dataset may declare (1/DATASET_SHARE of the memory limit, else 1 GiB), and why."""
    memory = worker_memory_limit()
    if memory > 0:
        return memory // DATASET_SHARE, (f" (a run's dataset may declare 1/{DATASET_SHARE} of the worker memory "
                                         f"limit of {npzfile.mib(memory)}: send fewer samples or raise the agent's "
                                         f"--memory-limit)")
    return DATASET_LIMIT_UNLIMITED, " (send fewer samples)"


def _finite(value: Any) -> Any:
    """The result with every non-finite float (a model that outputs NaN, say) as null: the reply stays strict JSON."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def child_main() -> None:
    """Entry point of the worker process: one JSON request on stdin, JSON lines on stdout.

    Whatever the model or the dataset does, the parent gets one classified ending: a result,
    an error it knows, or (for a bug of the worker itself) ``crashed`` with the exception's
    type and text, never a traceback that quotes the board's paths.
    """
    req = json.loads(sys.stdin.read())
    try:
        _emit({"result": _finite(_run(req))})
    except DelegateRequired as exc:
        _emit({"error": {"code": "delegate_failed", "message": str(exc)}})
    except MemoryError:
        _emit({"error": {"code": "out_of_memory", "message": "the run ran out of memory (worker memory limit)"}})
    except Exception as exc:  # a worker bug: classified here, its traceback only on the worker's stderr
        import traceback

        traceback.print_exc()
        text = str(exc).replace(str(Path(req.get("model_path") or "/").parent), "<store>")
        _emit({"error": {"code": "crashed", "message": f"the worker failed ({type(exc).__name__}: {text[:200]})"}})


def _run(req: Dict[str, Any]) -> Dict[str, Any]:
    from edgeship.device_agent.evaluate import (
        EvalInputError,
        LatencyStats,
        check_reference,
        compare,
        confusion,
        evaluate,
        match_inputs,
        signature_io,
    )
    from edgeship.device_agent.quant import quantize
    from edgeship.device_agent.runtime import RuntimeNotFound, load_runtime

    opts = RunOptions.from_json(req.get("options"))  # resolved by the agent: the board's choices filled in
    model = Path(req["model_path"]).read_bytes()
    if hashlib.sha256(model).hexdigest() != req["model_sha256"]:
        return {"status": "invalid", "message": "model bytes do not match their sha256; refusing to load"}
    try:
        dataset = Path(req["dataset_path"]).read_bytes() if req.get("dataset_path") else None
    except OSError as exc:
        return {"status": "bad_dataset", "message": f"the dataset could not be read ({type(exc).__name__}); push it again"}
    if dataset is not None and hashlib.sha256(dataset).hexdigest() != req.get("dataset_sha256"):
        return {"status": "bad_dataset", "message": "dataset bytes do not match their sha256; refusing to load"}
    try:
        rt = load_runtime(opts.runtime)
    except RuntimeNotFound as exc:
        return {"status": "no_runtime", "message": str(exc)}
    sensors_before = board_sensors()
    # Said before the runtime plans the model, so the parent can say what a crash interrupted.
    _emit({"loading": {"runtime": rt.name, "arena": _arena_of(rt, opts)}})
    try:
        built = _build_interpreter(rt, model, opts)
    except DelegateRequired:
        raise
    except (ValueError, RuntimeError) as exc:
        return _refusal(rt, exc)
    _emit({"loaded": True})
    interpreter = built["interpreter"]
    base = {"runtime": {"name": rt.name, "version": rt.version}, "threads": opts.threads,
            "delegate": built["delegate"], "load_ms": built["load_ms"], "model_sha256": req["model_sha256"]}
    if hasattr(interpreter, "arena_used"):
        base["arena"] = {"size": interpreter.arena_size, "used": interpreter.arena_used}

    features = labels = reference = None
    if dataset is not None:
        limit, why = dataset_limit()
        try:
            data = npzfile.load(dataset, limit)  # the bytes that were hash-checked
        except npzfile.NpzError as exc:  # its message names the member and the limit, never the path
            return {**base, "status": "bad_dataset", "message": f"the dataset was refused: {exc}{why}"}
        labels = data.pop("y", None)
        reference = data.pop("reference", None)
        features = data
    inputs, _ = signature_io(interpreter)
    if not inputs:
        return {**base, "status": "invalid", "message": "the model has no inputs"}

    if req["kind"] == "eval":
        if features is None:
            return {**base, "status": "bad_dataset", "message": "eval needs a dataset"}
        try:
            result = evaluate(interpreter, features, labels, output=opts.output, state=opts.state)
            if reference is not None:
                check_reference(reference, result.samples)
        except EvalInputError as exc:
            return {**base, "status": "bad_dataset", "message": str(exc)}
        first = result.outputs[result.output]  # the scored output, by name: agreement and confusion describe it
        out: Dict[str, Any] = {**base, "status": "ok", "kind": "eval", "samples": result.samples,
                               "output": result.output, "state": result.state,
                               "accuracy": result.accuracy, "latency_ms": _lat(result.latency),
                               "latency_samples_ms": _downsample(result.times_ns)}
        if reference is not None:
            out["agreement"] = compare(first, reference)
        if labels is not None and np.issubdtype(np.asarray(labels).dtype, np.integer):
            out["confusion"] = confusion(np.asarray(first).reshape(result.samples, -1).argmax(1), np.asarray(labels))
        out["peak_rss_kib"] = _peak_rss_kib()
        out["sensors"] = {"before": sensors_before, "after": board_sensors()}
        return out

    # bench
    try:
        arrays = match_inputs(features, inputs) if features else None
        if arrays and not len(next(iter(arrays.values()))):
            raise EvalInputError("dataset has no samples")
    except EvalInputError as exc:
        return {**base, "status": "bad_dataset", "message": str(exc)}
    rng = np.random.default_rng(0)
    feeds: List[Dict[int, Any]] = []
    for i in range(min(16, len(next(iter(arrays.values())))) if arrays else 16):
        if arrays:
            feeds.append({d["index"]: quantize(arrays[name][i : i + 1], d) for name, d in inputs})
        else:
            feeds.append(generated_inputs([d for _, d in inputs], rng))

    def once(i: int) -> int:
        for idx, value in feeds[i % len(feeds)].items():
            interpreter.set_tensor(idx, value)
        t = time.perf_counter_ns()
        interpreter.invoke()
        return time.perf_counter_ns() - t

    first_ns = once(0)
    warmup = opts.warmup
    t0 = time.perf_counter_ns()
    for i in range(warmup):
        once(i)
    warmup_ns = time.perf_counter_ns() - t0
    runs, min_seconds = opts.runs, opts.min_seconds
    samples: List[int] = []
    start = time.perf_counter()
    last_report = start
    while len(samples) < runs or time.perf_counter() - start < min_seconds:
        samples.append(once(len(samples)))
        now = time.perf_counter()
        if now - last_report > 0.5:
            last_report = now
            _emit({"progress": {"done": len(samples), "runs": runs, "min_seconds": min_seconds,
                                "elapsed_s": now - start}})
        if len(samples) >= 10_000_000:
            break
    return {**base, "status": "ok", "kind": "bench", "first_inference_ms": first_ns / 1e6,
            "warmup": {"count": warmup, "total_ms": warmup_ns / 1e6},
            "latency_ms": _lat(LatencyStats.from_ns(samples)), "inputs": "dataset" if arrays else "random",
            "generated_inputs": None if arrays else generated_description(inputs),
            "latency_samples_ms": _downsample(samples),
            "peak_rss_kib": _peak_rss_kib(), "sensors": {"before": sensors_before, "after": board_sensors()}}


def _downsample(samples_ns: List[int], keep: int = 500) -> List[float]:
    """At most about `keep` evenly spaced samples, in ms, for plots."""
    return [round(s / 1e6, 6) for s in samples_ns[:: max(1, len(samples_ns) // keep)]]


def _lat(s: Any) -> Dict[str, Any]:
    return s.to_json()  # type: ignore[no-any-return]


# -------------------------------------------------------------------------------- parent side
def run_in_worker(request: Dict[str, Any], timeout: float, memory_limit: int,
                  progress: Optional[Callable[[Dict[str, Any]], None]] = None,
                  cancelled: Optional[Callable[[], bool]] = None) -> Dict[str, Any]:
    """Run a request in a child process; always returns a classified result, never raises for the model's sake.

    ``cancelled`` is polled a few times a second while the worker runs (the agent pumps its
    link there); when it returns True the worker is stopped and the result is status
    ``cancelled``. Whatever ends this call, an exception from ``progress`` included, the
    worker's process group is killed first: no worker outlives its request.
    """
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        return {"status": "bad_request", "message": f"a run timeout must be a finite number of seconds over 0, "
                                                    f"not {str(timeout)[:40]}"}
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if memory_limit > 0:  # for launchers that apply the limit outside the child (emu-pi: qemu ignores RLIMIT_AS)
        env["EDGESHIP_WORKER_MEMORY_LIMIT"] = str(memory_limit)
    proc = subprocess.Popen(child_command("edgeship.device_agent.worker", "child_main"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=limit_memory(memory_limit), env=env)
    try:
        return _supervise(proc, request, timeout, memory_limit, progress, cancelled)
    finally:
        if proc.poll() is None:
            kill(proc)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def _supervise(proc: "subprocess.Popen[bytes]", request: Dict[str, Any], timeout: float, memory_limit: int,
               progress: Optional[Callable[[Dict[str, Any]], None]],
               cancelled: Optional[Callable[[], bool]]) -> Dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(json.dumps(request).encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the child died at once; its exit status says why
    deadline = time.monotonic() + timeout
    out_buf = b""
    err_buf = b""
    final: Optional[Dict[str, Any]] = None
    loading: Optional[Dict[str, Any]] = None  # set while the runtime plans the model
    streams = [proc.stdout, proc.stderr]
    while streams:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            kill(proc)
            return {"status": "timeout", "message": f"the run did not finish within {timeout:.0f} s; it was stopped"}
        if cancelled is not None and cancelled():
            kill(proc)
            return {"status": "cancelled", "message": "the run was stopped: its host went away or another host took over"}
        ready, _, _ = select.select(streams, [], [], min(remaining, 0.2))
        for s in ready:
            chunk = os.read(s.fileno(), 1 << 16)
            if not chunk:
                streams.remove(s)
                continue
            if s is proc.stderr:
                err_buf = (err_buf + chunk)[-8192:]
                continue
            messages, out_buf = json_lines(out_buf + chunk)
            for msg in messages:
                if "loading" in msg:
                    loading = dict(msg["loading"])
                elif "loaded" in msg:
                    loading = None
                elif "progress" in msg and progress is not None:
                    progress(msg["progress"])
                elif "result" in msg or "error" in msg:
                    final = msg
    rc = proc.wait()
    if final is not None and "result" in final:
        return dict(final["result"])
    if final is not None and "error" in final:
        return {"status": final["error"]["code"], "message": final["error"]["message"]}
    tail = err_buf.decode("utf-8", "replace").strip().splitlines()[-3:]
    if any(m in err_buf for m in _MEMORY_MARKERS) or (rc < 0 and -rc == signal.SIGKILL and memory_limit > 0):
        return {"status": "out_of_memory", "message": f"the run exceeded the worker memory limit ({memory_limit >> 20} MiB)"}
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        if loading is not None and loading.get("arena") is not None:
            return {"status": "crashed", "arena": {"size": loading["arena"]},
                    "message": f"the TFLM runtime crashed ({name}) while planning the arena at {loading['arena']} bytes; "
                               f"give the board a larger arena (--arena-size, constraints.arena_bytes in boards.yaml) "
                               f"or change the model"}
        if loading is not None:
            return {"status": "crashed", "message": f"the runtime crashed ({name}) while loading this model"}
        return {"status": "crashed", "message": f"the runtime crashed ({name}) running this model"}
    return {"status": "crashed", "message": f"the worker exited with status {rc}: {' | '.join(tail)[:300]}"}


# How running out of address space shows up: Python, C++, and the dynamic loader under RLIMIT_AS.
_MEMORY_MARKERS = (b"MemoryError", b"std::bad_alloc", b"Cannot allocate memory", b"failed to map segment")

