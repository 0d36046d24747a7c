"""numpy arrays as raw bytes, dtype and shape: the one framing of checkpoint rows and
state-topic records. Only allow-listed numeric dtypes are read back, so nothing read
from disk or Kafka is ever unpickled."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream.errors import CheckpointError, CorruptCheckpoint

ALLOWED_DTYPES = frozenset({"<f8", "<f4", "<i8", "<i4", "|i1", "|b1"})


def frame(array: NDArray[Any], where: str) -> tuple[str, list[int], bytes]:
    """``(dtype, shape, data)`` of an array; raises for a dtype that cannot be read back."""
    a = np.ascontiguousarray(array)
    if a.dtype.str not in ALLOWED_DTYPES:
        raise CheckpointError(f"{where}: dtype {a.dtype.str} is not storable")
    return a.dtype.str, list(a.shape), a.tobytes()


def unframe(dtype: str, shape: Any, data: bytes, where: str) -> NDArray[Any]:
    """The array framed by :func:`frame`, validated; a private, writable copy."""
    if dtype not in ALLOWED_DTYPES:
        raise CorruptCheckpoint(f"{where}: dtype {dtype!r} is not allowed")
    if not isinstance(shape, list) or not all(isinstance(x, int) and x >= 0 for x in shape):
        raise CorruptCheckpoint(f"{where}: bad shape {shape!r}")
    dt = np.dtype(dtype)
    if len(data) != dt.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise CorruptCheckpoint(f"{where}: {len(data)} bytes do not fill shape {shape}")
    return np.frombuffer(data, dtype=dt).reshape(shape).copy()
