"""Datasets for calibration, QAT fine-tuning and host evaluation.

A dataset is an .npz file (key ``x`` for a one-input model, or one array per input
name; ``y`` for labels, or ``y:<output name>`` per output of a model with several) or, for calibration, a folder of images. Every array is
checked against the model's inputs before TensorFlow sees it, so a wrong shape or
dtype is one clear error instead of a converter stack trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.device_agent import npzfile
from edgeship.sdk.errors import DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})
MIN_CALIBRATION_SAMPLES = 32  # below this, int8 activation ranges are guesswork


@dataclass(frozen=True)
class InputSpec:
    """One model input as the converters see it: name, shape (None = unknown) and numpy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


def require_data(path: Path, option: str | None = None, folder: bool = False) -> Path:
    """`path` as a Path when a dataset can be read from it: an .npz file (or, with `folder`, an image folder).

    Checked before any TensorFlow work, so a mistyped path costs nothing; DatasetError names the path.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file" + (" or directory" if folder else ""), option=option)
    if path.is_dir() and not folder:
        raise DatasetError(f"{path}: is a directory, not an .npz file", option=option)
    return path


def load_npz(path: Path, limit: int = npzfile.HOST_LIMIT) -> dict[str, np.ndarray]:
    """All arrays of an .npz, loaded eagerly and safely (device_agent.npzfile: bounded, no pickle).

    DatasetError, naming the file, when it is missing, unreadable, or refused (a member over
    `limit` bytes declared in total, a zip bomb, object arrays, an odd member name).
    """
    path = require_data(path)
    try:
        return npzfile.load(path, limit)
    except npzfile.NpzError as exc:
        raise DatasetError(f"{path}: {exc}") from exc


def _image_paths(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DatasetError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    return paths


def _load_images(folder: Path, spec: InputSpec, value_range: tuple[float, float]) -> np.ndarray:
    """Decode, resize to the input's HxW, match its channels and map pixels 0..255 to value_range."""
    if len(spec.shape) != 4 or spec.shape[1] is None or spec.shape[2] is None or spec.shape[3] not in (1, 3, 4):
        raise DatasetError(
            f"{folder}: an image folder needs an image input (batch, height, width, 1|3|4 channels); "
            f"input {spec.name!r} has shape {spec.shape}")
    import tensorflow as tf

    height, width, channels = int(spec.shape[1]), int(spec.shape[2]), int(spec.shape[3])
    lo, hi = value_range
    out = []
    for p in _image_paths(folder):
        try:
            img = tf.io.decode_image(p.read_bytes(), channels=channels, expand_animations=False)
        except tf.errors.InvalidArgumentError as exc:
            raise DatasetError(f"{p}: not a decodable image") from exc
        img = tf.image.resize(tf.cast(img, tf.float32), (height, width))
        out.append((img.numpy() / 255.0) * (hi - lo) + lo)
    return np.stack(out).astype(np.float32)


def features_for(
    source: Path, inputs: list[InputSpec], purpose: str, image_range: tuple[float, float] = (0.0, 1.0)
) -> dict[str, np.ndarray]:
    """Arrays keyed by input name, checked against the inputs' shapes (batch aside) and dtypes."""
    source = Path(source)
    if source.is_dir():
        if len(inputs) != 1:
            raise DatasetError(f"{source}: an image folder can feed only a one-input model; give an .npz with "
                               f"one array per input ({', '.join(i.name for i in inputs)})")
        arrays = {inputs[0].name: _load_images(source, inputs[0], image_range)}
    else:
        data = load_npz(source)
        if len(inputs) == 1 and inputs[0].name not in data:
            if "x" not in data:
                raise DatasetError(f"{source}: no array 'x' (or {inputs[0].name!r}); it has {', '.join(data) or 'none'}")
            arrays = {inputs[0].name: data["x"]}
        else:
            missing = [i.name for i in inputs if i.name not in data]
            if missing:
                raise DatasetError(f"{source}: the model's inputs {', '.join(map(repr, missing))} have no array; "
                                   f"it has {', '.join(data) or 'none'}")
            arrays = {i.name: data[i.name] for i in inputs}
    count = None
    for spec in inputs:
        arrays[spec.name] = _check(arrays[spec.name], spec, source, purpose)
        n = len(arrays[spec.name])
        if count is not None and n != count:
            raise DatasetError(f"{source}: inputs have different sample counts ({count} and {n})")
        count = n
    return arrays


