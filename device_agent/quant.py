"""The one quantize/dequantize helper: feed integer models real values, read real values back."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

_INT_TYPES = (np.int8, np.uint8, np.int16)


def _params(detail: dict) -> Tuple[float, int]:  # type: ignore[type-arg]
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero_point)


def quantize(x: np.ndarray, detail: dict) -> np.ndarray:  # type: ignore[type-arg]
    """Real-valued input -> the tensor's dtype, using the tensor's own scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    if dtype.type in _INT_TYPES:
        scale, zero_point = _params(detail)
        if scale == 0.0:
            raise ValueError(f"input {detail.get('name')!r} is {dtype.name} without quantization parameters")
        info = np.iinfo(dtype)
        q = np.round(np.asarray(x, dtype=np.float64) / scale) + zero_point
        return np.clip(q, info.min, info.max).astype(dtype)
    return np.asarray(x).astype(dtype, copy=False)


def dequantize(q: np.ndarray, detail: dict) -> Any:  # type: ignore[type-arg]
    """Tensor values -> real values (float32); non-quantized tensors pass through as float32."""
    dtype = np.dtype(detail["dtype"])
    if dtype.type in _INT_TYPES:
        scale, zero_point = _params(detail)
        if scale != 0.0:
            return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return np.asarray(q, dtype=np.float32)
