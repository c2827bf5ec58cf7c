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


def _mask_and_count(mask: jax.Array | None, shape: tuple[int, ...], dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
    if mask is None:
        mask = jnp.ones(shape, dtype)
    else:
        if jnp.shape(mask) != shape:
            raise ValueError(f"mask: expected shape {shape} (the outputs' shape without O), got {jnp.shape(mask)}")
        mask = jnp.asarray(mask).astype(dtype)
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
    """
    if jnp.shape(targets) != jnp.shape(outputs):
        raise ValueError(f"targets: expected the outputs' shape {jnp.shape(outputs)}, got {jnp.shape(targets)}")
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
    """
    if jnp.shape(labels) != jnp.shape(logits)[:-1]:
        raise ValueError(
            f"labels: expected shape {jnp.shape(logits)[:-1]} (the logits' without O), got {jnp.shape(labels)}"
        )
    _checks.integers("labels", labels, "integer class indices")
    masked = mask is not None
    mask, count = _mask_and_count(mask, logits.shape[:-1], logits.dtype)  # the mask's shape checked first
    classes = jnp.shape(logits)[-1]  # out of range, a label would give NaN (or, negative, another class's loss)
    where = " where the mask holds" if masked else ""
    _checks.within("labels", labels, 0, classes - 1, f"class indices in [0, O={classes}){where}", mask)
    if masked:  # padding may hold any id (a PAD, -1): it is never looked up, so it cannot make a NaN
        labels = jnp.where(mask != 0, labels, 0)
    per_step = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return _reduce(per_step, mask, count, 1, reduction)


def by_name(
    name: LossName, outputs: jax.Array, targets: jax.Array, mask: jax.Array | None = None, reduction: Reduction = "mean"
) -> jax.Array:
    """`squared_error` or `cross_entropy`, chosen by name; bfloat16 outputs are scored in float32."""
    if outputs.dtype == jnp.bfloat16:
        outputs = outputs.astype(jnp.float32)
        if name == "squared_error":
            targets = targets.astype(jnp.float32)
    if name == "squared_error":
        return squared_error(outputs, targets, mask, reduction)
    if name == "cross_entropy":
        return cross_entropy(outputs, targets, mask, reduction)
    raise ValueError(f"loss: expected 'squared_error' or 'cross_entropy', got {name!r}")
