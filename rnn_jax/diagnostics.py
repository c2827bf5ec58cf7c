"""Gradient diagnostics: gradient versus lag, Jacobian products, and the recurrent matrix's spectrum.

For a recurrent network with state s_t = F(s_{t-1}, x_t) and a loss E_T read out at the last step,

    dE_T/ds_t = dE_T/ds_T  prod_{t < j <= T} ds_j/ds_{j-1}

so how fast ``||dE_T/ds_t||`` falls with the lag T - t is decided by the Jacobian products. For the
Elman network ds_j/ds_{j-1} = diag(phi'(pre_j)) W_s^T (column convention, J[i, k] = ds_j[i]/ds_{j-1}[k]),
each factor's norm is at most gamma * lambda_1 (gamma bounds |phi'|, lambda_1 is the largest singular
value of W_s), hence Pascanu et al.'s (2013) bound

    || prod_{t < j <= T} ds_j/ds_{j-1} ||_2  <=  (lambda_1 * gamma) ** (T - t).

Every function here takes a cell module (`rnn_jax.cells`) and works for any cell whose carry is an
array or a pytree of [B, H] arrays; a carry pytree (the LSTM's (h, c)) is flattened per sequence into
one vector of N = H * leaves entries. Sequences are full length (no ``lengths``).

References:
  Bengio, Y., Simard, P. & Frasconi, P. (1994). Learning long-term dependencies with gradient descent
  is difficult. IEEE Transactions on Neural Networks 5(2).
  Pascanu, R., Mikolov, T. & Bengio, Y. (2013). On the difficulty of training recurrent neural
  networks. ICML.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from rnn_jax import _checks, activations, cells, initializers
from rnn_jax.cells import _common, elman
from rnn_jax.unroll import check_params, initial_carry, lax_scan

Activation = str | Callable[[jax.Array], jax.Array]


def _check_inputs(params: Any, xs: jax.Array, cell: str | ModuleType) -> tuple[ModuleType, int, int]:
    """(the cell module, T, B) after checking ``cell``, ``params`` (that cell's) and ``xs``."""
    cell = cells.resolve(cell)
    check_params(params, cell)
    _checks.rank("xs", xs, 3, "T, B, D")
    _checks.floating("xs", xs)
    _checks.not_float64("xs", xs, params.w_s.dtype)
    _checks.dim("xs", xs, 2, params.w_x.shape[0], "the input width D")
    return cell, xs.shape[0], xs.shape[1]


def readout(params: Any, carry: Any) -> jax.Array:
    """y = h W_y + b_y from a carry: the array itself, or its ``h`` field (the LSTM's (h, c)).

    Args:
      params: any cell's parameters (with ``w_y`` [H, O] and ``b_y`` [O]).
      carry: [B, H], or a NamedTuple with an ``h`` field [B, H].

    Returns:
      [B, O].
    """
    return _common.readout(params, carry)


def squared_error_at_end(y: jax.Array, targets: jax.Array) -> jax.Array:
    """E_T = 1/2 sum_o (y_T - target)^2 for each sequence: [B, O], [B, O] -> [B]."""
    return 0.5 * jnp.sum(jnp.square(y - targets), axis=-1)


def state_gradient_norms(
    params: Any,
    xs: jax.Array,
    targets: jax.Array,
    *,
    cell: str | ModuleType = elman,
    activation: Activation = "tanh",
    loss: Callable[[jax.Array, jax.Array], jax.Array] = squared_error_at_end,
) -> jax.Array:
    """||dE_T/ds_t|| for every earlier state s_t, indexed by the lag T - t.

    The states are made functions of an additive perturbation per step,

        s_t = F(s_{t-1}, x_t) + eps_t,     E_T = loss(readout(s_T), targets),

    and ``dE_T/ds_t = dE_T/deps_t`` at eps = 0, one `jax.grad` for all t at once. Each sequence's
    E_T depends only on its own states, so the gradient of the batch sum is per sequence.

    Args:
      params: the cell's parameters.
      xs: inputs [T, B, D].
      targets: [B, O], the target of the read-out at the last step.
      cell: the cell module (`rnn_jax.cells.elman`, ``lstm`` or ``gru``) or its name.
      activation: phi, by name or as a callable.
      loss: ``(y_T [B, O], targets [B, O]) -> [B]``; squared error by default.

    Returns:
      [T, B]: row k is ||dE_T/ds_{T-k}||_2 (k = 0 is the last state). For a carry pytree the norm
      is over all of its leaves (for the LSTM, h and c together).

    Raises:
      ValueError / TypeError naming the argument: ``cell``, ``params`` or ``xs`` as `step_jacobians`; ``targets`` not
      [B, O] (naming ``xs`` too when its B rows are the T of ``xs``, which then looks batch-first).
    """
    cell, num_steps, batch = _check_inputs(params, xs, cell)
    _checks.rank("targets", targets, 2, "B, O")
    _checks.time_major("xs", xs, "targets", targets, batch_axis=0)  # a batch-first xs: blamed on targets before
    _checks.dim("targets", targets, 0, batch, "the batch size B")
    if loss is squared_error_at_end:  # a loss of the caller's may read targets of another width
        _checks.dim("targets", targets, 1, params.w_y.shape[1], "the output width O")
    s0 = cell.initial_state(params, batch)
    step = functools.partial(cell.step, params, activation=activation)

    def total_loss(eps):
        def body(carry, inputs):
            x_t, e_t = inputs
            new, _ = step(carry, x_t)
            return jax.tree.map(jnp.add, new, e_t), None

        final, _ = lax_scan(body, s0, (xs, eps))
        return jnp.sum(loss(readout(params, final), targets))

    zeros = jax.tree.map(lambda a: jnp.zeros((num_steps, *a.shape), a.dtype), s0)
    grads = jax.grad(total_loss)(zeros)  # pytree of [T, B, H]
    leaves = [g.astype(jnp.float32) if g.dtype == jnp.bfloat16 else g for g in jax.tree.leaves(grads)]
    squares = sum(jnp.sum(jnp.square(g), axis=-1) for g in leaves)
    return jnp.sqrt(squares)[::-1]


def gradient_horizon(norms_by_lag: jax.Array | np.ndarray, ratio: float = 1e-3) -> int | None:
    """The first lag k at which ``norms_by_lag[k] < ratio * norms_by_lag[0]``, or None if none is.

    Args:
      norms_by_lag: [L] gradient norms, index k = lag k (for example a batch mean of
        `state_gradient_norms`); the lag-0 norm, the reference, finite and > 0, and none NaN.
      ratio: the fraction of the lag-0 value that counts as lost, in (0, 1) (1e-3 by default).

    Returns:
      The lag (an int in [1, L)), or None when the gradient never falls that low within L lags.

    Raises:
      ValueError naming the argument: ``norms_by_lag`` not a non-empty [L], with a lag-0 norm that is not finite and
      > 0 (a zero, NaN or Inf reference made every lag "never vanished", or lag 1 the horizon) or a NaN at any lag
      (never below the threshold, so read as kept); ``ratio`` not a number in (0, 1) (a ratio >= 1 gave lag 0).
    """
    norms = np.asarray(norms_by_lag, np.float64)
    if norms.ndim != 1 or norms.size < 1:
        raise ValueError(f"norms_by_lag: expected a non-empty rank-1 array [L], got shape {norms.shape}")
    ratio = _checks.real("ratio", ratio, "a number in (0, 1)", lambda v: 0 < v < 1)
    if not 0 < norms[0] < math.inf:
        raise ValueError(
            f"norms_by_lag: expected a finite lag-0 norm > 0 (the reference the others are compared with), got "
            f"norms_by_lag[0] = {norms[0]}"
        )
    nan = np.flatnonzero(np.isnan(norms))
    if nan.size:
        raise ValueError(f"norms_by_lag: expected no NaN, got {nan.size} NaN entries, the first at lag {int(nan[0])}")
    below = np.flatnonzero(norms < ratio * norms[0])
    return int(below[0]) if below.size else None


def step_jacobians(
    params: Any,
    xs: jax.Array,
    *,
    cell: str | ModuleType = elman,
    activation: Activation = "tanh",
    initial_state: Any = None,
) -> jax.Array:
    """The Jacobians J_t = ds_t/ds_{t-1} along the trajectory, one per step and sequence.

    ``jax.jacfwd`` of one step with respect to the carry, vmapped over the batch; a carry pytree is
    flattened per sequence into N entries (leaf order of the pytree: the LSTM's h then c).

    Args:
      params: the cell's parameters.
      xs: inputs [T, B, D].
      cell: the cell module or its name.
      activation: phi.
      initial_state: s_0 (the cell's zero state by default).

    Returns:
      [T, B, N, N], with J_t[b, i, k] = ds_t[b, i] / ds_{t-1}[b, k].
    """
    cell, _, batch = _check_inputs(params, xs, cell)
    s0 = initial_carry(initial_state, cell, params, batch)
    step = functools.partial(cell.step, params, activation=activation)
    _, unravel = ravel_pytree(jax.tree.map(lambda a: jnp.zeros(a.shape[1:], a.dtype), s0))  # one sequence's (B >= 0)

    def one(vector, x):  # one sequence: [N], [D] -> [N]
        carry = jax.tree.map(lambda a: a[None], unravel(vector))
        new, _ = step(carry, x[None])
        return ravel_pytree(jax.tree.map(lambda a: a[0], new))[0]

    flatten = jax.vmap(lambda c: ravel_pytree(c)[0])
    jacobian = jax.vmap(jax.jacfwd(one))

    def body(carry, x_t):
        vectors = flatten(carry)
        new, _ = step(carry, x_t)
        return new, jacobian(vectors, x_t)

    _, jacobians = lax_scan(body, s0, xs)
    return jacobians


def jacobian_product_singular_values(
    params: Any,
    xs: jax.Array,
    *,
    cell: str | ModuleType = elman,
    activation: Activation = "tanh",
    initial_state: Any = None,
) -> jax.Array:
    """Singular values of the products P_k = J_k J_{k-1} ... J_1 = ds_k/ds_0 along a trajectory.

    Args:
      params, xs, cell, activation, initial_state: as for `step_jacobians`.

    Returns:
      [T, B, N] (float32 for half-precision parameters: the products and their SVD are formed in at least
      float32, which XLA's SVD needs and a product of T factors deserves), row k - 1 the singular values of P_k
      (largest first); P_k maps a change of s_0 to
      the change of s_k, so its largest singular value is ||ds_k/ds_0||_2, the factor by which a
      gradient can grow or shrink over a lag of k steps.
    """
    jacobians = step_jacobians(params, xs, cell=cell, activation=activation, initial_state=initial_state)
    if jnp.finfo(jacobians.dtype).bits < 32:
        jacobians = jacobians.astype(jnp.float32)
    n = jacobians.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(n, dtype=jacobians.dtype), jacobians.shape[1:])

    def body(product, jacobian):
        product = jacobian @ product
        return product, product

    _, products = jax.lax.scan(body, eye, jacobians)
    return jnp.linalg.svd(products, compute_uv=False)


