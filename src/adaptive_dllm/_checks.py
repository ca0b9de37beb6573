"""The one set of value checks every config dataclass and public function uses.

Each raises :class:`~adaptive_dllm.errors.AdllmError` with one line naming the value and what
it must be. Integers reject ``bool`` (``True`` is an ``int`` in Python); numbers must be finite.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable

from adaptive_dllm.errors import AdllmError

#: Seeds are unsigned 64-bit integers: torch.manual_seed takes 0 .. 2**64 - 1 (it also takes
#: negative values, but they alias large unsigned ones, so they are refused to keep one meaning).
SEED_MAX = 2**64 - 1


def check_seed(value: object) -> int:
    """``value`` as a seed: an integer (not a bool) in [0, :data:`SEED_MAX`]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AdllmError(f"seed={value!r} must be an integer in [0, 2**64 - 1]")
    if not 0 <= value <= SEED_MAX:
        raise AdllmError(f"seed={value!r} is outside the unsigned 64-bit range [0, 2**64 - 1]; "
                         "pick one inside it")
    return int(value)


def check_int(name: str, value: object, *, minimum: int = 1) -> int:
    """``value`` as an int (an ``int`` or anything with ``__index__``, not a bool) >=
    ``minimum``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or number < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise AdllmError(f"{name}={value!r} must be {what}")
    return number


def check_float(name: str, value: object, *, low: float, high: float = math.inf,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float: a finite real number (not a bool) between ``low`` and ``high``
    (each end closed unless ``*_open``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value))  # type: ignore[arg-type]
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        upper = "inf)" if high == math.inf else f"{high:g}{')' if high_open else ']'}"
        raise AdllmError(f"{name}={value!r} must be a number in "
                         f"{'(' if low_open else '['}{low:g}, {upper}")
    return float(value)  # type: ignore[arg-type]


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    """``value`` must be one of ``choices`` (e.g. ``typing.get_args`` of a ``Literal``)."""
    choices = tuple(choices)
    if value not in choices:
        raise AdllmError(f"{name}={value!r} is not valid; choose one of: "
                         f"{', '.join(map(str, choices))}")


def check_bool(name: str, value: object) -> None:
    """``value`` must be ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise AdllmError(f"{name}={value!r} must be True or False")
