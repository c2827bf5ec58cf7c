"""The gated recurrent unit (GRU) in the PyTorch / cuDNN form, as a parameter pytree and a step function.

    [a_r, a_z, a_n] = x_t W_x + b_x                 (input part, three blocks of H columns)
    [u_r, u_z, u_n] = h_{t-1} W_s + b_s             (recurrent part)
    r_t = sigmoid(a_r + u_r)                        (reset gate)
    z_t = sigmoid(a_z + u_z)                        (update gate)
    n_t = phi(a_n + r_t * u_n)                      (candidate; the reset gate scales h W_hn + b_hn)
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}
    y_t = h_t W_y + b_y

phi is tanh by default. Cho et al. (2014) apply the reset gate before the matrix product,
``phi(x W + (r * h) U)``; the form here (reset after it, with separate input and recurrent
biases) is PyTorch's ``nn.GRU`` and cuDNN's, so ``w_x = weight_ih_l0.T``, ``w_s = weight_hh_l0.T``,
``b_x = bias_ih_l0`` and ``b_s = bias_hh_l0``, blocks in the order (r, z, n).

References:
  Cho, K., van Merrienboer, B., Gulcehre, C., Bahdanau, D., Bougares, F., Schwenk, H. &
  Bengio, Y. (2014). Learning phrase representations using RNN encoder-decoder for statistical
  machine translation. EMNLP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax import _checks, activations, initializers
from rnn_jax.cells import _common

GATES = ("r", "z", "n")  # the order of the blocks in w_x, w_s, b_x and b_s (PyTorch's)


class GRUParams(NamedTuple):
    """The weights of a GRU; each gate matrix holds the blocks (r, z, n) side by side."""

    w_x: jax.Array  # [D, 3H]  input -> gates
    w_s: jax.Array  # [H, 3H]  state -> gates (recurrent)
    b_x: jax.Array  # [3H]     input biases
    b_s: jax.Array  # [3H]     recurrent biases (the n block sits inside the reset gate)
    w_y: jax.Array  # [H, O]   state -> output
    b_y: jax.Array  # [O]      output bias

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(D, H, O)."""
        return self.w_x.shape[0], self.w_s.shape[0], self.w_y.shape[1]


Params = GRUParams


