"""Pieces shared by the cells' ``init``: argument checks and gate-blocked weight matrices."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnn_jax import _checks, initializers


def check_init_args(
    input_size: int, hidden_size: int, output_size: int, input_init: str, dtype: jnp.dtype
) -> tuple[int, int, int]:
    """(D, H, O) after checking the sizes, the dtype and ``input_init``.

    Raises:
      ValueError / TypeError naming the argument, with the expected and the received value.
    """
    d = _checks.positive_int("input_size", input_size)
    h = _checks.positive_int("hidden_size", hidden_size)
    o = _checks.positive_int("output_size", output_size)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype: expected a floating dtype, got {jnp.dtype(dtype)}")
    if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype: float64 needs 64-bit JAX; run with jax.config.update('jax_enable_x64', True)")
    if input_init == "identity":
        raise ValueError("input_init: 'identity' applies only to the recurrent matrix (recurrent_init)")
    return d, h, o


def gate_blocks(
    key: jax.Array,
    name: str,
    rows: int,
    hidden: int,
    gates: int,
    dtype: jnp.dtype,
    scale: float = 1.0,
    spectral_radius: float | None = None,
) -> jax.Array:
    """``gates`` independent [rows, H] matrices side by side: [rows, gates * H].

    Each block is drawn on its own (one sub-key per block) by the initialiser ``name``, times
    ``scale``, so that each gate's block has the variance (or orthogonality, or identity) that
    the initialiser gives a single [rows, H] matrix. With ``spectral_radius`` (square blocks
    only), each block is then rescaled to that spectral radius.
    """
    blocks = []
    for k in jax.random.split(key, gates):
        w = initializers.matrix(k, name, (rows, hidden), dtype, scale)
        if spectral_radius is not None:
            w = initializers.scale_to_spectral_radius(w, spectral_radius)
        blocks.append(w)
    return jnp.concatenate(blocks, axis=1)


def hidden(carry) -> jax.Array:
    """h_t, [B, H], from a cell's carry: the array itself (Elman, GRU) or its ``h`` field (the LSTM's (h, c))."""
    return carry.h if hasattr(carry, "h") else carry


def leading_axes(bias: jax.Array, ndim: int) -> jax.Array:
    """``bias`` [N] as [1, ..., 1, N] of rank ``ndim``: added to a [B, N] or a [T, B, N] array with explicit ranks."""
    return bias.reshape((1,) * (ndim - 1) + bias.shape)


def readout(params, carry) -> jax.Array:
    """y = h W_y + b_y from a carry (see `hidden`) and parameters with ``w_y`` [H, O] and ``b_y`` [O]:
    [B, O] from one step's carry, [T, B, O] from the states of all steps."""
    h = hidden(carry)
    return h @ params.w_y + leading_axes(params.b_y, h.ndim)


def recurrent_input(h_prev: jax.Array, recurrent_mask: jax.Array | None) -> jax.Array:
    """h_{t-1} as it enters the recurrent product: ``h_{t-1} * recurrent_mask`` ([B, H]) or h_{t-1} itself.

    The mask is recurrent dropout (Gal & Ghahramani 2016): one mask per sequence, the same at every step.
    """
    return h_prev if recurrent_mask is None else h_prev * recurrent_mask
