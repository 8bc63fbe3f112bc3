"""Conversion recipes: frozen value objects with named constructors.

A Recipe says what the converter must produce (float32, float16, dynamic-range,
fully integer int8, int16 activations with int8 weights, quantization-aware-trained int8)
and with which data; it is applied to TFLiteConverter in exactly one place
(converters.tflite_converter.configure).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeship.converters.data import MIN_CALIBRATION_SAMPLES
from edgeship.sdk.errors import UsageError

RECIPES = ("float32", "float16", "dynamic", "int8", "int16x8", "qat")
IO_TYPES = ("int8", "uint8", "int16", "float32")
INTEGER_RECIPES = frozenset({"int8", "int16x8", "qat"})  # integer arithmetic, calibrated activation ranges
CALIBRATED_RECIPES = frozenset({"int8", "int16x8"})  # calibrated on calibration data (qat learns its ranges in training)
# The I/O types each integer recipe can give; the first is the default.
RECIPE_IO = {"int8": ("int8", "uint8", "float32"), "qat": ("int8", "uint8", "float32"), "int16x8": ("int16", "float32")}
STRATEGIES = ("default", "mirrored", "multiworker")
CLUSTERS_RANGE = (2, 256)  # centroids per weight tensor: one value is no model, more than 256 is no compression
DEFAULT_CALIB_SAMPLES = 200


@dataclass(frozen=True)
class QATOptions:
    """How quantization-aware fine-tuning runs."""

    train: Path
    epochs: int = 3
    batch_size: int = 32  # global batch: split across replicas under --strategy
    learning_rate: float = 1e-5
    validation_split: float = 0.1  # held out of train to pick the best epoch
    leave_float: tuple[str, ...] = ()  # layer names QAT leaves unwrapped
    leave_unsupported_float: bool = False
    loss: str = "auto"


@dataclass(frozen=True)
class Compression:
    """Pruning and weight clustering before conversion (tfmot's collaborative optimization order).

    Each stage fine-tunes on `train`; epochs and learning rate default per stage
    (see STAGE_DEFAULTS) unless given.
    """

    train: Path
    sparsity: float | None = None  # target fraction of zero weights (prune_low_magnitude)
    block: int | None = None  # pruning block along a Dense layer's input axis; None: automatic
    clusters: int | None = None  # centroids per weight tensor (cluster_weights)
    epochs: int | None = None
    learning_rate: float | None = None
    batch_size: int = 32  # global batch: split across replicas under --strategy
    validation_split: float = 0.1


# Per fine-tuning stage: (epochs, learning rate) when the user gives none.
STAGE_DEFAULTS = {"prune": (4, 1e-3), "cluster": (3, 1e-4)}


@dataclass(frozen=True)
class Distribution:
    """Which tf.distribute strategy runs the fine-tuning; `replicas` splits the CPU into logical devices."""

    strategy: str = "default"
    replicas: int | None = None
    worker_timeout: float = 600.0  # multiworker: seconds to wait for every worker in TF_CONFIG to join


@dataclass(frozen=True)
class Recipe:
    name: str
    io: str = "float32"
    calibration: Path | None = None
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    calib_samples_explicit: bool = False
    image_range: tuple[float, float] = (0.0, 1.0)
    qat: QATOptions | None = field(default=None)
    compression: Compression | None = None
    distribution: Distribution = field(default_factory=Distribution)
    keep_float: tuple[str, ...] = ()  # int8: layers left in float (the quantization debugger's denylist)
    keep_float_auto: int | None = None  # int8: leave the N layers with the worst quantization error in float
    int8_strict: bool = False  # integer recipes: refuse a model in which the converter leaves any op float

    def __post_init__(self) -> None:
        if self.name not in RECIPES:
            raise UsageError(f"unknown recipe {self.name!r}; choose one of {', '.join(RECIPES)}")
        if self.io not in IO_TYPES:
            raise UsageError(f"unknown I/O type {self.io!r}; choose one of {', '.join(IO_TYPES)}", option="io")
        if self.io != "float32" and self.name not in INTEGER_RECIPES:
            raise UsageError(f"{self.io} needs an integer recipe (int8, int16x8 or qat); {self.name} models take "
                             f"float32 I/O", option="io")
        if self.name in RECIPE_IO and self.io not in RECIPE_IO[self.name]:
            raise UsageError(f"{self.io} does not go with recipe {self.name}; choose "
                             f"{' or '.join(RECIPE_IO[self.name])}", option="io")
        if self.name in CALIBRATED_RECIPES and self.calibration is None:
            raise UsageError(f"recipe {self.name} needs calibration data: DATA.npz (or an image folder)",
                             option="calibration")
        if self.int8_strict and self.name not in INTEGER_RECIPES:
            raise UsageError(f"goes with an integer recipe (int8, int16x8 or qat), not {self.name}",
                             option="int8_strict")
        if self.int8_strict and self.keeps_float:
            raise UsageError("refuses float ops, and keep_float asks for some; choose one", option="int8_strict")
        if self.calibrates and self.calib_samples_explicit and self.calib_samples < MIN_CALIBRATION_SAMPLES:
            raise UsageError(f"must be at least {MIN_CALIBRATION_SAMPLES} (got {self.calib_samples}): fewer samples "
                             f"make int8 activation ranges guesswork", option="calib_samples")
        if self.calibrates:
            lo, hi = self.image_range
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise UsageError(f"needs LO < HI, both finite (got {lo:g},{hi:g})", option="image_range")
        if self.name == "qat" and self.qat is None:
            raise UsageError("recipe qat needs training data: DATA.npz with x and y", option="train")
        if self.qat is not None:
            _check_training(self.qat.epochs, self.qat.learning_rate, self.qat.batch_size, self.qat.validation_split)
        c = self.compression
        if c is not None:
            if c.sparsity is None and c.clusters is None:
                raise UsageError("compression needs a sparsity or a number of clusters")
            if c.sparsity is not None and not 0.0 < c.sparsity < 1.0:
                raise UsageError(f"must be between 0 and 1 (a fraction of zero weights), not {c.sparsity}",
                                 option="sparsity")
            low, high = CLUSTERS_RANGE
            if c.clusters is not None and not low <= c.clusters <= high:
                raise UsageError(f"must be between {low} and {high}, not {c.clusters}", option="clusters")
            if c.block is not None and c.block < 1:
                raise UsageError(f"must be at least 1, not {c.block}", option="prune_block")
            _check_training(c.epochs, c.learning_rate, c.batch_size, c.validation_split)
        d = self.distribution
        if d.strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {d.strategy!r}; choose one of {', '.join(STRATEGIES)}", option="strategy")
        if d.replicas is not None and (d.strategy != "mirrored" or d.replicas < 1):
            raise UsageError("N (N >= 1) goes with strategy mirrored", option="replicas")
        if d.worker_timeout <= 0:
            raise UsageError(f"must be a positive number of seconds, not {d.worker_timeout}", option="worker_timeout")
        if d.strategy != "default" and not self.finetunes:
            raise UsageError(f"{d.strategy} distributes fine-tuning; this recipe does none "
                             f"(use recipe qat, a sparsity or clusters)", option="strategy")
        if (self.keep_float or self.keep_float_auto is not None) and self.name != "int8":
            raise UsageError("goes with recipe int8 (it is the quantization debugger's denylist)", option="keep_float")
        if self.keep_float_auto is not None and self.keep_float_auto < 1:
            raise UsageError("auto:N needs N of at least 1", option="keep_float")

    # -- named constructors -----------------------------------------------------
    @classmethod
    def float32(cls) -> Recipe:
        return cls("float32")

    @classmethod
    def float16(cls) -> Recipe:
        return cls("float16")

    @classmethod
    def dynamic(cls) -> Recipe:
        return cls("dynamic")

    @classmethod
    def int8(cls, calibration: Path, io: str = "int8", samples: int | None = None,
             image_range: tuple[float, float] = (0.0, 1.0)) -> Recipe:
        return cls("int8", io=io, calibration=Path(calibration),
                   calib_samples=DEFAULT_CALIB_SAMPLES if samples is None else samples,
                   calib_samples_explicit=samples is not None, image_range=image_range)

    @classmethod
    def int16x8(cls, calibration: Path, io: str = "int16", samples: int | None = None,
                image_range: tuple[float, float] = (0.0, 1.0)) -> Recipe:
        """int16 activations and int8 weights (TFLite's 16x8 scheme), calibrated like int8."""
        return cls("int16x8", io=io, calibration=Path(calibration),
                   calib_samples=DEFAULT_CALIB_SAMPLES if samples is None else samples,
                   calib_samples_explicit=samples is not None, image_range=image_range)

    @classmethod
    def quantization_aware(cls, train: Path, io: str = "int8", **options: Any) -> Recipe:
        return cls("qat", io=io, qat=QATOptions(train=Path(train), **options))

    @classmethod
    def from_name(cls, name: str, **options: Any) -> Recipe:
        """The recipe for a CLI name and CLI options; options that do not apply to it are ignored."""
        if name in CALIBRATED_RECIPES:
            if options.get("calibration") is None:
                raise UsageError(f"recipe {name} needs calibration data: DATA.npz (or an image folder)",
                                 option="calibration")
            make = cls.int8 if name == "int8" else cls.int16x8
            base = make(options["calibration"], options.get("io") or RECIPE_IO[name][0], options.get("samples"),
                        options.get("image_range") or (0.0, 1.0))
        elif name == "qat":
            if options.get("train") is None:
                raise UsageError("recipe qat needs training data: DATA.npz with x and y", option="train")
            qat_keys = {"epochs", "learning_rate", "leave_float", "leave_unsupported_float", "batch_size"}
            extra = {k: v for k, v in options.items() if k in qat_keys and v is not None}
            base = cls.quantization_aware(options["train"], options.get("io") or "int8", **extra)
        else:
            base = cls(name, io=options.get("io") or "float32")
        changes: dict[str, Any] = {}
        if options.get("sparsity") is not None or options.get("clusters") is not None:
            if options.get("train") is None:
                raise UsageError("pruning and clustering fine-tune the model: give training data, DATA.npz with x and y",
                                 option="train")
            keys = {"sparsity", "clusters", "epochs", "learning_rate", "batch_size"}
            extra = {k: v for k, v in options.items() if k in keys and v is not None}
            if options.get("prune_block") is not None:
                extra["block"] = options["prune_block"]
            changes["compression"] = Compression(train=Path(options["train"]), **extra)
        timeout = options.get("worker_timeout")
        if timeout is not None and options.get("strategy") != "multiworker":
            raise UsageError("goes with strategy multiworker", option="worker_timeout")
        if options.get("strategy") not in (None, "default") or options.get("replicas") is not None:
            changes["distribution"] = Distribution(options.get("strategy") or "default", options.get("replicas"),
                                                   *([timeout] if timeout is not None else []))
        keep = options.get("keep_float")
        if keep:
            changes.update(parse_keep_float(keep))
        if options.get("int8_strict"):
            changes["int8_strict"] = True
        return base.with_options(**changes) if changes else base

    @property
    def integer(self) -> bool:
        return self.name in INTEGER_RECIPES

    @property
    def calibrates(self) -> bool:
        """Does this recipe calibrate activation ranges on --calib data (int8, int16x8)?"""
        return self.name in CALIBRATED_RECIPES

    @property
    def finetunes(self) -> bool:
        """Does this recipe train (QAT, pruning or clustering) before converting?"""
        return self.qat is not None or self.compression is not None

    @property
    def keeps_float(self) -> bool:
        return bool(self.keep_float) or self.keep_float_auto is not None

    @property
    def keep_float_text(self) -> str:
        """--keep-float as the user wrote it: LAYER,... or auto:N ('' when nothing stays float)."""
        return f"auto:{self.keep_float_auto}" if self.keep_float_auto is not None else ",".join(self.keep_float)

    @property
    def train(self) -> Path | None:
        """The training data of the fine-tuning stages (QAT and compression share --train)."""
        return self.qat.train if self.qat is not None else self.compression.train if self.compression else None

    def with_options(self, **changes: Any) -> Recipe:
        """This recipe with some fields changed (validated again)."""
        from dataclasses import replace

        return replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """The recipe and its options as plain JSON values, for the manifest."""
        out: dict[str, Any] = {"name": self.name, "io": self.io}
        if self.calibrates:
            out.update(calibration=str(self.calibration), calib_samples=self.calib_samples,
                       image_range=list(self.image_range))
        if self.int8_strict:
            out["int8_strict"] = True
        if self.qat is not None:
            q = asdict(self.qat)
            q["train"] = str(q["train"])
            q["leave_float"] = list(q["leave_float"])
            out["qat"] = q
        if self.compression is not None:
            c = asdict(self.compression)
            c["train"] = str(c["train"])
            out["compression"] = c
        if self.distribution.strategy != "default":  # how the model was trained; the timeout is not part of it
            out["distribution"] = {"strategy": self.distribution.strategy, "replicas": self.distribution.replicas}
        if self.keeps_float:
            out["keep_float"] = list(self.keep_float) or self.keep_float_text
        return out


def _check_training(epochs: int | None, learning_rate: float | None, batch_size: int, validation_split: float) -> None:
    """A fine-tuning stage's numbers, checked from the values alone (before TensorFlow is imported)."""
    if epochs is not None and epochs < 1:
        raise UsageError(f"must be at least 1 (got {epochs})", option="epochs")
    if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
        raise UsageError(f"must be a positive number (got {learning_rate:g})", option="learning_rate")
    if batch_size < 1:
        raise UsageError(f"must be at least 1 (got {batch_size})", option="batch_size")
    if not 0.0 <= validation_split < 1.0:
        raise UsageError(f"must be at least 0 and below 1 (got {validation_split:g})", option="validation_split")


def parse_keep_float(text: str) -> dict[str, Any]:
    """`--keep-float fc1,conv2` or `--keep-float auto:N` as Recipe fields."""
    text = text.strip()
    if text.startswith("auto:"):
        n = text[5:]
        if not n.isdigit() or int(n) < 1:
            raise UsageError(f"{text}: auto:N needs a whole number N >= 1 of layers to keep in float", option="keep_float")
        return {"keep_float_auto": int(n)}
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise UsageError("needs layer names (LAYER,...) or auto:N", option="keep_float")
    return {"keep_float": names}
