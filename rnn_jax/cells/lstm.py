"""Long short-term memory (LSTM) with a forget gate, as a parameter pytree and a step function.

    [i, f, g, o] = x_t W_x + h_{t-1} W_s + b_s                 (four gate blocks of H columns)
    i_t = sigmoid(i),  f_t = sigmoid(f),  o_t = sigmoid(o),  g_t = phi(g)
    c_t = f_t * c_{t-1} + i_t * g_t                            (the memory cell)
    h_t = o_t * phi(c_t)                                       (the state)
    y_t = h_t W_y + b_y

phi is tanh by default. The gate blocks are laid out as in PyTorch's ``nn.LSTM`` (i, f, g, o),
so ``w_x = weight_ih_l0.T``, ``w_s = weight_hh_l0.T`` and ``b_s = bias_ih_l0 + bias_hh_l0``.
The forget gate's bias starts at ``forget_bias`` (1.0) so that the cell remembers by default
(Gers et al. 2000; Jozefowicz et al. 2015).

References:
  Hochreiter, S. & Schmidhuber, J. (1997). Long short-term memory. Neural Computation 9(8).
  Gers, F. A., Schmidhuber, J. & Cummins, F. (2000). Learning to forget: continual prediction
  with LSTM. Neural Computation 12(10), 2451-2471.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax import _checks, activations, initializers
from rnn_jax.cells import _common

GATES = ("i", "f", "g", "o")  # the order of the blocks in w_x, w_s and b_s (PyTorch's)


class LSTMParams(NamedTuple):
    """The weights of an LSTM; each gate matrix holds the blocks (i, f, g, o) side by side."""

    w_x: jax.Array  # [D, 4H]  input -> gates
    w_s: jax.Array  # [H, 4H]  state -> gates (recurrent)
    b_s: jax.Array  # [4H]     gate biases (the f block starts at forget_bias)
    w_y: jax.Array  # [H, O]   state -> output
    b_y: jax.Array  # [O]      output bias

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(D, H, O)."""
        return self.w_x.shape[0], self.w_s.shape[0], self.w_y.shape[1]


class LSTMState(NamedTuple):
    """The carry of the LSTM."""

    h: jax.Array  # [B, H]  the state (what the read-out and the gates see)
    c: jax.Array  # [B, H]  the memory cell


Params = LSTMParams
State = LSTMState


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
    forget_bias: float = 1.0,
) -> LSTMParams:
    """Draws LSTM parameters from ``key``; biases start at zero except the forget gate's.

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
      forget_bias: the initial bias of the forget gate (the f block of b_s), finite.

    Returns:
      LSTMParams with w_x [D, 4H], w_s [H, 4H], b_s [4H], w_y [H, O], b_y [O].

    Raises:
      ValueError / TypeError naming the argument: a ``key`` that is not one PRNG key, a size that is not a positive
        integer, a non-floating dtype, an unknown initialiser, a ``recurrent_scale`` that is not > 0, a negative
        ``spectral_radius``, either one non-finite or above ``dtype``'s largest value, a ``recurrent_scale`` other
        than 1 with a ``spectral_radius`` (which would override it), a non-finite ``forget_bias``.
    """
    _checks.prng_key("key", key)
    d, h, o = _common.check_init_args(input_size, hidden_size, output_size, input_init, dtype)
    _common.check_recurrent_init(recurrent_init, recurrent_scale, spectral_radius, dtype)
    forget_bias = _checks.real("forget_bias", forget_bias, "a finite number", math.isfinite)
    k_x, k_s, k_y = jax.random.split(key, 3)
    b_s = jnp.zeros((4 * h,), dtype).at[h : 2 * h].set(jnp.asarray(forget_bias, dtype))
    return LSTMParams(
        w_x=_common.gate_blocks(k_x, input_init, d, h, 4, dtype),
        w_s=_common.gate_blocks(k_s, recurrent_init, h, h, 4, dtype, recurrent_scale, spectral_radius),
        b_s=b_s,
        w_y=initializers.matrix(k_y, input_init, (h, o), dtype),
        b_y=jnp.zeros((o,), dtype),
    )


