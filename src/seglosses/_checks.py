"""One validation style for the whole library.

Every error reads "Expected `name` to be <what was expected>, but got <what was got>." and is a
``ValueError`` (a wrong value or shape) or a ``TypeError`` (a wrong kind of object or dtype).

Checks that look at tensor *values* (finiteness, label ranges) need one host-device sync per
call. They are on by default and can be switched off for a hot loop that is known to be clean
(for example under CUDA graphs) with :func:`set_value_checks`. While ``torch.compile`` traces
they are skipped on their own (a host sync would break the graph), so ``fullgraph=True`` works.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

_value_checks_enabled = True


def set_value_checks(enabled: bool) -> None:
    """Turn the value checks (NaN/inf inputs, label ranges) on or off globally.

    Example:
        >>> set_value_checks(False)  # e.g. around a compiled step whose inputs are known to be clean
        >>> value_checks_enabled()
        False
        >>> set_value_checks(True)  # the default
        >>> value_checks_enabled()
        True
    """
    global _value_checks_enabled
    check_type("enabled", enabled, bool)
    _value_checks_enabled = enabled


def value_checks_enabled() -> bool:
    """Whether value checks run: switched on (see :func:`set_value_checks`) and not inside ``torch.compile``."""
    return _value_checks_enabled and not torch.compiler.is_compiling()


@contextmanager
def value_checks(enabled: bool):
    """Context manager form of :func:`set_value_checks`.

    Example:
        >>> with value_checks(False):
        ...     value_checks_enabled()
        False
        >>> value_checks_enabled()  # the previous setting is restored on exit
        True
    """
    previous = _value_checks_enabled
    set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


def fail(name: str, expected: str, got: Any, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` with the library's single message style."""
    raise error(f"Expected `{name}` to be {expected}, but got {got}.")


def describe(value: Any) -> str:
    """A short description of ``value`` for an error message: arrays by shape and dtype, long reprs cut."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # numpy arrays and the like
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_type(name: str, value: Any, types: type | tuple[type, ...]) -> None:
    """``TypeError`` unless ``isinstance(value, types)`` (``bool`` is never accepted as a number)."""
    allowed = types if isinstance(types, tuple) else (types,)
    is_bool_as_number = isinstance(value, bool) and bool not in allowed
    if not isinstance(value, allowed) or is_bool_as_number:
        names = " or ".join(t.__name__ for t in allowed)
        fail(name, f"of type {names}", f"{type(value).__name__} {describe(value)}", TypeError)


def check_one_of(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """``ValueError`` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        fail(name, f"one of {allowed}", repr(value))


def check_number(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_inf: bool = False,
) -> float:
    """Check a real scalar option lies in a range; return it as ``float``."""
    check_type(name, value, (int, float))
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        fail(name, "a finite number", value)
    above_low = value >= low if low_inclusive else value > low
    below_high = value <= high if high_inclusive else value < high
    if not (above_low and below_high):
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        fail(name, f"in {left}{low}, {high}{right}", value)
    return value


def check_fraction(name: str, value: Any) -> float:
    """A fraction in (0, 1]."""
    return check_number(name, value, low=0.0, high=1.0, low_inclusive=False)


def check_tensor(name: str, value: Any) -> Tensor:
    check_type(name, value, Tensor)
    return value


def check_floating(name: str, value: Any) -> Tensor:
    """A floating-point tensor (float16, bfloat16, float32 or float64)."""
    check_tensor(name, value)
    if not value.is_floating_point():
        fail(name, "a floating-point tensor", describe(value), TypeError)
    return value


def check_ndim(name: str, value: Tensor, allowed: Sequence[int], meaning: str) -> None:
    if value.ndim not in allowed:
        fail(name, f"{meaning}", f"shape {tuple(value.shape)}")


def check_class_weights(name: str, weights: Any, num_classes: int, like: Tensor) -> Tensor | None:
    """Per-class weights as a float tensor of shape (C,) on ``like``'s device, or None."""
    if weights is None:
        return None
    if not isinstance(weights, Tensor):
        check_type(name, weights, (list, tuple))
        weights = torch.tensor(weights, dtype=torch.float64)
    weights = weights.to(device=like.device, dtype=like.dtype)
    if weights.shape != (num_classes,):
        fail(name, f"a sequence of {num_classes} per-class weights (one per channel)", tuple(weights.shape))
    if value_checks_enabled() and not bool(torch.isfinite(weights).all() and (weights >= 0).all()):
        fail(name, "finite and non-negative", weights.tolist())
    return weights


def check_finite_tensor(name: str, value: Tensor) -> None:
    """``ValueError`` if ``value`` holds NaN or infinity (one sync; skipped when value checks are off)."""
    if value_checks_enabled() and not bool(torch.isfinite(value).all()):
        fail(name, "finite (no NaN or infinity)", "non-finite values")