def recurrent_matrix(params: Any, block: int = 0) -> jax.Array:
    """The [H, H] recurrent matrix of a cell: W_s for Elman, one gate block of W_s otherwise.

    Args:
      params: any cell's parameters (``w_s`` [H, G * H] with G gate blocks).
      block: which gate block (0 for Elman; for the LSTM 0..3 = i, f, g, o; for the GRU
        0..2 = r, z, n). Block 0 is the input gate (LSTM) and the reset gate (GRU).

    Returns:
      [H, H].
    """
    if not hasattr(params, "w_s"):
        raise TypeError(
            f"params: expected one cell's parameters (with w_s), got {type(params).__name__} (of a deep network, "
            "take one layer's: params.layers[l].forward)"
        )
    w_s = params.w_s
    h = w_s.shape[0]
    gates = w_s.shape[1] // h
    try:  # a Python, NumPy or concrete JAX integer (not a bool: True read as block 1)
        index = _checks.count("block", block)
    except ValueError:
        index = -1
    if not 0 <= index < gates:
        raise ValueError(f"block: expected an integer in [0, {gates}) for w_s of shape {w_s.shape}, got {block!r}")
    block = index
    return w_s[:, block * h : (block + 1) * h]


def recurrent_spectrum(params: Any, block: int = 0) -> dict[str, float]:
    """Largest singular value and spectral radius of `recurrent_matrix` (host, float64; not for jit).

    Returns:
      {"largest_singular_value": lambda_1, "spectral_radius": max |eigenvalue|}.

    Raises:
      ValueError naming ``params.w_s`` (and the block) when the matrix holds NaN or Inf (NumPy's "SVD did not
      converge" before), besides `recurrent_matrix`'s errors.
    """
    matrix = recurrent_matrix(params, block)
    name = "params.w_s" if matrix.shape == params.w_s.shape else f"params.w_s (gate block {block})"
    _checks.finite(name, matrix)
    w = np.asarray(matrix, np.float64)
    return {
        "largest_singular_value": float(np.linalg.norm(w, 2)),
        "spectral_radius": initializers.spectral_radius(w),
    }


