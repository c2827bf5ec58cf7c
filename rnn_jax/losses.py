"""Losses over exactly the valid steps of a (possibly padded) batch.

With a mask m_t (1 where step t of a sequence is valid and carries a target, 0 elsewhere):

    squared error   E = sum_t m_t |d_t - y_t|^2                  (reduction="sum", the textbook's)
                    E / (sum_t m_t * O)                          (reduction="mean": per valid entry)
    cross-entropy   E = sum_t m_t (-log softmax(y_t)[d_t])      (reduction="sum")
                    E / sum_t m_t                                (reduction="mean": per valid step)

The mask has the outputs' shape without the last axis, [T, B] for many-to-many; many-to-one
is the same loss with a mask that selects each sequence's last step (or on [B, O] outputs).
A mask with no valid entry gives a loss of 0, never 0/0.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import optax

from rnn_jax import _checks

Reduction = Literal["sum", "mean"]
LossName = Literal["squared_error", "cross_entropy"]


def check_targets(
    loss: LossName,
    shape: tuple[int, ...],
    targets: jax.Array,
    mask: jax.Array | None = None,
    *,
    name: str | None = None,
    mask_name: str = "mask",
) -> None:
    """What `squared_error` and `cross_entropy` check, for outputs of ``shape`` [..., O] (also before they exist).

    Targets of the outputs' shape (squared error), or integer labels of its shape without O, each in [0, O) where
    ``mask`` holds when concrete (cross-entropy: out of range, a label gives NaN, or, negative, another class's
    loss); a ``mask`` of the outputs' shape without O, and, when concrete and not bool, with no negative or NaN
    weight (a negative loss, or a NaN one, before), checked before the labels' range is read through it.

    Args:
      loss: "squared_error" or "cross_entropy".
      shape: the outputs' shape, [..., O].
      targets, mask: as `squared_error` or `cross_entropy` take them.
      name, mask_name: the names in the messages (default "targets" or "labels", "mask").

    Raises:
      ValueError / TypeError naming the argument, with the expected and the received value.
    """
    shape = tuple(shape)
    if loss in ("squared_error", "cross_entropy"):
        _checks.array(name or ("targets" if loss == "squared_error" else "labels"), targets)
    if loss == "squared_error":
        name = name or "targets"
        if jnp.shape(targets) != shape:
            raise ValueError(f"{name}: expected the outputs' shape {shape}, got {jnp.shape(targets)}")
    elif loss == "cross_entropy":
        name = name or "labels"
        if jnp.shape(targets) != shape[:-1]:
            raise ValueError(f"{name}: expected shape {shape[:-1]} (the logits' without O), got {jnp.shape(targets)}")
        _checks.integers(name, targets, "integer class indices")
    else:
        raise ValueError(f"loss: expected 'squared_error' or 'cross_entropy', got {loss!r}")
    if mask is not None and jnp.shape(mask) != shape[:-1]:
        raise ValueError(
            f"{mask_name}: expected shape {shape[:-1]} (the outputs' shape without O), got {jnp.shape(mask)}"
        )
    if mask is not None:
        _checks.nonnegative_weights(mask_name, jnp.asarray(mask))
    if loss == "cross_entropy":
        classes = shape[-1]
        where = f" where the {mask_name} holds" if mask is not None else ""
        _checks.within(name, targets, 0, classes - 1, f"class indices in [0, O={classes}){where}", mask)


def _check_outputs(name: str, outputs: jax.Array) -> None:
    """Raises TypeError / ValueError naming ``name`` unless ``outputs`` is an array [..., O] of rank >= 1."""
    _checks.array(name, outputs)
    if jnp.ndim(outputs) < 1:
        raise ValueError(f"{name}: expected rank >= 1 [..., O], got rank 0 with shape ()")


def _mask_and_count(mask: jax.Array | None, shape: tuple[int, ...], dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
    """The mask (checked by `check_targets`) in ``dtype``, all ones for None, and its sum."""
    mask = jnp.ones(shape, dtype) if mask is None else jnp.asarray(mask).astype(dtype)
    return mask, jnp.sum(mask)


def _reduce(per_step: jax.Array, mask: jax.Array, count: jax.Array, per_count: int, reduction: Reduction) -> jax.Array:
    total = jnp.sum(per_step * mask)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / jnp.maximum(count * per_count, 1)
    raise ValueError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")


def squared_error(
    outputs: jax.Array, targets: jax.Array, mask: jax.Array | None = None, reduction: Reduction = "mean"
) -> jax.Array:
    """Masked squared error.

    Args:
      outputs: y, [..., O] (e.g. [T, B, O]).
      targets: d, the same shape as ``outputs``.
      mask: [...] (e.g. [T, B]), bool or 0/1; None means every step counts.
      reduction: "sum" (E = sum_t |d_t - y_t|^2) or "mean" (per valid entry).

    Returns:
      A scalar in the outputs' dtype.

    Raises:
      TypeError / ValueError naming the argument: ``outputs`` or ``targets`` not arrays (a list, None), ``outputs``
      of rank 0, a shape as `check_targets`, a concrete ``mask`` with a negative or NaN entry, an unknown
      ``reduction``.
    """
    _check_outputs("outputs", outputs)
    check_targets("squared_error", jnp.shape(outputs), targets, mask)
    mask, count = _mask_and_count(mask, outputs.shape[:-1], outputs.dtype)
    per_step = jnp.sum(jnp.square(targets - outputs), axis=-1)
    return _reduce(per_step, mask, count, outputs.shape[-1], reduction)


def cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, reduction: Reduction = "mean"
) -> jax.Array:
    """Masked softmax cross-entropy with integer class labels.

    Args:
      logits: y, [..., O].
      labels: [...] integers in [0, O) where ``mask`` holds (checked when concrete; padding may hold anything).
      mask: [...], bool or 0/1; None means every step counts.
      reduction: "sum" or "mean" (per valid step).

    Returns:
      A scalar in the logits' dtype.

    Raises:
      TypeError / ValueError naming the argument: ``logits`` or ``labels`` not arrays (a list, None), ``logits`` of
      rank 0, labels or mask as `check_targets`, an unknown ``reduction``.
    """
    _check_outputs("logits", logits)
    check_targets("cross_entropy", jnp.shape(logits), labels, mask)
    masked = mask is not None
    mask, count = _mask_and_count(mask, logits.shape[:-1], logits.dtype)
    if masked:  # padding may hold any id (a PAD, -1): it is never looked up, so it cannot make a NaN
        labels = jnp.where(mask != 0, labels, 0)
    per_step = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return _reduce(per_step, mask, count, 1, reduction)


def by_name(
    name: LossName, outputs: jax.Array, targets: jax.Array, mask: jax.Array | None = None, reduction: Reduction = "mean"
) -> jax.Array:
    """`squared_error` or `cross_entropy`, chosen by name; bfloat16 outputs are scored in float32."""
    _checks.array("outputs", outputs)
    _checks.array("targets", targets)
    if outputs.dtype == jnp.bfloat16:
        outputs = outputs.astype(jnp.float32)
        if name == "squared_error":
            targets = targets.astype(jnp.float32)
    if name == "squared_error":
        return squared_error(outputs, targets, mask, reduction)
    if name == "cross_entropy":
        return cross_entropy(outputs, targets, mask, reduction)
    raise ValueError(f"loss: expected 'squared_error' or 'cross_entropy', got {name!r}")
