"""Argument checks at the API edge: each error names the argument, what was expected and what came."""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _array_hint(value: object, convert: str) -> str:
    """Advice for a JAX or NumPy array where a Python number is expected (a config's fields are written to JSON, and
    a size is a shape): convert it with ``convert`` (``int`` or ``float``)."""
    if isinstance(value, jax.Array | np.ndarray):
        return f" (a Python number: convert the array with {convert}(...))"
    return ""


def positive_int(name: str, value: object) -> int:
    """``value`` as an int, or a ValueError when it is not an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}{_array_hint(value, 'int')}")
    return int(value)


def seed(name: str, value: object) -> int:
    """``value`` as an int, or a ValueError unless it is an integer in [0, 2**63) (what both `jax.random.key` and
    NumPy's generators take; a larger one was an OverflowError inside JAX)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value < 2**63:
        raise ValueError(f"{name}: expected an integer in [0, 2**63), got {value!r}")
    return int(value)


def boolean(name: str, value: object) -> bool:
    """``value`` as a bool, or a TypeError unless it is a Python or NumPy bool (a string such as "no" was truthy)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


@functools.cache
def _raw_key_shape(impl: str) -> tuple[int, ...]:
    """The shape of `jax.random.PRNGKey`'s raw uint32 key data under the default PRNG implementation ``impl``
    ((2,) for threefry2x32); ``impl`` is the cache's key."""
    return jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape


def prng_key(name: str, value: object) -> None:
    """Raises TypeError unless ``value`` is one PRNG key: a typed key of shape () (`jax.random.key`) or the raw
    uint32 key data of the default implementation ([2], `jax.random.PRNGKey`). Reads only the type, shape and
    dtype, so a traced key is checked too (JAX's own error named neither the argument nor what it expected)."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None:
        got = f"{type(value).__name__} {value!r}"
    else:
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            one = tuple(shape) == ()
        else:
            one = dtype == np.uint32 and tuple(shape) == _raw_key_shape(jax.config.jax_default_prng_impl)
        if one:
            return
        got = f"{dtype} array of shape {tuple(shape)}"
    raise TypeError(f"{name}: expected a JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), got {got}")


def real(name: str, value: object, expected: str, holds: Callable[[float], bool] = lambda v: True) -> float:
    """``value`` as a float, or a ValueError (``expected``: what was, in words) when it is not a real number (a
    bool, a string: a YAML ``1e-3`` is one) or ``holds(value)`` is false (NaN fails any comparison)."""
    number = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    if not number or not holds(float(value)):
        raise ValueError(f"{name}: expected {expected}, got {value!r}{_array_hint(value, 'float')}")
    return float(value)


def positive_real(name: str, value: object, expected: str = "a finite value > 0") -> float:
    """`real` for a finite value > 0 (a rate, a threshold, a scale, a temperature)."""
    return real(name, value, expected, lambda v: 0 < v < math.inf)


def representable(name: str, value: float, dtype: Any = jnp.float32) -> float:
    """`real` for a value at most the largest finite value of ``dtype``: a number finite in Python (1e300) that the
    arithmetic's dtype turns into an infinity (a scale of W_s, a learning rate, a clip threshold)."""
    largest = float(jnp.finfo(dtype).max)
    return real(name, value, f"at most {largest:.2g} ({jnp.dtype(dtype).name}'s largest)", lambda v: v <= largest)


def rank(name: str, array: jax.Array, expected: int, letters: str) -> None:
    """Raises ValueError unless ``array`` has rank ``expected`` (shape letters ``letters``)."""
    if jnp.ndim(array) != expected:
        raise ValueError(
            f"{name}: expected rank {expected} [{letters}], got rank {jnp.ndim(array)} with shape {jnp.shape(array)}"
        )


def dim(name: str, array: jax.Array, axis: int, expected: int, what: str) -> None:
    """Raises ValueError unless ``array.shape[axis] == expected``."""
    got = jnp.shape(array)[axis]
    if got != expected:
        raise ValueError(f"{name}: expected {what} = {expected} on axis {axis}, got {got} (shape {jnp.shape(array)})")


def floating(name: str, array: jax.Array) -> None:
    """Raises TypeError unless ``array`` has a floating dtype."""
    if not jnp.issubdtype(jnp.result_type(array), jnp.floating):
        raise TypeError(f"{name}: expected a floating dtype, got {jnp.result_type(array)}")


def not_float64(name: str, array: jax.Array, params_dtype: jnp.dtype) -> None:
    """Raises TypeError when ``array`` is float64 and the parameters (``params_dtype``) are not: with 64-bit JAX on
    (plain NumPy arrays are float64), the scan's state would turn float64 after one step and no longer match its
    carry, an error deep inside `jax.lax.scan`."""
    if jnp.result_type(array) == jnp.float64 and jnp.dtype(params_dtype) != jnp.float64:
        raise TypeError(
            f"{name}: got float64 values for {jnp.dtype(params_dtype)} parameters (64-bit JAX is on); cast {name} to "
            f"{jnp.dtype(params_dtype)}, or make the parameters float64 (init(..., dtype=jnp.float64))"
        )


def is_concrete(array: object) -> bool:
    """True when ``array``'s values are known now (not a tracer inside jit/grad/vmap)."""
    return not isinstance(array, jax.core.Tracer)


def finite(name: str, array: jax.Array) -> None:
    """Raises ValueError naming the first non-finite entry of a concrete ``array``."""
    if not is_concrete(array):
        return
    values = np.asarray(array)
    bad = ~np.isfinite(values)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}: expected finite values, found {int(bad.sum())} NaN/Inf entries; "
            f"first at index {index} = {values[index]}"
        )


