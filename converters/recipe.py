"""Conversion recipes: frozen value objects with named constructors.

A Recipe says what the converter must produce (float32, float16, dynamic-range,
full-integer int8, quantization-aware-trained int8) and with which data; it is applied
to TFLiteConverter in exactly one place (converters.convert._configure).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdk.errors import UsageError

RECIPES = ("float32", "float16", "dynamic", "int8", "qat")
IO_TYPES = ("int8", "uint8", "float32")
INTEGER_RECIPES = frozenset({"int8", "qat"})


@dataclass(frozen=True)
class QATOptions:
    """How quantization-aware fine-tuning runs."""

    train: Path
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-5
    validation_split: float = 0.1  # held out of train to pick the best epoch
    leave_float: tuple[str, ...] = ()  # layer names QAT leaves unwrapped
    leave_unsupported_float: bool = False
    loss: str = "auto"


@dataclass(frozen=True)
class Recipe:
    name: str
    io: str = "float32"
    calibration: Path | None = None
    calib_samples: int = 200
    calib_samples_explicit: bool = False
    image_range: tuple[float, float] = (0.0, 1.0)
    qat: QATOptions | None = field(default=None)

    def __post_init__(self) -> None:
        if self.name not in RECIPES:
            raise UsageError(f"unknown recipe {self.name!r}; choose one of {', '.join(RECIPES)}")
        if self.io not in IO_TYPES:
            raise UsageError(f"unknown --io {self.io!r}; choose one of {', '.join(IO_TYPES)}")
        if self.io != "float32" and self.name not in INTEGER_RECIPES:
            raise UsageError(f"--io {self.io} needs an integer recipe (int8 or qat); {self.name} models take float32 I/O")
        if self.name == "int8" and self.calibration is None:
            raise UsageError("recipe int8 needs calibration data: --calib DATA.npz (or an image folder)")
        if self.name == "qat" and self.qat is None:
            raise UsageError("recipe qat needs training data: --train DATA.npz with x and y")
        if self.qat is not None and self.qat.epochs < 1:
            raise UsageError("--epochs must be at least 1")

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
        return cls("int8", io=io, calibration=Path(calibration), calib_samples=samples or 200,
                   calib_samples_explicit=samples is not None, image_range=image_range)

    @classmethod
    def quantization_aware(cls, train: Path, io: str = "int8", **options: Any) -> Recipe:
        return cls("qat", io=io, qat=QATOptions(train=Path(train), **options))

    @classmethod
    def from_name(cls, name: str, **options: Any) -> Recipe:
        """The recipe for a CLI name; options that do not apply to it are ignored."""
        if name == "int8":
            if options.get("calibration") is None:
                raise UsageError("recipe int8 needs calibration data: --calib DATA.npz (or an image folder)")
            return cls.int8(options["calibration"], options.get("io") or "int8", options.get("samples"),
                            options.get("image_range") or (0.0, 1.0))
        if name == "qat":
            if options.get("train") is None:
                raise UsageError("recipe qat needs training data: --train DATA.npz with x and y")
            qat_keys = {"epochs", "learning_rate", "leave_float", "leave_unsupported_float", "batch_size"}
            extra = {k: v for k, v in options.items() if k in qat_keys and v is not None}
            return cls.quantization_aware(options["train"], options.get("io") or "int8", **extra)
        return cls(name, io=options.get("io") or "float32")

    @property
    def integer(self) -> bool:
        return self.name in INTEGER_RECIPES

    def describe(self) -> dict[str, Any]:
        """The recipe and its options as plain JSON values, for the manifest."""
        out: dict[str, Any] = {"name": self.name, "io": self.io}
        if self.name == "int8":
            out.update(calibration=str(self.calibration), calib_samples=self.calib_samples,
                       image_range=list(self.image_range))
        if self.qat is not None:
            q = asdict(self.qat)
            q["train"] = str(q["train"])
            q["leave_float"] = list(q["leave_float"])
            out["qat"] = q
        return out