def init(
    key: jax.Array,
    input_size: int,
    hidden_size: int,
    output_size: int,
    *,
    input_init: str = "glorot_uniform",
    recurrent_init: str = "orthogonal",
    recurrent_scale: float = 1.0,
    spectral_radius: float | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> GRUParams:
    """Draws GRU parameters from ``key``; biases start at zero.

    Each gate's [D, H] and [H, H] block is drawn on its own, so an orthogonal (or identity)
    ``recurrent_init`` makes every gate's recurrent block orthogonal (or the identity).

    Args:
      key: a PRNG key; one sub-key for W_x, one for W_s, one for W_y, each split per gate.
      input_size, hidden_size, output_size: D, H, O (each >= 1).
      input_init: initialiser of W_x and W_y, one of `initializers.MATRIX_INITS` except "identity".
      recurrent_init: initialiser of each [H, H] gate block of W_s.
      recurrent_scale: multiplies W_s after drawing it (finite, > 0); leave it at 1 with ``spectral_radius``.
      spectral_radius: if given (>= 0), each [H, H] gate block of W_s is rescaled to this spectral radius.
      dtype: float32 (default), float64 (needs ``jax_enable_x64``) or bfloat16.

    Returns:
      GRUParams with w_x [D, 3H], w_s [H, 3H], b_x [3H], b_s [3H], w_y [H, O], b_y [O].

    Raises:
      ValueError / TypeError naming the argument: a ``key`` that is not one PRNG key, a size that is not a positive
        integer, a non-floating dtype, an unknown initialiser, a ``recurrent_scale`` that is not > 0, a negative
        ``spectral_radius``, either one non-finite or above ``dtype``'s largest value, a ``recurrent_scale`` other
        than 1 with a ``spectral_radius`` (which would override it).
    """
    _checks.prng_key("key", key)
    d, h, o = _common.check_init_args(input_size, hidden_size, output_size, input_init, dtype)
    _common.check_recurrent_init(recurrent_init, recurrent_scale, spectral_radius, dtype)
    k_x, k_s, k_y = jax.random.split(key, 3)
    return GRUParams(
        w_x=_common.gate_blocks(k_x, input_init, d, h, 3, dtype),
        w_s=_common.gate_blocks(k_s, recurrent_init, h, h, 3, dtype, recurrent_scale, spectral_radius),
        b_x=jnp.zeros((3 * h,), dtype),
        b_s=jnp.zeros((3 * h,), dtype),
        w_y=initializers.matrix(k_y, input_init, (h, o), dtype),
        b_y=jnp.zeros((o,), dtype),
    )


def initial_state(params: GRUParams, batch_size: int) -> jax.Array:
    """The zero state, [B, H], in the parameters' dtype."""
    return jnp.zeros((batch_size, params.w_s.shape[0]), params.w_s.dtype)


def transition(
    params: GRUParams,
    h_prev: jax.Array,
    x: jax.Array,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    recurrent_mask: jax.Array | None = None,
) -> jax.Array:
    """The state update alone, h_{t-1} -> h_t, with no read-out.

        [u_r, u_z, u_n] = (h_{t-1} * m) W_s + b_s
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}        (the carry term is never masked)

    and the other gate equations of the module docstring.

    Args:
      params: the network's weights (``w_y``, ``b_y`` unused; None in a layer of `rnn_jax.deep`).
      h_prev: h_{t-1}, [B, H].
      x: x_t, [B, D].
      activation: phi of the candidate n (tanh by default); the gates r, z are always logistic.
      recurrent_mask: m, [B, H], multiplies h_{t-1} where it enters the recurrent product only
        (recurrent dropout, Gal & Ghahramani 2016); None: m = 1.

    Returns:
      h_t, [B, H].
    """
    x_proj = project_input(params, x)
    return transition_projected(params, h_prev, x_proj, activation=activation, recurrent_mask=recurrent_mask)


def project_input(params: GRUParams, x: jax.Array) -> jax.Array:
    """The input part of the gates, [a_r, a_z, a_n] = x W_x + b_x: [B, D] -> [B, 3H] for one step, or
    [T, B, D] -> [T, B, 3H] for all steps in one product (what `rnn_jax.unroll` does with
    ``projections="hoisted"``)."""
    return _common.gate_input_product(x, params.w_x, 3, per_gate=True) + _common.leading_axes(params.b_x, x.ndim)


def transition_projected(
    params: GRUParams,
    h_prev: jax.Array,
    x_proj: jax.Array,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    recurrent_mask: jax.Array | None = None,
) -> jax.Array:
    """`transition` from the projected input ``x_proj`` = `project_input` (x_t) [B, 3H] instead of x_t."""
    h_in = _common.recurrent_input(h_prev, recurrent_mask)
    return update(pre_activations(params, h_in, x_proj), h_prev, activation=activation)


def pre_activations(params: GRUParams, h_in: jax.Array, x_proj: jax.Array) -> jax.Array:
    """What the gate equations start from, [B, 4H]: [a_r + u_r, a_z + u_z, a_n, u_n], the two gates'
    pre-activations and the candidate's input and recurrent parts, from ``x_proj`` = [a_r, a_z, a_n] [B, 3H] and
    [u_r, u_z, u_n] = h_in W_s + b_s (what the hand-derived backward pass of `rnn_jax.bptt.gru_scan` keeps)."""
    a_r, a_z, a_n = jnp.split(x_proj, 3, axis=-1)
    u_r, u_z, u_n = jnp.split(h_in @ params.w_s + params.b_s[None, :], 3, axis=-1)
    return jnp.concatenate([a_r + u_r, a_z + u_z, a_n, u_n], axis=-1)


def update(
    pre: jax.Array, h_prev: jax.Array, *, activation: str | Callable[[jax.Array], jax.Array] = "tanh"
) -> jax.Array:
    """h_t from `pre_activations` [B, 4H] and h_{t-1} [B, H]: the gate equations."""
    phi = activations.get(activation).fn
    pre_r, pre_z, a_n, u_n = jnp.split(pre, 4, axis=-1)
    r = jax.nn.sigmoid(pre_r)
    z = jax.nn.sigmoid(pre_z)
    n = phi(a_n + r * u_n)
    return (1 - z) * n + z * h_prev


hidden = _common.hidden


def step(
    params: GRUParams,
    h_prev: jax.Array,
    x: jax.Array,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
) -> tuple[jax.Array, jax.Array]:
    """One time step, with scan's carry-first signature: `transition`, then the read-out y_t = h_t W_y + b_y.

    Args:
      params: the network's weights.
      h_prev: h_{t-1}, [B, H].
      x: x_t, [B, D].
      activation: phi of the candidate n (tanh by default); the gates r, z are always logistic.

    Returns:
      (h_t [B, H], y_t [B, O]).
    """
    h = transition(params, h_prev, x, activation=activation)
    return h, _common.readout(params, h)
