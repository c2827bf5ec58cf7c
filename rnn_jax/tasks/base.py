"""The interface every task implements, and the loss that goes with it."""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from rnn_jax import _checks, losses

LossKind = Literal["squared_error", "cross_entropy"]


class Batch(NamedTuple):
    """One batch of sequences, time-major, padded to a common length T."""

    inputs: jax.Array  # [T, B, D]  float
    targets: jax.Array  # [T, B, O] float (squared error) or [T, B] int (cross-entropy)
    mask: jax.Array  # [T, B] bool: the steps whose output is scored
    lengths: jax.Array  # [B] int32: valid input steps; the state is frozen past them


class Task(Protocol):
    """A source of batches with a loss, metrics and a trivial baseline.

    ``batch`` is a pure function of its key, so it can run inside `jax.jit`.
    """

    name: str
    input_size: int  # D
    output_size: int  # O
    loss: LossKind

    def batch(self, key: jax.Array, batch_size: int, dtype: jnp.dtype) -> Batch: ...

    def metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]: ...

    def baseline(self) -> dict[str, float]: ...


def check_batch_arguments(key: jax.Array, batch_size: int) -> int:
    """What every task's ``batch`` (and ``stream``) checks first: one PRNG key and a positive integer batch size,
    returned as an int (an int key or a batch size of -1 or 2.5 failed inside JAX, naming neither).

    Raises:
      TypeError: for a key that is not one PRNG key; ValueError: for a batch size that is not an integer >= 1.
    """
    _checks.prng_key("key", key)
    return _checks.positive_int("batch_size", batch_size)


def loss(kind: LossKind, outputs: jax.Array, batch: Batch) -> jax.Array:
    """The task's loss, a mean over exactly the scored steps (``batch.mask``)."""
    return losses.by_name(kind, outputs, batch.targets, batch.mask, reduction="mean")


def features(task: Task, inputs: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """The model's inputs [T, B, D] from a batch's: the task's ``featurize`` (e.g. one-hot characters), if any."""
    featurize = getattr(task, "featurize", None)
    return inputs if featurize is None else featurize(inputs, dtype)