class BoundCheck(NamedTuple):
    """`pascanu_bound_check`'s result; arrays indexed by the lag k = 1 .. T (entry k - 1)."""

    lags: np.ndarray  # [T] int: 1 .. T
    product_norms: np.ndarray  # [T] largest ||P_k||_2 over the batch
    bound: np.ndarray  # [T] (lambda_1 * gamma) ** k
    eta: float  # lambda_1 * gamma
    holds: bool  # product_norms <= bound at every lag (relative tolerance ``rtol``)


def pascanu_bound_check(
    params: elman.ElmanParams,
    xs: jax.Array,
    *,
    activation: str = "tanh",
    rtol: float = 1e-4,
) -> BoundCheck:
    """Checks ||ds_k/ds_0||_2 <= (lambda_1 * gamma) ** k along the trajectories of an Elman network.

    lambda_1 is the largest singular value of W_s and gamma = ``activations.get(activation).gamma``
    the bound on |phi'| (1 for tanh, 1/4 for the logistic sigmoid). Pascanu et al. (2013): with
    eta = lambda_1 gamma < 1 the gradient vanishes at least as fast as eta ** lag.

    Args:
      params: Elman parameters (the bound is for W_s as the only recurrent path).
      xs: inputs [T, B, D].
      activation: a named activation with a finite gamma.
      rtol: relative slack for floating-point round-off.

    Returns:
      `BoundCheck`.

    Raises:
      TypeError / ValueError naming the argument: ``params`` not `ElmanParams` or with a non-finite W_s, an
      ``activation`` with no finite gamma, ``xs`` as `step_jacobians` or with no sequence (B = 0: there is no
      trajectory to check the bound on).
    """
    if not isinstance(params, elman.ElmanParams):
        raise TypeError(
            f"params: expected ElmanParams (the bound is for the Elman network), got {type(params).__name__}"
        )
    gamma = activations.get(activation).gamma
    if not np.isfinite(gamma):
        raise ValueError(f"activation: expected a named activation with a finite bound gamma, got {activation!r}")
    eta = recurrent_spectrum(params)["largest_singular_value"] * gamma
    if jnp.ndim(xs) == 3 and jnp.shape(xs)[1] == 0:
        raise ValueError(f"xs: expected at least one sequence, B >= 1 (the bound is checked along each), got shape "
                         f"{jnp.shape(xs)}")  # fmt: skip
    singular = jacobian_product_singular_values(params, xs, activation=activation)
    norms = np.asarray(jnp.max(singular[..., 0], axis=1), np.float64)
    lags = np.arange(1, norms.size + 1)
    bound = eta**lags
    return BoundCheck(lags, norms, bound, float(eta), bool(np.all(norms <= bound * (1 + rtol))))
