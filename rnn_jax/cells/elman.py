"""The Elman network (simple recurrent network), as a parameter pytree and a step function.

    pre_t = x_t W_x + s_{t-1} W_s + b_s
    s_t   = phi(pre_t)
    y_t   = s_t W_y + b_y

``y_t`` is a linear read-out: regression outputs for a squared-error loss, or logits for a
softmax cross-entropy. Elman's own network had logistic outputs and a context layer that
held a copy of the previous state; here the context is the carry of the scan.

References:
  Elman, J. L. (1990). Finding structure in time. Cognitive Science 14(2), 179-211.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax import _checks, activations, initializers
from rnn_jax.cells import _common


class ElmanParams(NamedTuple):
    """The weights of an Elman network, named as the textbook does."""

    w_x: jax.Array  # [D, H]  input -> state
    w_s: jax.Array  # [H, H]  state -> state (recurrent)
    b_s: jax.Array  # [H]     state bias
    w_y: jax.Array  # [H, O]  state -> output
    b_y: jax.Array  # [O]     output bias

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(D, H, O)."""
        return self.w_x.shape[0], self.w_s.shape[0], self.w_y.shape[1]


Params = ElmanParams


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
) -> ElmanParams:
    """Draws Elman parameters from ``key``; biases start at zero.

    Args:
      key: a PRNG key; one sub-key is split off for each weight matrix.
      input_size, hidden_size, output_size: D, H, O (each >= 1).
      input_init: initialiser of W_x and W_y, one of `initializers.MATRIX_INITS` except
        "identity".
      recurrent_init: initialiser of W_s, one of `initializers.MATRIX_INITS`; "identity"
        with ``activation="relu"`` is the IRNN of Le et al. (2015).
      recurrent_scale: multiplies W_s after drawing it (finite, > 0); leave it at 1 with ``spectral_radius``.
      spectral_radius: if given (>= 0), W_s is finally rescaled to this spectral radius.
      dtype: float32 (default), float64 (needs ``jax_enable_x64``) or bfloat16.

    Returns:
      ElmanParams with w_x [D, H], w_s [H, H], b_s [H], w_y [H, O], b_y [O].

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
    w_s = initializers.matrix(k_s, recurrent_init, (h, h), dtype, recurrent_scale)
    if spectral_radius is not None:
        w_s = initializers.scale_to_spectral_radius(w_s, spectral_radius)
    return ElmanParams(
        w_x=initializers.matrix(k_x, input_init, (d, h), dtype),
        w_s=w_s,
        b_s=jnp.zeros((h,), dtype),
        w_y=initializers.matrix(k_y, input_init, (h, o), dtype),
        b_y=jnp.zeros((o,), dtype),
    )


def initial_state(params: ElmanParams, batch_size: int) -> jax.Array:
    """The zero state, [B, H], in the parameters' dtype."""
    return jnp.zeros((batch_size, params.w_s.shape[0]), params.w_s.dtype)


def project_input(params: ElmanParams, x: jax.Array) -> jax.Array:
    """The input's part of the pre-activation, x W_x: [B, D] -> [B, H] for one step, or [T, B, D] -> [T, B, H]
    for all steps in one product (what `rnn_jax.unroll` does with ``projections="hoisted"``)."""
    return x @ params.w_x


def transition_projected(
    params: ElmanParams,
    s_prev: jax.Array,
    x_proj: jax.Array,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    recurrent_mask: jax.Array | None = None,
) -> jax.Array:
    """`transition` from the projected input ``x_proj`` = `project_input` (x_t) [B, H] instead of x_t."""
    phi = activations.get(activation).fn
    s_in = _common.recurrent_input(s_prev, recurrent_mask)
    return phi(x_proj + s_in @ params.w_s + params.b_s[None, :])


def transition(
    params: ElmanParams,
    s_prev: jax.Array,
    x: jax.Array,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    recurrent_mask: jax.Array | None = None,
) -> jax.Array:
    """The state update alone, s_t = phi(x_t W_x + (s_{t-1} * m) W_s + b_s), with no read-out.

    Args:
      params: the network's weights (``w_y``, ``b_y`` unused; None in a layer of `rnn_jax.deep`).
      s_prev: s_{t-1}, [B, H].
      x: x_t, [B, D].
      activation: phi, a name in `activations.NAMED` or an element-wise callable.
      recurrent_mask: m, [B, H], multiplies s_{t-1} where it enters the recurrent product only
        (recurrent dropout); None: m = 1.

    Returns:
      s_t, [B, H].

    References:
      Gal, Y. & Ghahramani, Z. (2016). A theoretically grounded application of dropout in recurrent
      neural networks. NeurIPS.
    """
    x_proj = project_input(params, x)
    return transition_projected(params, s_prev, x_proj, activation=activation, recurrent_mask=recurrent_mask)


hidden = _common.hidden


def step(
    params: ElmanParams,
    s_prev: jax.Array,
    x: jax.Array,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
) -> tuple[jax.Array, jax.Array]:
    """One time step, with scan's carry-first signature: `transition`, then the read-out y_t = s_t W_y + b_y.

    Args:
      params: the network's weights.
      s_prev: s_{t-1}, [B, H].
      x: x_t, [B, D].
      activation: phi, a name in `activations.NAMED` or an element-wise callable.

    Returns:
      (s_t [B, H], y_t [B, O]).
    """
    s = transition(params, s_prev, x, activation=activation)
    return s, _common.readout(params, s)