def integers(name: str, array: jax.Array, what: str) -> None:
    """Raises TypeError unless ``array`` has an integer dtype (``what``: the values it holds, for the message)."""
    if not jnp.issubdtype(jnp.result_type(array), jnp.integer):
        raise TypeError(f"{name}: expected {what}, got dtype {jnp.result_type(array)}")


def within(name: str, array: jax.Array, low: int, high: int, expected: str, where: jax.Array | None = None) -> None:
    """Raises ValueError unless every entry of a concrete ``array`` (those where ``where`` holds, when given) is in
    [low, high]; the message says what was ``expected`` and the range of values that came. Traced values (inside
    jit, grad or vmap) are not checked."""
    if not is_concrete(array) or (where is not None and not is_concrete(where)):
        return
    values = np.asarray(array) if where is None else np.asarray(array)[np.asarray(where, bool)]
    if values.size and (values.min() < low or values.max() > high):
        raise ValueError(f"{name}: expected {expected}, got values in [{values.min()}, {values.max()}]")


def lengths(name: str, array: jax.Array, num_steps: int, batch: int, shortest: int = 0) -> jax.Array:
    """``array`` as [B] integer sequence lengths, each in [shortest, T] when concrete, or an error naming ``name``."""
    array = jnp.asarray(array)
    rank(name, array, 1, "B")
    dim(name, array, 0, batch, "the batch size B")
    integers(name, array, "an integer dtype")
    within(name, array, shortest, num_steps, f"every length in [{shortest}, T={num_steps}]")
    return array


def count(name: str, value: object) -> int:
    """``value`` as an int, or a ValueError when it is not an integer >= 0 (a number of steps, which may be 0): a
    Python or NumPy integer, or a concrete integer JAX scalar (whatever `operator.index` takes; not a bool)."""
    try:
        number = None if isinstance(value, bool | np.bool_) else operator.index(value)
    except TypeError:  # a float, a string, None, a traced value (TracerIntegerConversionError is a TypeError)
        number = None
    if number is None or number < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    return number


def array(name: str, value: object, expected: str = "an array") -> None:
    """Raises TypeError unless ``value`` is an array (a `jax.Array`, traced or not, or a NumPy array or scalar): a
    Python list or None failed later with an error that named neither the argument nor what it should have been."""
    if not isinstance(value, jax.Array | np.ndarray | np.generic):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise TypeError(f"{name}: expected {expected} (a jax.Array or np.ndarray), got {type(value).__name__} {shown}")


def time_major(xs_name: str, xs: jax.Array, name: str, array: jax.Array, batch_axis: int = 1) -> None:
    """Raises ValueError naming both arguments when ``array`` and the inputs ``xs`` (time-major [T, B, D]) disagree as
    batch-first and time-major data do: ``array``'s leading axes are (B, T) where [T, B, ...] was expected
    (``batch_axis`` 1), or its axis 0 holds T rows where [B, ...] was expected (``batch_axis`` 0). The shape checks
    alone blamed ``array`` for what is as often a batch-first ``xs``; other mismatches are left to them. Reads only
    the shapes, so traced arrays are checked too."""
    xs_shape, shape = tuple(jnp.shape(xs)), tuple(jnp.shape(array))
    if len(xs_shape) < 2 or xs_shape[0] == xs_shape[1] or len(shape) <= batch_axis:
        return
    steps, batch = xs_shape[:2]
    if batch_axis == 1 and shape[:2] == (batch, steps):
        got = f"leading axes {shape[:2]}, [T, B] swapped"
    elif batch_axis == 0 and shape[0] == steps:
        got = f"{steps} rows on axis 0, the T of {xs_name}"
    else:
        return
    want = f"[T, B, ...] = ({steps}, {batch}, ...)" if batch_axis == 1 else f"B = {batch} rows on axis 0"
    which = "one of them is batch-first" if batch_axis == 1 else f"{xs_name} looks batch-first [B, T, D]"
    raise ValueError(
        f"{xs_name}, {name}: {xs_name} of shape {xs_shape} reads as time-major [T, B, D] with T = {steps}, "
        f"B = {batch}, so {name} should have {want}; it has shape {shape}, {got}: {which}. The inputs are "
        "time-major [T, B, ...]: swap a batch-first array's first two axes (jnp.swapaxes(a, 0, 1))"
    )


def nonnegative_weights(name: str, array: jax.Array) -> None:
    """Raises ValueError when a concrete weight or mask ``array`` (not bool) holds NaN/Inf or a negative entry: a
    loss weighted by it turned NaN, or negative, silently. Traced values (inside jit, grad or vmap) are not checked."""
    if not is_concrete(array) or jnp.result_type(array) == jnp.bool_:
        return
    finite(name, array)
    within(name, array, 0, math.inf, "values >= 0 (bool, or 0/1 weights)")
