"""Pieces shared by the cells: argument checks, gate-blocked weight matrices, the input product and the read-out."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

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
    _check_choice("input_init", input_init, [name for name in initializers.MATRIX_INITS if name != "identity"])
    return d, h, o


def check_recurrent_init(
    recurrent_init: str, recurrent_scale: float, spectral_radius: float | None, dtype: jnp.dtype
) -> None:
    """Checks the options of the recurrent matrix W_s: its initialiser's name, ``recurrent_scale`` (finite, > 0)
    and ``spectral_radius`` (None, or finite and >= 0), each at most the largest value of the parameters' ``dtype``
    (a NaN, an infinity or a 1e300 there made inf or NaN parameters silently), and not both: W_s is rescaled to the
    spectral radius after the scale multiplies it, so a scale other than 1 with a radius was silently ignored.

    Raises:
      ValueError naming the argument, with the expected and the received value.
    """
    _check_choice("recurrent_init", recurrent_init, list(initializers.MATRIX_INITS))
    _checks.positive_real("recurrent_scale", recurrent_scale, "a finite number > 0")
    _checks.representable("recurrent_scale", recurrent_scale, dtype)
    if spectral_radius is None:
        return
    _checks.real("spectral_radius", spectral_radius, "a value >= 0 and finite, or None", lambda v: 0 <= v < math.inf)
    _checks.representable("spectral_radius", spectral_radius, dtype)
    if recurrent_scale != 1.0:
        raise ValueError(
            "recurrent_scale: has no effect with spectral_radius (W_s is rescaled to that radius after scaling), "
            f"got recurrent_scale={float(recurrent_scale)!r} and spectral_radius={float(spectral_radius)!r}; drop one"
        )


def _check_choice(name: str, value: str, choices: list[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


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


def gate_input_product(x: jax.Array, w_x: jax.Array, gates: int, *, per_gate: bool) -> jax.Array:
    """x W_x for a gated cell's [D, G H] input weights: [..., D] -> [..., G H].

    One product, or, with ``per_gate`` for a single input (D = 1) on a CPU and outside differentiation, one
    [..., 1] @ [1, H] product per gate, concatenated (`_per_gate_product`). Both form the same products (each
    entry is one multiplication; what XLA fuses after them may round differently).

    Why: XLA:CPU compiled the single [B, 1] @ [1, G H] product, fused with the gates' slices into the step's
    element-wise work, into code about twice as slow as the per-gate form in a forward pass (the GRU's at
    (B, T, D, H) = (1, 1000, 1, 32): 0.62 vs 1.20 ms; (64, 256, 1, 128): 25 vs 54 ms; the LSTM's at
    (64, 256, 1, 128): 28 vs 47 ms), while under `jax.grad` the per-gate form made the GRU's autodiff train step
    up to 1.3x slower; so a differentiated forward pass (a `jax.custom_jvp`) keeps the single product. The cells
    say where the per-gate form was measured faster (``per_gate``). At D >= 2 the single product was the faster
    one (1.16x at (32, 100, 8, 64)). ``python -m experiments.gate_input_product`` measures it.
    """
    if per_gate and w_x.shape[0] == 1 and gates > 1 and jax.default_backend() == "cpu":
        return _per_gate_product(x, w_x, gates)
    return x @ w_x


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _per_gate_product(x: jax.Array, w_x: jax.Array, gates: int) -> jax.Array:
    """``concatenate([x @ W_g for each gate's block W_g])``, differentiated as the single product x W_x."""
    return jnp.concatenate([x @ w for w in jnp.split(w_x, gates, axis=-1)], axis=-1)


def _single_product_jvp(gates, primals, tangents):
    """The JVP of `_per_gate_product` in the single-product form (what autodiff of x @ W_x does)."""
    x, w_x = primals
    dx, dw = tangents
    terms = [d for d in (None if isinstance(dx, SymbolicZero) else dx @ w_x,
                         None if isinstance(dw, SymbolicZero) else x @ dw) if d is not None]  # fmt: skip
    tangent = functools.reduce(jnp.add, terms) if terms else jnp.zeros(x.shape[:-1] + w_x.shape[-1:], x.dtype)
    return x @ w_x, tangent


_per_gate_product.defjvp(_single_product_jvp, symbolic_zeros=True)