def _check(arr: np.ndarray, spec: InputSpec, source: Path, purpose: str) -> np.ndarray:
    where = f"{source}: {purpose} data for input {spec.name!r}"
    want = tuple(spec.shape[1:])
    if arr.ndim != len(spec.shape) or any(w is not None and w != g for w, g in zip(want, arr.shape[1:])):
        raise DatasetError(f"{where} has samples of shape {tuple(arr.shape[1:])} (array {tuple(arr.shape)}), "
                           f"the model expects {_fmt(want)} per sample")
    expected = np.dtype(spec.dtype)
    if np.issubdtype(expected, np.floating):
        if not np.issubdtype(arr.dtype, np.floating):
            raise DatasetError(f"{where} is {arr.dtype}, the input is {expected}: scale it as the model was "
                               f"trained (e.g. x / 255) and save it as float32")
        if not np.all(np.isfinite(arr)):
            raise DatasetError(f"{where} contains NaN or infinity")
        return arr.astype(expected, copy=False)
    if arr.dtype != expected:
        raise DatasetError(f"{where} is {arr.dtype}, the input is {expected}")
    return arr


def _fmt(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def labels(source: Path, key: str = "y") -> np.ndarray:
    """The label array of an .npz dataset."""
    data = load_npz(source)
    if key not in data:
        raise DatasetError(f"{source}: no label array {key!r}; it has {', '.join(data) or 'none'}")
    return data[key]


def output_labels(source: Path, outputs: Sequence[str]) -> list[np.ndarray]:
    """One label array per model output, in `outputs` order, for fine-tuning.

    Keys are ``y:<output name>``; a one-output model may use plain ``y``. A model with
    several outputs needs a label array for every one of them.
    """
    data = load_npz(source)
    keys = [f"y:{name}" for name in outputs]
    if len(outputs) == 1 and keys[0] not in data and "y" in data:
        return [data["y"]]
    missing = [k for k in keys if k not in data]
    if missing:
        have = ", ".join(data) or "none"
        if len(outputs) == 1:
            raise DatasetError(f"{source}: no label array 'y' (or {keys[0]!r}); it has {have}")
        raise DatasetError(f"{source}: the model has {len(outputs)} outputs ({', '.join(outputs)}) and no labels for "
                           f"{', '.join(k[2:] for k in missing)}; give one label array per output under the keys "
                           f"{', '.join(keys)} (it has {have})")
    counts = {len(data[k]) for k in keys}
    if len(counts) > 1:
        raise DatasetError(f"{source}: the label arrays {', '.join(keys)} have different sample counts "
                           f"({', '.join(str(len(data[k])) for k in keys)})")
    return [data[k] for k in keys]


def pick_calibration(features: dict[str, np.ndarray], samples: int, explicit: bool, source: Path) -> dict[str, np.ndarray]:
    """A fixed, seeded subset of samples for calibration; too few samples is an error, not a warning."""
    available = len(next(iter(features.values())))
    if available < MIN_CALIBRATION_SAMPLES:
        raise DatasetError(f"{source}: {available} calibration samples; at least {MIN_CALIBRATION_SAMPLES} are needed "
                           f"for trustworthy int8 ranges (100-500 is typical)")
    if explicit and samples > available:
        raise DatasetError(f"{samples} asked for, but {source} has only {available}", option="calib_samples")
    if samples < MIN_CALIBRATION_SAMPLES:
        raise DatasetError(f"{samples} is too few; use at least {MIN_CALIBRATION_SAMPLES}", option="calib_samples")
    order = np.random.default_rng(0).permutation(available)[: min(samples, available)]
    return {k: v[order] for k, v in features.items()}