def initial_state(params: LSTMParams, batch_size: int) -> LSTMState:
    """The zero carry: h and c both [B, H], in the parameters' dtype."""
    zeros = jnp.zeros((batch_size, params.w_s.shape[0]), params.w_s.dtype)
    return LSTMState(h=zeros, c=zeros)


def transition(
    params: LSTMParams,
    carry: LSTMState,
    x: jax.Array,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    recurrent_mask: jax.Array | None = None,
) -> LSTMState:
    """The state update alone, (h_{t-1}, c_{t-1}) -> (h_t, c_t), with no read-out.

        [i, f, g, o] = x_t W_x + (h_{t-1} * m) W_s + b_s

    and the gate equations of the module docstring; the memory c_{t-1} is never masked.

    Args:
      params: the network's weights (``w_y``, ``b_y`` unused; None in a layer of `rnn_jax.deep`).
      carry: (h_{t-1}, c_{t-1}), each [B, H].
      x: x_t, [B, D].
      activation: phi of the cell input g and of the cell output (tanh by default).
      recurrent_mask: m, [B, H], multiplies h_{t-1} where it enters the recurrent product only
        (recurrent dropout, Gal & Ghahramani 2016); None: m = 1.

    Returns:
      (h_t, c_t), each [B, H].
    """
    x_proj = project_input(params, x)
    return transition_projected(params, carry, x_proj, activation=activation, recurrent_mask=recurrent_mask)


def project_input(params: LSTMParams, x: jax.Array) -> jax.Array:
    """The input's part of the gates, x W_x: [B, D] -> [B, 4H] for one step, or [T, B, D] -> [T, B, 4H] for all
    steps in one product (what `rnn_jax.unroll` does with ``projections="hoisted"``)."""
    # per gate (at D = 1 on a CPU, `_common.gate_input_product`) only for B > 1: at B = 1 the LSTM's forward pass
    # was 1.3x slower per gate at (T, D, H) = (1000, 1, 32)
    return _common.gate_input_product(x, params.w_x, 4, per_gate=x.ndim >= 2 and x.shape[-2] > 1)


def transition_projected(
    params: LSTMParams,
    carry: LSTMState,
    x_proj: jax.Array,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    recurrent_mask: jax.Array | None = None,
) -> LSTMState:
    """`transition` from the projected input ``x_proj`` = `project_input` (x_t) [B, 4H] instead of x_t."""
    h_in = _common.recurrent_input(carry.h, recurrent_mask)
    return update(pre_activations(params, h_in, x_proj), carry, activation=activation)


def pre_activations(params: LSTMParams, h_in: jax.Array, x_proj: jax.Array) -> jax.Array:
    """The gates' pre-activations z = [i, f, g, o] = x_proj + h_in W_s + b_s, [B, 4H] (what the hand-derived
    backward pass of `rnn_jax.bptt.lstm_scan` keeps)."""
    return x_proj + h_in @ params.w_s + params.b_s[None, :]


def update(z: jax.Array, carry: LSTMState, *, activation: str | Callable[[jax.Array], jax.Array] = "tanh") -> LSTMState:
    """(h_t, c_t) from the gates' pre-activations z [B, 4H] and the previous carry, of which only c_{t-1} [B, H]
    enters (h_{t-1} is already in z): the gate equations."""
    phi = activations.get(activation).fn
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * phi(g)
    h = jax.nn.sigmoid(o) * phi(c)
    return LSTMState(h=h, c=c)


hidden = _common.hidden


def step(
    params: LSTMParams,
    carry: LSTMState,
    x: jax.Array,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
) -> tuple[LSTMState, jax.Array]:
    """One time step, with scan's carry-first signature: `transition`, then the read-out y_t = h_t W_y + b_y.

    Args:
      params: the network's weights.
      carry: (h_{t-1}, c_{t-1}), each [B, H].
      x: x_t, [B, D].
      activation: phi of the cell input g and of the cell output (tanh by default); the gates
        i, f, o are always logistic.

    Returns:
      ((h_t, c_t), y_t [B, O]).
    """
    carry = transition(params, carry, x, activation=activation)
    return carry, _common.readout(params, carry)
