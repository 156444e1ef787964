"""Recognising and converting the array types sophia_memory stores (NumPy, torch, CuPy).

torch and CuPy are never imported here just to look at a value: a value is a torch tensor or a
CuPy array only if its class comes from those modules, which are then already imported.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

import numpy as np

from .errors import MissingDependencyError, UnsupportedValueError

ArrayKind = Literal["numpy", "npscalar", "torch", "cupy"]

__all__ = ["POOL_DTYPE_KINDS", "ArrayKind", "array_kind", "from_numpy", "is_array_dict", "nbytes",
           "pool_dtype_problem", "to_numpy"]

#: NumPy dtype kinds the L0 pools hold (on the host and on the GPU alike): booleans, integers,
#: floats, complex, and raw fixed-width values without fields (ml_dtypes' bfloat16 and float8
#: have kind ``V``). CuPy refuses strings, bytes, datetimes and objects at allocation.
POOL_DTYPE_KINDS = frozenset("biufcV")


def array_kind(value: object) -> ArrayKind | None:
    """Which array family ``value`` belongs to, or None when it is not an array."""
    cls = type(value)
    if cls is np.ndarray:
        return "numpy"
    if isinstance(value, np.generic):
        return "npscalar"
    module = cls.__module__
    if module.startswith("torch") and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if isinstance(value, torch.Tensor):
            return "torch"
    elif module.startswith("cupy") and cls.__name__ == "ndarray":
        return "cupy"
    return None


def is_array_dict(value: object) -> bool:
    """True for a non-empty dict whose values are all arrays (a model ``state_dict``)."""
    return (
        isinstance(value, dict)
        and bool(value)
        and all(type(k) is str and array_kind(v) in ("numpy", "torch", "cupy")
                for k, v in value.items())
    )


def nbytes(value: Any, kind: ArrayKind) -> int:
    """Size of the array's data in bytes, without copying it."""
    if kind == "torch":
        return int(value.numel() * value.element_size())
    return int(value.nbytes)


def pool_dtype_problem(value: Any) -> str | None:
    """Why ``value`` (an array or a dict of arrays) cannot live in an L0 pool, or None.

    torch and CuPy dtypes are all numeric; a NumPy array qualifies when its dtype's kind is in
    :data:`POOL_DTYPE_KINDS` and it has no fields.
    """
    if isinstance(value, dict):
        for k, v in value.items():
            problem = pool_dtype_problem(v)
            if problem is not None:
                return f"{k!r}: {problem}"
        return None
    dtype = getattr(value, "dtype", None)
    if type(value) is np.ndarray and dtype is not None and (
            dtype.kind not in POOL_DTYPE_KINDS or dtype.fields is not None):
        return (f"arrays of dtype {dtype} cannot live in a GPU pool (it holds booleans, "
                "integers, floats, complex and raw fixed-width dtypes such as bfloat16); "
                "store it in another tier")
    return None


def check_dtype(dtype: np.dtype[Any]) -> None:
    if dtype.hasobject or dtype.fields is not None:
        raise UnsupportedValueError(
            f"arrays of dtype {dtype} cannot be stored safely (object or structured dtype)"
        )


def to_numpy(value: Any, kind: ArrayKind) -> tuple[np.ndarray[Any, Any], str]:
    """A host NumPy view/copy of ``value`` and the dtype name to restore it with."""
    if kind == "numpy":
        check_dtype(value.dtype)
        return value, value.dtype.str
    if kind == "npscalar":
        arr = np.asarray(value)
        check_dtype(arr.dtype)
        return arr, arr.dtype.str
    if kind == "cupy":
        check_dtype(value.dtype)
        return value.get(), value.dtype.str
    # torch: bring to host; dtypes NumPy lacks (bfloat16, float8) travel as raw integers.
    torch = sys.modules["torch"]
    t = value.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    name = str(t.dtype).removeprefix("torch.")
    try:
        return t.contiguous().numpy(), name
    except TypeError:
        width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        return t.contiguous().view(width).numpy(), name


def from_numpy(arr: np.ndarray[Any, Any], kind: str, dtype: str) -> Any:
    """Turn a host array back into the family it was stored from."""
    if kind == "numpy":
        return arr
    if kind == "npscalar":
        return arr[()]
    if kind == "torch":
        try:
            import torch
        except ImportError as exc:
            raise MissingDependencyError("torch", "torch",
                                         "decoding a stored torch tensor") from exc
        t = torch.from_numpy(arr)
        target = getattr(torch, dtype)
        return t if t.dtype == target else t.view(target)
    if kind == "cupy":
        try:
            import cupy
        except ImportError as exc:
            raise MissingDependencyError("cupy", "gpu", "decoding a stored CuPy array") from exc
        return cupy.asarray(arr)
    raise UnsupportedValueError(f"unknown array kind {kind!r}")
