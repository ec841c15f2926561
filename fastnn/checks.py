"""Input checks shared by layers, losses and optimizers: clear errors naming expected and actual."""
from __future__ import annotations

import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def type_name(x: object) -> str:
    """What came, for an error message: the type with its package where that is not Python's
    or NumPy's (``cupy.ndarray``, not a bare ``ndarray``), and, for an array in CUDA device
    memory (one with ``__cuda_array_interface__``), that fastnn runs on the host and how to
    copy it there."""
    t = type(x)
    package = t.__module__.split(".")[0]
    name = t.__qualname__ if package in ("builtins", "numpy") else f"{package}.{t.__qualname__}"
    if hasattr(x, "__cuda_array_interface__"):
        name += (" (an array in CUDA device memory; fastnn's kernels run on the CPU: copy it to the host "
                 "first, e.g. cupy.asnumpy(x) or x.copy_to_host())")
    return name


def check_array(x: object, what: str, *, dtype: np.dtype | None = None,
                shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """Return ``x`` if it is a NumPy array of ``dtype`` (float32/float64 when None) whose shape
    matches ``shape`` (None = any size on that axis); raise TypeError/ValueError otherwise."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what}: expected a numpy.ndarray, got {type_name(x)}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{what}: expected dtype {np.dtype(dtype)}, got {x.dtype}")
    if dtype is None and x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{what}: expected dtype float32 or float64, got {x.dtype}")
    if shape is not None and (x.ndim != len(shape) or any(e is not None and e != a for e, a in zip(shape, x.shape))):
        want = str(tuple("N" if e is None else e for e in shape)).replace("'", "")
        raise ValueError(f"{what}: expected shape {want}, got {x.shape}")
    return x


def check_flat(x: object, what: str) -> np.ndarray:
    """A flat buffer an optimizer may update in place: 1-D, C-contiguous, writeable, float."""
    x = check_array(x, what)
    if x.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D flat buffer, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what}: expected a contiguous array, got strides {x.strides}")
    if not x.flags.writeable:
        raise ValueError(f"{what}: expected a writeable array, got a read-only one")
    return x


def check_bool(value: object, what: str) -> bool:
    """``value`` as a bool if it is one (Python's or NumPy's): a string such as "False" is
    refused, not taken as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what}: expected True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def cast_in_range(v: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """Real-valued ``v`` cast to a model's ``dtype``; a ValueError where a finite value would
    become +-inf (1e300 into float32) instead of NumPy's warning, and, from integers to an
    integer ``dtype`` (a buffer's count), where a value is beyond its range (2**63 wrapped around)."""
    if np.issubdtype(dtype, np.integer) and np.issubdtype(v.dtype, np.integer) and v.size:
        info = np.iinfo(dtype)
        if not (info.min <= v.min() and v.max() <= info.max):
            raise ValueError(f"{what}: expected integers in {info.min}..{info.max} (the {np.dtype(dtype)} it is "
                             f"kept in), got values from {v.min()} to {v.max()}")
    with np.errstate(over="ignore"):
        cast = v.astype(dtype, copy=False)
    if cast is not v and (np.isfinite(v) & ~np.isfinite(cast)).any():
        raise ValueError(f"{what}: values beyond the range of the model's {np.dtype(dtype)}")
    return cast


def check_int(value: object, what: str, minimum: int) -> int:
    """``value`` as an int if it is one (not a bool) and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what}: expected an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{what}: expected an int >= {minimum}, got {value}")
    return int(value)


def check_real(value: object, what: str, minimum: float | None, below: float | None = None) -> float:
    """``value`` if it is a real number (not a bool, not NaN), >= ``minimum`` and < ``below``
    where given. A float passes in well under a microsecond: optimizers check every group's
    hyperparameters at each step."""
    if type(value) is not float and (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)):
        raise TypeError(f"{what}: expected {_real_range(minimum, below)}, got {type(value).__name__} {value!r}")
    if value != value or (minimum is not None and not value >= minimum) or (below is not None and not value < below):
        raise ValueError(f"{what}: expected {_real_range(minimum, below)}, got {value}")
    return value


def _real_range(minimum: float | None, below: float | None) -> str:
    """below=inf reads "a finite number"."""
    bounds = [f"{op} {v:g}" for op, v in ((">=", minimum), ("<", below)) if v is not None and v != math.inf]
    return " ".join(["a finite number" if below == math.inf else "a number", " and ".join(bounds)]).strip()


def check_activation(activation: object, what: str) -> int:
    """The kernel code of ``activation``, one of fastnn.kernels.activation.ACTIVATIONS' names (None,
    "linear", "relu", "tanh", "sigmoid"); anything else, unhashable values included, is a
    ValueError naming ``what`` (the layer), the names accepted and what came."""
    from fastnn.kernels.activation import ACTIVATIONS

    if not (activation is None or isinstance(activation, str)) or activation not in ACTIVATIONS:
        hint = " (bias is a keyword argument: bias=False, as torch's positional one)" if isinstance(
            activation, bool) else ""
        raise ValueError(f"{what}: activation must be one of {sorted(k for k in ACTIVATIONS if k)} or None, "
                         f"got {activation!r}{hint}")
    return ACTIVATIONS[activation]


def param_dtype(dtype: object, what: str) -> np.dtype:
    """A layer's parameter dtype: float32 or float64 (as a name, a type or a dtype); None is
    float32, the default of torch and Keras (np.dtype(None) would be float64). Anything else is
    a TypeError naming ``what`` (the layer)."""
    try:
        dt = np.dtype(np.float32 if dtype is None else dtype)
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{what} dtype: expected float32 or float64, got {dt if dt is not None else repr(dtype)}")
    return dt
