"""Strict JAX for every test: no implicit rank or dtype promotion, full float32 products, warnings are errors."""

from __future__ import annotations

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
# Full float32 products: on a GPU, JAX's default float32 matmul is TensorFloat-32 (10-bit mantissa), about 1e-3
# relative, which the float32 comparisons with float64 oracles (1e-5) would read as a bug. No effect on a CPU.
jax.config.update("jax_default_matmul_precision", "highest")


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


@pytest.fixture
def record_scan_options(monkeypatch):
    """``record(module, name, keys=("remat", "compute_dtype"))`` wraps ``module.name`` for the test so that every
    call appends a tuple of those keyword arguments to the list it returns (to check that options reach a model)."""

    def record(module, name: str, keys: tuple[str, ...] = ("remat", "compute_dtype")) -> list:
        calls, original = [], getattr(module, name)

        def spy(*args, **kwargs):
            calls.append(tuple(kwargs[k] for k in keys))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
        return calls

    return record
