"""Strict JAX for every test: no implicit rank or dtype promotion, warnings are errors (pyproject)."""

from __future__ import annotations

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Runs the test with 64-bit JAX, restored afterwards."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def standard_promotion():
    """Standard dtype promotion for tests that run optax's adaptive rules.

    optax's adam/adagrad/rmsprop compute ``decay ** count`` (a float to an int32 power), which
    strict promotion rejects inside optax itself. rnn_jax's own code is exercised under strict
    promotion by the cell, unroll and loss tests; only tests that need those rules relax it.
    """
    with jax.numpy_dtype_promotion("standard"):
        yield
