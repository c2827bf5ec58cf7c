"""Backpropagation through time for the Elman network, written out by hand; truncated BPTT.

For pre_t = x_t W_x + s_{t-1} W_s + b_s, s_t = phi(pre_t), y_t = s_t W_y + b_y and a loss
E = sum_t E_t(y_t), with g_t = dE/dy_t the output error:

    dE/dW_y = sum_t s_t^T g_t                        dE/db_y = sum_t g_t            (one step)
    delta_t = (g_t W_y^T + delta_{t+1} W_s^T) * phi'(pre_t),      delta_{T+1} = 0   (reverse time)
    dE/dW_s = sum_t s_{t-1}^T delta_t                dE/dW_x = sum_t x_t^T delta_t
    dE/db_s = sum_t delta_t                          dE/ds_0 = delta_1 W_s^T

The reverse-time `lax.scan` carries only ``delta_t W_s^T``; the weight gradients then come out
of single large matrix products over all T * B rows (``[H, T B] @ [T B, H]``), not one small
update per step. With a validity mask m_t (a sequence's state is frozen past its end,
s_t = m_t phi(pre_t) + (1 - m_t) s_{t-1}, and its outputs are zero there), the recursion
becomes

    a_t     = m_t g_t W_y^T + dE/ds_t|_direct + c_t          (c_T = dE/ds_T from the final state)
    delta_t = m_t a_t * phi'(pre_t)
    c_{t-1} = delta_t W_s^T + (1 - m_t) a_t

so a frozen step passes its gradient straight through to the state it copied.

`elman_scan` is the same forward pass with these equations as its `jax.custom_vjp`;
``rnn_jax.unroll(..., backward="bptt")`` selects it, so training can run on either path.

Truncated BPTT, TBPTT(k1, k2) (Williams & Peng 1990; Sutskever 2013, sec. 2.8.6): every k1
steps of a long stream, the weights are updated with the gradient of the loss on those k1
steps, flowing back at most k2 >= k1 steps; the state entering each window of k2 steps is
carried over from the previous window and held fixed (no gradient through it). k1 = k2 is the
chunked form common in frameworks; k1 = k2 = 1 is Elman's (1990) copy-back context layer.

References:
  Rumelhart, Hinton & Williams (1986); Werbos (1990), Backpropagation through time.
  Williams, R. J. & Peng, J. (1990). Neural Computation 2(4), 490-501.
  Sutskever, I. (2013). Training recurrent neural networks. PhD thesis, University of Toronto.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import custom_derivatives

from rnn_jax import _checks, activations, cells, losses
from rnn_jax.cells import elman, gru, lstm
from rnn_jax.cells._common import readout
from rnn_jax.cells.elman import ElmanParams
from rnn_jax.cells.gru import GRUParams
from rnn_jax.cells.lstm import LSTMParams, LSTMState
from rnn_jax.unroll import Projections, check_params, lax_scan, scan, scan_in_form, sequence_mask, stackable, unroll

LossName = losses.LossName


# ------------------------------------------------------------------ the output error g_t = dE/dy_t


def output_errors(
    loss: LossName, outputs: jax.Array, targets: jax.Array, mask: jax.Array | None, reduction: str = "mean"
) -> jax.Array:
    """g_t = dE/dy_t, by hand, for the losses of `rnn_jax.losses`.

        squared error   E = sum_t m_t |d_t - y_t|^2       g_t = 2 m_t (y_t - d_t)
        cross-entropy   E = -sum_t m_t log softmax(y_t)[d_t]   g_t = m_t (softmax(y_t) - onehot(d_t))

    each divided by the same count as the loss for ``reduction="mean"``.

    Args:
      loss: "squared_error" or "cross_entropy".
      outputs: y, [T, B, O].
      targets: d, [T, B, O] (squared error) or integer labels [T, B] (cross-entropy).
      mask: [T, B] bool (or None: every step).
      reduction: "sum" or "mean", as in `rnn_jax.losses`.

    Returns:
      [T, B, O].

    Raises:
      ValueError / TypeError naming the argument: an unknown ``loss`` or ``reduction``; ``targets`` or ``mask`` not
      of the outputs' shape (without O for labels and the mask); when concrete, labels outside [0, O) where the mask
      holds (they gave a zero one-hot row, a wrong error, silently) or a mask with negative or NaN weights
      (`rnn_jax.losses.check_targets`).
    """
    _checks.array("outputs", outputs)
    losses.check_targets(loss, jnp.shape(outputs), targets, mask, name="targets")
    return _output_errors(loss, outputs, targets, mask, reduction)


def _output_errors(loss, outputs, targets, mask, reduction):
    """`output_errors` on arguments already checked (by `_forward`, under the names of its caller)."""
    dtype = outputs.dtype
    m = jnp.ones(outputs.shape[:-1], dtype) if mask is None else mask.astype(dtype)
    count = jnp.maximum(jnp.sum(m), 1)
    if loss == "squared_error":
        g = 2 * (outputs - targets)
        per = count * outputs.shape[-1]
    elif loss == "cross_entropy":
        g = jax.nn.softmax(outputs, axis=-1) - jax.nn.one_hot(targets, outputs.shape[-1], dtype=dtype)
        per = count
    else:
        raise ValueError(f"loss: expected 'squared_error' or 'cross_entropy', got {loss!r}")
    g = g * m[..., None]
    if reduction == "mean":
        return g / per
    if reduction == "sum":
        return g
    raise ValueError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")


loss_value = losses.by_name


# ------------------------------------------------------------------ the backward pass


def activation_derivative(activation: activations.Activation, pre: jax.Array | None, s: jax.Array) -> jax.Array:
    """phi'(pre_t) for the backward pass (a module-level function, so a test can plant a bug here)."""
    return activations.derivative(activation, pre, s)


class Gradients(NamedTuple):
    """What `backward` returns."""

    params: ElmanParams  # dE/dW_x [D, H], dE/dW_s [H, H], dE/db_s [H], dE/dW_y [H, O], dE/db_y [O]
    inputs: jax.Array  # dE/dx_t, [T, B, D]
    initial_state: jax.Array  # dE/ds_0, [B, H]


def previous_states(initial_state: jax.Array, states: jax.Array) -> jax.Array:
    """s_{t-1} for t = 1 .. T: [T, B, H] (empty for T = 0)."""
    return jnp.concatenate([initial_state[None], states[:-1]], axis=0)[: states.shape[0]]


def _add_weight_sums(sums, x_t, s_prev_t, delta_t, s_t, g_t):
    """One reverse step's share of the weight gradients, added to ``sums`` = (dW_[x;s], dW_y, db_s):
    [x_t, s_{t-1}]^T delta_t, s_t^T g_t and sum_b delta_t (delta_t: [B, G H], the G gate blocks' errors)."""
    d_w_in, d_w_y, d_b_s = sums
    z_t = jnp.concatenate([x_t, s_prev_t], axis=1)  # [B, D + H]
    return d_w_in + z_t.T @ delta_t, d_w_y + s_t.T @ g_t, d_b_s + jnp.sum(delta_t, axis=0)


def _weight_sums_after(xs, s_prev, deltas, states, g_y):
    """The same sums over all T steps at once, after the reverse scan: [D + H, T B] @ [T B, G H] and
    [H, T B] @ [T B, O] products of the time steps' rows (xs [T, B, D]; s_prev, states [T, B, H]; deltas
    [T, B, G H]; g_y [T, B, O], masked)."""

    def flat(a):  # [T, B, N] -> [T B, N] (N written out: T B may be 0)
        return a.reshape(a.shape[0] * a.shape[1], a.shape[2])

    flat_deltas = flat(deltas)
    z = flat(jnp.concatenate([xs, s_prev], axis=-1))
    return z.T @ flat_deltas, flat(states).T @ flat(g_y), jnp.sum(flat_deltas, axis=0)


def _if(condition: bool, array):
    """``array`` where ``condition`` holds, else None (a scan input that a form of the step does not read)."""
    return array if condition else None


def _deltas(
    params: ElmanParams,
    direct: jax.Array,
    dphi: jax.Array,
    m: jax.Array | None,
    final_error: jax.Array,
    unroll: int,
) -> tuple[jax.Array, jax.Array]:
    """The reverse-time recursion: (dE/ds_0 [B, H], delta [T, B, H]) from the direct errors [T, B, H]."""
    w_s_t = params.w_s.T

    def body(carry, inputs):
        direct_t, dphi_t = inputs
        delta = (direct_t + carry) * dphi_t
        return delta @ w_s_t, stackable(delta)  # narrowed after the scan, as in every reverse scan here

    def masked_body(carry, inputs):
        direct_t, dphi_t, m_t = inputs
        total = direct_t + carry
        delta = m_t * total * dphi_t
        return delta @ w_s_t + (1 - m_t) * total, stackable(delta)

    scanned = (direct, dphi) if m is None else (direct, dphi, m)
    error, deltas = jax.lax.scan(body if m is None else masked_body, final_error, scanned, reverse=True, unroll=unroll)
    return error, deltas.astype(direct.dtype)


def _errors(params, xs, initial_state, mask, states, output_error, state_error, final_state_error, activation, unroll,
            recursion=None):  # fmt: skip
    """(g_t masked [T, B, O], delta_t [T, B, H], dE/ds_0 [B, H]): the error signals of the backward pass."""
    act = activations.get(activation)
    m = None if mask is None else mask.astype(states.dtype)[..., None]  # [T, B, 1]
    g_y = output_error if m is None else output_error * m
    direct = g_y @ params.w_y.T  # [T, B, H]
    if state_error is not None:
        direct = direct + state_error
    pre = None
    if act.derivative_from_output is None:  # a user callable: phi' needs the pre-activation
        s_prev = previous_states(initial_state, states)
        pre = xs @ params.w_x + s_prev @ params.w_s + params.b_s[None, None, :]
    dphi = activation_derivative(act, pre, states)
    final_error = jnp.zeros_like(initial_state) if final_state_error is None else final_state_error
    initial_error, deltas = (recursion or _deltas)(params, direct, dphi, m, final_error, unroll)
    return g_y, deltas, initial_error


def _check_backward_shapes(params, xs, initial_state, mask, states, output_error, state_error, final_state_error):
    """Raises ValueError naming the first of `backward`'s arrays whose shape is not [T, B, ...] (T, B of ``states``)
    with the widths D, H, O of ``params``. Reads only shapes."""
    _checks.rank("states", states, 3, "T, B, H")
    num_steps, batch = states.shape[:2]
    width, hidden, outputs = params.w_x.shape[0], params.w_s.shape[0], params.w_y.shape[1]
    expected = {
        "states": (num_steps, batch, hidden),
        "xs": (num_steps, batch, width),
        "initial_state": (batch, hidden),
        "mask": (num_steps, batch),
        "output_error": (num_steps, batch, outputs),
        "state_error": (num_steps, batch, hidden),
        "final_state_error": (batch, hidden),
    }
    given = dict(states=states, xs=xs, initial_state=initial_state, mask=mask, output_error=output_error,
                 state_error=state_error, final_state_error=final_state_error)  # fmt: skip
    for name, array in given.items():
        if array is not None and tuple(jnp.shape(array)) != expected[name]:
            raise ValueError(
                f"{name}: expected shape {expected[name]} (T, B of states {tuple(states.shape)}; D = {width}, "
                f"H = {hidden}, O = {outputs} of params), got {tuple(jnp.shape(array))}"
            )


def backward(
    params: ElmanParams,
    xs: jax.Array,
    initial_state: jax.Array,
    mask: jax.Array | None,
    states: jax.Array,
    output_error: jax.Array,
    *,
    state_error: jax.Array | None = None,
    final_state_error: jax.Array | None = None,
    activation: str | Callable | activations.Activation = "tanh",
    unroll: int = 1,
    recursion: Callable | None = None,
) -> Gradients:
    """The BPTT equations: every gradient from the output errors and the forward states.

    Args:
      params: the weights of the forward pass.
      xs: inputs x_t, [T, B, D].
      initial_state: s_0, [B, H].
      mask: [T, B] bool validity (state frozen and output zero where False), or None.
      states: s_t from the forward pass, [T, B, H].
      output_error: g_t = dE/dy_t, [T, B, O].
      state_error: dE/ds_t where the loss also reads the states directly, [T, B, H] (or None).
      final_state_error: dE/ds_T from a use of the final state, [B, H] (or None).
      activation: phi.
      unroll: the reverse scan's unroll factor.
      recursion: what runs the reverse-time recursion, ``(params, direct [T, B, H], phi' [T, B, H], mask
        [T, B, 1] or None, dE/ds_T [B, H], unroll) -> (dE/ds_0, delta [T, B, H])``: None, a `lax.scan`;
        `rnn_jax.fused.reverse_errors`, one kernel.

    Returns:
      `Gradients` (params, inputs [T, B, D], initial_state [B, H]).

    Raises:
      ValueError naming the argument whose shape is not the one above, for T and B of ``states`` and D, H, O of
      ``params`` (an ``xs`` of another width gave a w_x gradient of that width, silently).
    """
    _check_backward_shapes(params, xs, initial_state, mask, states, output_error, state_error, final_state_error)
    num_steps, batch, hidden = states.shape
    rows = num_steps * batch
    g_y, deltas, initial_error = _errors(
        params, xs, initial_state, mask, states, output_error, state_error, final_state_error, activation, unroll,
        recursion,
    )  # fmt: skip
    s_prev = previous_states(initial_state, states)
    flat_deltas = deltas.reshape(rows, hidden)
    flat_g = g_y.reshape(rows, g_y.shape[-1])
    grads = ElmanParams(
        w_x=xs.reshape(rows, xs.shape[-1]).T @ flat_deltas,
        w_s=s_prev.reshape(rows, hidden).T @ flat_deltas,
        b_s=jnp.sum(flat_deltas, axis=0),
        w_y=states.reshape(rows, hidden).T @ flat_g,
        b_y=jnp.sum(flat_g, axis=0),
    )
    return Gradients(grads, deltas @ params.w_x.T, initial_error)


# ------------------------------------------------------------------ the custom-VJP unroll


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def elman_scan(params, xs, initial_state, mask, activation, unroll, forms=("in_step", "in_step")):
    """The Elman unroll ``(outputs, states, final_state)`` whose VJP is `backward`.

    The arguments are those of `rnn_jax.unroll.scan`, already checked by `rnn_jax.unroll`
    (use ``unroll(..., backward="bptt")``); ``forms`` = (for a forward pass alone, for a forward
    pass that will be differentiated): where that pass computes its projections, "in_step" (the scan of
    `elman.step`), "hoisted" or "hoisted_readout" (`hoisted_scan`; `rnn_jax.unroll.unroll` chooses them, as
    measured).
    """
    return scan_in_form(elman, params, xs, initial_state, mask, activation, unroll, forms[0])


def _primal_values(args):
    """The arrays of a custom VJP's primal arguments, each leaf of which is a `CustomVJPPrimal` (in a VJP defined
    with ``symbolic_zeros=True``, as `elman_scan`'s is)."""
    return jax.tree.map(lambda p: p.value, args, is_leaf=lambda a: isinstance(a, custom_derivatives.CustomVJPPrimal))


def _known_zero(cotangent):
    """None for a symbolically zero cotangent (an output the loss does not read), else the cotangent itself: the
    backward passes then leave the additions of zero errors out of their scans."""
    return None if isinstance(cotangent, custom_derivatives.SymbolicZero) else cotangent


def _elman_scan_fwd(params, xs, initial_state, mask, activation, unroll, forms):
    params, xs, initial_state, mask = _primal_values((params, xs, initial_state, mask))
    outputs, states, final = scan_in_form(elman, params, xs, initial_state, mask, activation, unroll, forms[1])
    return (outputs, states, final), (params, xs, initial_state, mask, states)


def concatenated_backward(
    params: ElmanParams,
    xs: jax.Array,
    initial_state: jax.Array,
    mask: jax.Array | None,
    states: jax.Array,
    output_error: jax.Array,
    state_error: jax.Array,
    final_state_error: jax.Array,
    activation: str | Callable | activations.Activation = "tanh",
    unroll: int = 1,
    sum_in_scan: bool = True,
) -> Gradients:
    """The BPTT equations of `backward`, each step's two error products concatenated into one.

    One reverse `lax.scan` step t does

        a_t     = [m_t g_t, delta_{t+1}] [W_y ; W_s]^T + dE/ds_t|_direct + p_{t+1}    (one product)
        delta_t = m_t a_t * phi'(pre_t),        p_t = (1 - m_t) a_t                    (p = 0 unmasked)

    so the step's two error products (from the output and from the future) are one [B, O + H] @
    [O + H, H] product, and no [T, B, H] array of errors is formed before the scan. The weight
    gradients are

        dW_[x;s] = sum_t [x_t, s_{t-1}]^T delta_t,   dW_y = sum_t s_t^T (m_t g_t),   db_s = sum_t sum_b delta_t

    summed inside the reverse scan, step by step (``sum_in_scan``), or formed after it as single
    [D + H, T B] @ [T B, H] and [H, T B] @ [T B, O] products from the scan's deltas. Which is faster
    depends on B (measured with `rnn_jax.bench` on 2-core CPUs, XLA:CPU, JAX 0.10.2): summing inside is
    7-15% faster with 64 rows per device at (64,256,32,128,32) and (128,512,64,256,64); with fewer rows
    each step's [D + H, B] @ [B, H] product is mostly overhead, so below 64 rows the products after the scan are
    1.1-2x faster (`CPU_SUM_IN_SCAN_MIN_BATCH`). `unroll` uses this form on CPU only; on GPU and TPU, where large
    products are what the hardware does best, the custom VJP keeps `backward`.

    Args:
      as `backward`; ``state_error`` [T, B, H] and ``final_state_error`` [B, H] are arrays, or None where they
      are known to be zero (the loss reads neither: the custom VJP's symbolic zeros), which leaves their additions
      out of the scan; ``sum_in_scan``: where the weight gradients are summed (above).

    Returns:
      `Gradients` (params, inputs [T, B, D], initial_state [B, H]).
    """
    act = activations.get(activation)
    num_steps, batch, hidden = states.shape
    width = xs.shape[-1]
    s_prev = previous_states(initial_state, states)
    w_in = jnp.concatenate([params.w_x, params.w_s], axis=0)  # [D + H, H]
    w_back = jnp.concatenate([params.w_y.T, params.w_s.T], axis=0)  # [O + H, H]
    m = None if mask is None else mask.astype(states.dtype)[..., None]  # [T, B, 1]
    g_y = output_error if m is None else output_error * m  # [T, B, O]
    needs_inputs = sum_in_scan or act.derivative_from_output is None  # z_t = [x_t, s_{t-1}] inside the scan
    # Unmasked, with the sums after the scan, dE/ds_T joins the last step's direct error and no p_t is carried
    # (0.66x the time at (1,1000,1,32,1)); with the sums inside it passes through p (measured faster, README, "The
    # fast path"). With T = 0 there is no last step to join, so dE/ds_T passes through p as with a mask. Unmasked
    # with no dE/ds_T at all (None), the sums inside carry p = 0 only for larger steps (`CPU_ZERO_PASS_MIN_WORK`).
    zero_pass = sum_in_scan and batch * hidden >= CPU_ZERO_PASS_MIN_WORK
    carries_pass = m is not None or num_steps == 0 or (sum_in_scan and (final_state_error is not None or zero_pass))
    direct = state_error
    if final_state_error is not None and not carries_pass:
        direct = (jnp.zeros_like(states) if direct is None else direct).at[-1].add(final_state_error)
    if final_state_error is None and carries_pass:
        final_state_error = jnp.zeros_like(initial_state)

    def body(carry, inputs):
        delta_next, passed, sums = carry
        x_t, s_t, s_prev_t, g_t, direct_t, m_t = inputs  # g_t masked
        a = jnp.concatenate([g_t, delta_next], axis=1) @ w_back
        if direct_t is not None:
            a = a + direct_t
        if passed is not None:
            a = a + passed
        pre = None
        if act.derivative_from_output is None:  # a user callable: phi' needs the pre-activation
            pre = jnp.concatenate([x_t, s_prev_t], axis=1) @ w_in + params.b_s[None, :]
        delta = a * activation_derivative(act, pre, s_t)
        if m_t is not None:
            delta, passed = m_t * delta, (1 - m_t) * a
        elif passed is not None:
            passed = jnp.zeros_like(a)
        if sum_in_scan:
            sums = _add_weight_sums(sums, x_t, s_prev_t, delta, s_t, g_t)
        return (delta, passed, sums), stackable(delta)

    zeros = functools.partial(jnp.zeros, dtype=states.dtype)
    sums = (zeros(w_in.shape), zeros(params.w_y.shape), zeros(hidden)) if sum_in_scan else ()
    # dE/ds_T from a use of the final state enters a_T the way a frozen step's error passes back: as p_{T+1}
    init = (zeros((batch, hidden)), final_state_error if carries_pass else None, sums)
    scanned = (_if(needs_inputs, xs), states, _if(needs_inputs, s_prev), g_y, direct, m)
    (delta_1, passed, sums), deltas = jax.lax.scan(body, init, scanned, reverse=True, unroll=unroll)
    deltas = deltas.astype(states.dtype)
    d_w_in, d_w_y, d_b_s = sums if sum_in_scan else _weight_sums_after(xs, s_prev, deltas, states, g_y)
    grads = ElmanParams(d_w_in[:width], d_w_in[width:], d_b_s, d_w_y, jnp.sum(g_y, axis=(0, 1)))
    initial_error = delta_1 @ params.w_s.T
    return Gradients(grads, deltas @ params.w_x.T, initial_error if passed is None else initial_error + passed)


# On a CPU the Elman custom VJP's reverse scan is unrolled by 2 where the caller left ``unroll`` at 1. Measured
# (value, gradient and Adam, interleaved, the 2-core CPU, 2026-11-27): 0.55x the time at (1,1000,1,32,1), 0.79x at
# (1,1000,1,64,1), 0.90x at (4,1000,1,32,1), 0.96-0.97x at (32,100,8,64,8) and (64,256,32,128,32); unrolled by 3
# or 4 it was up to 2x slower at (1,1000,1,64,1), and unrolling the forward scan as well made forward passes up to
# 1.5x slower at B = 4. (The LSTM's and GRU's reverse scans unrolled by 2 measured a tie: they keep ``unroll``.)
CPU_REVERSE_UNROLL = 2

# With the weight sums inside the reverse scan and no mask, a pass-through error p_t = 0 carried through the scan
# (two copies and a fill a step, needed only with a mask or a dE/ds_T) made the Elman reverse scan faster from this
# many B H per device up: XLA:CPU's concurrency-optimised scheduler then ordered the step's products so that they
# overlapped (with that scheduler turned off both forms took the slower time). Measured (the reverse scan alone,
# interleaved, 11 repeats, the 2-core Xeon, 2026-11-29; without / with): B H = 4096 (32 x 128) 0.75x, 8192
# (64 x 128) 0.81x; 12288-16384 1.03-1.07x, 32768 (128 x 256) 1.15-1.19x, 65536 (256 x 256, T = 64) 0.95x.
CPU_ZERO_PASS_MIN_WORK = 12288

# On a CPU the weight gradients are summed inside the reverse scan from this many batch rows (per device) up, and
# formed after it below. Measured (train step, interleaved, 2-core AMD EPYC Zen 3 CPU; after / inside), 2026-11-27:
# 0.59x at (1,1000,1,32,1), 0.49x at (4,1000,1,32,1), 0.54x at (8,500,8,64,8), 0.67x at (16,256,16,64,16),
# 0.75x at (16,256,32,128,32), 1.15x at (128,512,64,256,64) on two devices (64 rows each); 2026-11-28
# (`experiments.weight_sums`): with 32-48 rows on one device 0.69-0.87x (Elman) and 0.71-0.97x (LSTM); with 32 rows
# on each of two devices a tie (0.97-1.08x); with 64 rows on one device 1.07-1.08x at (64,256,32,128,32) (Elman and
# LSTM), though 0.85x at (64,100,8,64,8), where H = 64 (the sums stay inside at 64 rows all the same) (README).
CPU_SUM_IN_SCAN_MIN_BATCH = 64

# The same threshold when the step is split over several CPU devices (`rnn_jax.distributed`, a shard_map): each
# device then runs on one core, and the products after the scan lose the second core that made them pay on one
# device. Measured (`experiments.weight_sums`, 11 interleaved repeats with the harness's settling pause, the 2-core
# Intel Xeon, 2026-11-29; after / inside): 32 rows on each of two devices 1.11x (Elman) and 1.15x (LSTM) at
# (64,256,32,128,32), while one device with 32 rows was 0.77-0.98x and with 64 rows 1.03x; 16 rows on each of two a tie
# (0.96-1.04x). On the Zen 3 machine 32 rows on each of two were a tie (0.97x, 1.01x), 16 rows 0.79-0.93x.
CPU_SUM_IN_SCAN_MIN_BATCH_SPLIT = 32


def _split_devices() -> int:
    """How many devices the step being traced is split over: the size of the manual axes of the enclosing
    `jax.shard_map` (1 outside one)."""
    mesh = jax.sharding.get_abstract_mesh()
    return math.prod(mesh.shape[axis] for axis in mesh.manual_axes) if not mesh.empty else 1


def _sums_in_scan(batch: int) -> bool:
    """Whether a custom VJP's reverse scan sums the weight gradients inside it for ``batch`` rows (per device): off
    a CPU always, on a CPU from `CPU_SUM_IN_SCAN_MIN_BATCH` rows up, or `CPU_SUM_IN_SCAN_MIN_BATCH_SPLIT` inside a
    step split over several devices (the Elman and LSTM cells alike)."""
    if jax.default_backend() != "cpu":
        return True
    split = _split_devices() > 1
    return batch >= (CPU_SUM_IN_SCAN_MIN_BATCH_SPLIT if split else CPU_SUM_IN_SCAN_MIN_BATCH)


def _elman_scan_bwd(activation, unroll, forms, residuals, cotangents):
    params, xs, initial_state, mask, states = residuals
    # None for what the loss does not read: in a train step the states and the final state
    g_outputs, g_states, g_final = map(_known_zero, cotangents)
    if g_outputs is None:  # a loss of the final state alone: the output errors are zero
        g_outputs = jnp.zeros((*states.shape[:2], params.w_y.shape[1]), states.dtype)
    if jax.default_backend() == "cpu":
        backward_of = functools.partial(concatenated_backward, sum_in_scan=_sums_in_scan(states.shape[1]))
        unroll = CPU_REVERSE_UNROLL if unroll == 1 else unroll
    else:
        backward_of = backward_of_cotangents
    grads = backward_of(params, xs, initial_state, mask, states, g_outputs, g_states, g_final, activation, unroll)
    return grads.params, grads.inputs, grads.initial_state, None


def backward_of_cotangents(
    params, xs, initial_state, mask, states, g_outputs, g_states, g_final, activation, unroll=1, recursion=None
):
    """`backward` from the unroll's three cotangents (outputs, states, final state), positionally, as the custom VJPs
    receive them."""
    return backward(
        params,
        xs,
        initial_state,
        mask,
        states,
        g_outputs,
        state_error=g_states,
        final_state_error=g_final,
        activation=activation,
        unroll=unroll,
        recursion=recursion,
    )


elman_scan.defvjp(_elman_scan_fwd, _elman_scan_bwd, symbolic_zeros=True)


# ------------------------------------------------------------------ the LSTM, by hand


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def lstm_scan(params, xs, initial_state, mask, activation, unroll, form="in_step"):
    """The LSTM unroll ``(outputs, states, final_state)`` whose VJP is `lstm_backward`.

    For z_t = x_t W_x + h_{t-1} W_s + b_s = [z_i, z_f, z_g, z_o], gates i, f, o = sigmoid(z_.), g = phi(z_g),
    c_t = f c_{t-1} + i g and h_t = o phi(c_t) (`rnn_jax.cells.lstm`), the reverse-time step is

        a_t      = [m_t g_t, dz_{t+1}] [W_y ; W_s]^T + dE/dh_t|_direct + p_{t+1}             (dE/dh_t)
        dc_t     = e_{t+1} + dE/dc_t|_direct + a_t o phi'(c_t)                              (dE/dc_t)
        dz_t     = m_t [dc_t g i(1 - i), dc_t c_{t-1} f(1 - f), dc_t i phi'(z_g), a_t phi(c_t) o(1 - o)]
        e_t      = m_t dc_t f + (1 - m_t)(e_{t+1} + dE/dc_t|_direct),      p_t = (1 - m_t) a_t
        dW_[x;s] += [x_t, h_{t-1}]^T dz_t,   dW_y += h_t^T (m_t g_t),   db_s += sum_b dz_t

    with the gate pre-activations z_t kept from the forward pass (recomputing them cost one more product per step
    and was slower than autodiff). The arguments are those of `rnn_jax.unroll.scan`, checked by `rnn_jax.unroll`
    (use ``unroll(..., cell=lstm, backward="bptt")``); ``form`` is where a forward pass alone computes its
    projections (`rnn_jax.unroll.resolve_projections`); a forward pass that will be differentiated computes them in
    the step, whose pre-activations it keeps.
    """
    return scan_in_form(lstm, params, xs, initial_state, mask, activation, unroll, form)


def _scan_keeping_pre(cell, params, xs, initial_state, mask, activation, unroll, form):
    """A gated cell's `scan` that also returns every step's ``cell.pre_activations`` (zero at masked steps): the
    forward rule of `lstm_scan` and `gru_scan`, ``((outputs, states, final), residuals)``; in the step whatever the
    primal's ``form``."""
    del form

    def step(carry, x_t):  # cell.step, also returning the pre-activations
        pre = cell.pre_activations(params, cell.hidden(carry), cell.project_input(params, x_t))
        new = cell.update(pre, carry, activation=activation)
        return new, (readout(params, new), pre)

    (outputs, pre), states, final = scan(step, initial_state, xs, mask, unroll)
    return (outputs, states, final), (params, xs, initial_state, mask, states, pre)


_lstm_scan_fwd = functools.partial(_scan_keeping_pre, lstm)


def lstm_backward(
    params: LSTMParams,
    xs: jax.Array,
    initial_state: LSTMState,
    mask: jax.Array | None,
    states: LSTMState,
    pre: jax.Array,
    output_error: jax.Array,
    state_error: LSTMState,
    final_state_error: LSTMState,
    activation: str | Callable | activations.Activation = "tanh",
    unroll: int = 1,
    sum_in_scan: bool = True,
) -> tuple[LSTMParams, jax.Array, LSTMState]:
    """The LSTM BPTT equations of `lstm_scan`: (parameter gradients, dE/dx [T, B, D], dE/d(h_0, c_0)).

    Args:
      states: (h_t, c_t) from the forward pass, each [T, B, H]; ``pre``: z_t, [T, B, 4H] (zero at masked steps).
      output_error: g_t = dE/dy_t [T, B, O]; ``state_error`` / ``final_state_error``: dE/d(h_t, c_t) where the
        loss reads the states [T, B, H] / the final state [B, H] directly.
      sum_in_scan: the weight gradients summed inside the reverse scan (True) or formed after it from the
        scan's dz_t, as `concatenated_backward` does for the Elman cell (on a CPU `_lstm_scan_bwd` chooses).
      the others: as `backward`.
    """
    act = activations.get(activation)
    num_steps, batch, hidden = states.h.shape
    width = xs.shape[-1]
    h_prev = previous_states(initial_state.h, states.h)
    c_prev = previous_states(initial_state.c, states.c)
    w_back = jnp.concatenate([params.w_y.T, params.w_s.T], axis=0)  # [O + 4H, H]
    m = None if mask is None else mask.astype(xs.dtype)[..., None]  # [T, B, 1]
    g_y = output_error if m is None else output_error * m  # [T, B, O]
    carries_pass = m is not None or sum_in_scan or num_steps == 0  # as in `concatenated_backward`
    direct_h = state_error.h if carries_pass else state_error.h.at[-1].add(final_state_error.h)

    def body(carry, inputs):
        dz_next, passed, dc_next, sums = carry
        x_t, hp_t, cp_t, h_t, c_t, z_t, g_t, direct_h, direct_c, m_t = inputs  # g_t masked
        a = jnp.concatenate([g_t, dz_next], axis=1) @ w_back + direct_h  # dE/dh_t
        if passed is not None:
            a = a + passed
        z_i, z_f, z_g, z_o = jnp.split(z_t, 4, axis=-1)
        i, f, o, g = jax.nn.sigmoid(z_i), jax.nn.sigmoid(z_f), jax.nn.sigmoid(z_o), act.fn(z_g)
        phi_c = act.fn(c_t)
        dc = dc_next + direct_c + a * o * activations.derivative(act, c_t, phi_c)
        dz = jnp.concatenate(
            [dc * g * i * (1 - i), dc * cp_t * f * (1 - f), dc * i * activations.derivative(act, z_g, g),
             a * phi_c * o * (1 - o)], axis=1,
        )  # fmt: skip
        if m_t is None:
            dc_back = dc * f
            passed = None if passed is None else jnp.zeros_like(a)
        else:
            dz, passed, dc_back = m_t * dz, (1 - m_t) * a, m_t * dc * f + (1 - m_t) * (dc_next + direct_c)
        if sum_in_scan:
            sums = _add_weight_sums(sums, x_t, hp_t, dz, h_t, g_t)
        return (dz, passed, dc_back, sums), stackable(dz)

    zeros = functools.partial(jnp.zeros, dtype=xs.dtype)
    sums = (zeros((width + hidden, 4 * hidden)), zeros(params.w_y.shape), zeros(4 * hidden)) if sum_in_scan else ()
    init = (zeros((batch, 4 * hidden)), final_state_error.h if carries_pass else None, final_state_error.c, sums)
    in_scan = functools.partial(_if, sum_in_scan)  # what only the sums inside the scan read
    inputs = (in_scan(xs), in_scan(h_prev), c_prev, in_scan(states.h), states.c, pre, g_y, direct_h, state_error.c, m)
    (dz_1, passed, dc_0, sums), dzs = jax.lax.scan(body, init, inputs, reverse=True, unroll=unroll)
    dzs = dzs.astype(xs.dtype)
    d_w_in, d_w_y, d_b_s = sums if sum_in_scan else _weight_sums_after(xs, h_prev, dzs, states.h, g_y)
    grads = LSTMParams(d_w_in[:width], d_w_in[width:], d_b_s, d_w_y, jnp.sum(g_y, axis=(0, 1)))
    initial_h_error = dz_1 @ params.w_s.T
    initial_error = LSTMState(h=initial_h_error if passed is None else initial_h_error + passed, c=dc_0)
    return grads, dzs @ params.w_x.T, initial_error


def _backward_rule(backward_of_arrays, activation, unroll, form, residuals, cotangents):
    """The custom VJP's backward rule of `lstm_scan` and `gru_scan` (``backward_of_arrays``: `lstm_backward` or
    `gru_backward`); the mask gets no cotangent (``form`` is the primal's, see `_scan_keeping_pre`)."""
    del form
    params, xs, initial_state, mask, states, pre = residuals
    g_outputs, g_states, g_final = cotangents
    grads, g_xs, g_initial = backward_of_arrays(
        params, xs, initial_state, mask, states, pre, g_outputs, g_states, g_final, activation, unroll
    )
    return grads, g_xs, g_initial, None


def _lstm_scan_bwd(activation, unroll, form, residuals, cotangents):
    # measured: README, "The same choice for the LSTM, and the study that measures both"
    backward_of = functools.partial(lstm_backward, sum_in_scan=_sums_in_scan(residuals[4].h.shape[1]))
    return _backward_rule(backward_of, activation, unroll, form, residuals, cotangents)


lstm_scan.defvjp(_lstm_scan_fwd, _lstm_scan_bwd)


# ------------------------------------------------------------------ the GRU, by hand


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def gru_scan(params, xs, initial_state, mask, activation, unroll, form="in_step"):
    """The GRU unroll ``(outputs, states, final_state)`` whose VJP is `gru_backward`.

    For the PyTorch-form GRU of `rnn_jax.cells.gru`, with the kept pre-activations [p_r, p_z, a_n, u_n]
    (r = sigmoid(p_r), z = sigmoid(p_z), q_t = a_n + r u_n, n = phi(q_t), h_t = (1 - z) n + z h_{t-1}), the
    reverse-time step is

        a_t   = [m_t g_t, du_{t+1}] [W_y ; W_s]^T + dE/dh_t|_direct + p_{t+1}               (dE/dh_t)
        dq_t  = a_t (1 - z) phi'(q_t),   dp_r = dq_t u_n r(1 - r),   dp_z = a_t (h_{t-1} - n) z(1 - z)
        da_t  = m_t [dp_r, dp_z, dq_t]          (dE/d(x_t W_x + b_x))
        du_t  = m_t [dp_r, dp_z, dq_t r]        (dE/d(h_{t-1} W_s + b_s): the reset gate scales u_n)
        p_t   = a_t (m_t z + 1 - m_t)           (what reaches h_{t-1} other than through W_s)
        dW_x += x_t^T da_t,  dW_s += h_{t-1}^T du_t,  dW_y += h_t^T (m_t g_t),  db_x += sum_b da_t,  db_s += sum_b du_t

    and dE/dh_0 = du_1 W_s^T + p_1. The arguments are those of `rnn_jax.unroll.scan`, checked by
    `rnn_jax.unroll` (use ``unroll(..., cell=gru, backward="bptt")``); ``form`` as in `lstm_scan`.
    """
    return scan_in_form(gru, params, xs, initial_state, mask, activation, unroll, form)


_gru_scan_fwd = functools.partial(_scan_keeping_pre, gru)


def gru_backward(
    params: GRUParams,
    xs: jax.Array,
    initial_state: jax.Array,
    mask: jax.Array | None,
    states: jax.Array,
    pre: jax.Array,
    output_error: jax.Array,
    state_error: jax.Array,
    final_state_error: jax.Array,
    activation: str | Callable | activations.Activation = "tanh",
    unroll: int = 1,
) -> tuple[GRUParams, jax.Array, jax.Array]:
    """The GRU BPTT equations of `gru_scan`: (parameter gradients, dE/dx [T, B, D], dE/dh_0 [B, H]).

    Args:
      states: h_t from the forward pass, [T, B, H]; ``pre``: `gru.pre_activations` [T, B, 4H] (zero at masked
        steps).
      output_error: g_t = dE/dy_t [T, B, O]; ``state_error`` / ``final_state_error``: dE/dh_t where the loss reads
        the states [T, B, H] / the final state [B, H] directly.
      the others: as `backward`.
    """
    act = activations.get(activation)
    num_steps, batch, hidden = states.shape
    h_prev = previous_states(initial_state, states)
    w_back = jnp.concatenate([params.w_y.T, params.w_s.T], axis=0)  # [O + 3H, H]
    m = None if mask is None else mask.astype(xs.dtype)[..., None]  # [T, B, 1]

    def body(carry, inputs):
        du_next, passed, d_w_x, d_w_s, d_w_y, d_b_x, d_b_s = carry
        x_t, hp_t, h_t, pre_t, g_t, direct_t, m_t = inputs
        if m_t is not None:
            g_t = m_t * g_t
        a = jnp.concatenate([g_t, du_next], axis=1) @ w_back + direct_t + passed  # dE/dh_t
        p_r, p_z, a_n, u_n = jnp.split(pre_t, 4, axis=-1)
        r, z = jax.nn.sigmoid(p_r), jax.nn.sigmoid(p_z)
        q = a_n + r * u_n
        n = act.fn(q)
        dq = a * (1 - z) * activations.derivative(act, q, n)
        dp_r, dp_z = dq * u_n * r * (1 - r), a * (hp_t - n) * z * (1 - z)
        da, du = jnp.concatenate([dp_r, dp_z, dq], axis=1), jnp.concatenate([dp_r, dp_z, dq * r], axis=1)
        if m_t is None:
            passed = a * z
        else:
            da, du, passed = m_t * da, m_t * du, a * (m_t * z + 1 - m_t)
        carry = (du, passed, d_w_x + x_t.T @ da, d_w_s + hp_t.T @ du, d_w_y + h_t.T @ g_t,
                 d_b_x + jnp.sum(da, axis=0), d_b_s + jnp.sum(du, axis=0))  # fmt: skip
        return carry, stackable(da)

    zeros = functools.partial(jnp.zeros, dtype=xs.dtype)
    init = (zeros((batch, 3 * hidden)), final_state_error, zeros(params.w_x.shape), zeros(params.w_s.shape),
            zeros(params.w_y.shape), zeros(3 * hidden), zeros(3 * hidden))  # fmt: skip
    inputs = (xs, h_prev, states, pre, output_error, state_error, m)
    (du_1, passed, d_w_x, d_w_s, d_w_y, d_b_x, d_b_s), das = jax.lax.scan(
        body, init, inputs, reverse=True, unroll=unroll
    )
    das = das.astype(xs.dtype)
    g_sum = output_error if m is None else output_error * m
    grads = GRUParams(d_w_x, d_w_s, d_b_x, d_b_s, d_w_y, jnp.sum(g_sum, axis=(0, 1)))
    return grads, das @ params.w_x.T, du_1 @ params.w_s.T + passed


gru_scan.defvjp(_gru_scan_fwd, functools.partial(_backward_rule, gru_backward))


# ------------------------------------------------------------------ the whole gradient, by hand


class _Forward(NamedTuple):
    states: jax.Array  # [T, B, H]
    outputs: jax.Array  # [T, B, O]
    initial_state: jax.Array  # s_0, [B, H]
    state_mask: jax.Array | None  # [T, B]: where the state updates
    scored: jax.Array | None  # [T, B]: where the loss counts
    output_error: jax.Array  # g_t = dE/dy_t, [T, B, O]


def _forward(params, xs, targets, loss, reduction, activation, initial_state, lengths, mask, loss_mask) -> _Forward:
    """The forward pass and the output errors that both `loss_and_gradients` and `per_lag_contributions` start from."""
    _checks.rank("xs", xs, 3, "T, B, D")
    _checks.time_major("xs", xs, "targets", targets)
    for name, array in (("mask", mask), ("loss_mask", loss_mask)):
        if array is not None:
            _checks.time_major("xs", xs, name, array)
    if lengths is not None:
        _checks.time_major("xs", xs, "lengths", lengths, batch_axis=0)
    run = unroll(params, xs, activation=activation, initial_state=initial_state, lengths=lengths, mask=mask)
    state_mask = sequence_mask(lengths, xs.shape[0]) if lengths is not None else mask
    scored = state_mask if loss_mask is None else loss_mask
    mask_name = "mask" if loss_mask is None else "loss_mask"
    losses.check_targets(loss, run.outputs.shape, targets, scored, name="targets", mask_name=mask_name)
    s0 = elman.initial_state(params, xs.shape[1]) if initial_state is None else initial_state
    g = _output_errors(loss, run.outputs, targets, scored, reduction)
    return _Forward(run.states, run.outputs, s0, state_mask, scored, g)


def loss_and_gradients(
    params: ElmanParams,
    xs: jax.Array,
    targets: jax.Array,
    *,
    loss: LossName = "squared_error",
    reduction: str = "mean",
    activation: str | Callable = "tanh",
    initial_state: jax.Array | None = None,
    lengths: jax.Array | None = None,
    mask: jax.Array | None = None,
    loss_mask: jax.Array | None = None,
) -> tuple[jax.Array, ElmanParams]:
    """The loss and dE/dparams by the hand-derived equations, with no use of `jax.grad`.

    Args:
      params: the weights.
      xs: [T, B, D].
      targets: [T, B, O] (squared error) or integer labels [T, B] (cross-entropy).
      loss, reduction: as in `rnn_jax.losses`.
      activation: phi.
      initial_state: s_0 [B, H] (zeros by default).
      lengths, mask: the sequences' validity, as in `rnn_jax.unroll`.
      loss_mask: the steps that are scored, [T, B] (default: the valid steps).

    Returns:
      (E, gradients as `ElmanParams`).

    Raises:
      ValueError / TypeError naming the argument: as `rnn_jax.unroll`, and for ``targets`` or ``loss_mask`` not of
      the outputs' shape (without O for labels and the mask; naming ``xs`` too when the two disagree as batch-first
      and time-major data do: [B, T, ...] against [T, B, ...]), or, when concrete, labels outside [0, O) on a scored
      step or a ``loss_mask`` with negative or NaN weights (`rnn_jax.losses.check_targets`).
    """
    f = _forward(params, xs, targets, loss, reduction, activation, initial_state, lengths, mask, loss_mask)
    grads = backward(params, xs, f.initial_state, f.state_mask, f.states, f.output_error, activation=activation)
    return loss_value(loss, f.outputs, targets, f.scored, reduction), grads.params


def per_lag_contributions(
    params: ElmanParams,
    xs: jax.Array,
    targets: jax.Array,
    *,
    loss: LossName = "squared_error",
    reduction: str = "mean",
    activation: str | Callable = "tanh",
    initial_state: jax.Array | None = None,
    lengths: jax.Array | None = None,
    mask: jax.Array | None = None,
    loss_mask: jax.Array | None = None,
) -> jax.Array:
    """The terms of the chain-rule sum for dE/dW_s, by the loss step t and the lag k.

        dE/dW_s = sum_t dE_t/dW_s,     dE_t/dW_s = sum_{k=0}^{t-1} s_{t-k-1}^T delta^{(t)}_{t-k}

    where delta^{(t)} is the error of the loss at step t alone, propagated back k steps. This is
    what a vanishing-gradient study plots: how much of the update the loss at t receives from
    k steps back. It costs T backward passes and T * T * H * H numbers: meant for small
    problems.

    Args:
      as `loss_and_gradients`.

    Returns:
      [T, T, H, H]: entry [t, k] is the contribution of lag k to dE_t/dW_s (zero for k > t).
      Its sum over t and k is dE/dW_s.
    """
    f = _forward(params, xs, targets, loss, reduction, activation, initial_state, lengths, mask, loss_mask)
    num_steps = xs.shape[0]
    s_prev = previous_states(f.initial_state, f.states)

    def contributions(t):
        only_t = jnp.where((jnp.arange(num_steps) == t)[:, None, None], f.output_error, 0)
        _, deltas, _ = _errors(params, xs, f.initial_state, f.state_mask, f.states, only_t, None, None, activation, 1)
        by_step = jnp.einsum("jbh,jbk->jhk", s_prev, deltas)  # [T (step j), H, H]
        lags = t - jnp.arange(num_steps)  # step j = t - k
        return jnp.where((lags >= 0)[:, None, None], by_step[jnp.clip(lags, 0, num_steps - 1)], 0)

    return jax.vmap(contributions)(jnp.arange(num_steps))


# ------------------------------------------------------------------ truncated BPTT


class Windows(NamedTuple):
    """The TBPTT(k1, k2) windows of a stream, stacked: U = N / k1 windows of k2 steps each."""

    inputs: jax.Array  # [U, k2, B, D]
    targets: jax.Array  # [U, k2, B, O] or [U, k2, B]
    valid: jax.Array  # [U, k2, B] bool: False before the stream's start (state held at s_0)
    scored: jax.Array  # [U, k2, B] bool: the last k1 steps, whose loss drives the update


def check_truncation(k1: int, k2: int) -> tuple[int, int]:
    """Raises ValueError unless 1 <= k1 <= k2."""
    k1 = _checks.positive_int("k1", k1)
    k2 = _checks.positive_int("k2", k2)
    if k1 > k2:
        raise ValueError(f"k1, k2: TBPTT(k1, k2) needs k1 <= k2 (update every k1 steps, back k2), got {k1} > {k2}")
    return k1, k2


def pad_stream(stream: jax.Array, k1: int, k2: int) -> jax.Array:
    """The stream [N, B, ...] with k2 - k1 zero steps in front, so that every window has k2 steps.

    Raises:
      ValueError unless 1 <= k1 <= k2 (`check_truncation`; k1 > k2 was a negative pad width, NumPy's error).
    """
    k1, k2 = check_truncation(k1, k2)
    return jnp.pad(stream, [(k2 - k1, 0)] + [(0, 0)] * (stream.ndim - 1))


def window(padded_stream: jax.Array, index: jax.Array | int, k1: int, k2: int) -> jax.Array:
    """Window ``index`` of a `pad_stream`-ed stream: the stream's steps [index k1 - (k2 - k1), (index + 1) k1).

    Steps before the stream's start are the padding zeros (and invalid, see `window_masks`).
    """
    return jax.lax.dynamic_slice_in_dim(padded_stream, index * k1, k2, axis=0)


def window_masks(index: jax.Array | int, k1: int, k2: int, batch: int) -> tuple[jax.Array, jax.Array]:
    """(valid [k2, B], scored [k2, B]) of window ``index``: see `Windows`."""
    position = jnp.arange(k2, dtype=jnp.result_type(index))
    valid = index * k1 - (k2 - k1) + position >= 0
    scored = position >= k2 - k1
    return jnp.broadcast_to(valid[:, None], (k2, batch)), jnp.broadcast_to(scored[:, None], (k2, batch))


def windows(inputs: jax.Array, targets: jax.Array, k1: int, k2: int) -> Windows:
    """All TBPTT(k1, k2) windows of a stream (inputs [N, B, D], targets [N, B, ...]); N must be a multiple of k1.

    Raises:
      ValueError naming the argument: for k1, k2 as `check_truncation`, N not a multiple of k1, inputs not of rank
      3, or targets not of the inputs' N and B (shorter ones were padded and sliced as if they fitted).
    """
    k1, k2 = check_truncation(k1, k2)
    _checks.rank("inputs", inputs, 3, "N, B, D")
    num_steps, batch = inputs.shape[:2]
    if jnp.ndim(targets) < 2:
        raise ValueError(
            f"targets: expected rank >= 2 [N, B, ...], got rank {jnp.ndim(targets)} with shape {jnp.shape(targets)}"
        )
    _checks.time_major("inputs", inputs, "targets", targets)
    _checks.dim("targets", targets, 0, num_steps, "the stream length N")
    _checks.dim("targets", targets, 1, batch, "the batch size B")
    if num_steps % k1:
        raise ValueError(f"k1: the stream length N = {num_steps} must be a multiple of k1 = {k1}")
    index = jnp.arange(num_steps // k1)
    masks = jax.vmap(lambda i: window_masks(i, k1, k2, batch))(index)
    padded_inputs, padded_targets = pad_stream(inputs, k1, k2), pad_stream(targets, k1, k2)
    return Windows(
        inputs=jax.vmap(lambda i: window(padded_inputs, i, k1, k2))(index),
        targets=jax.vmap(lambda i: window(padded_targets, i, k1, k2))(index),
        valid=masks[0],
        scored=masks[1],
    )


def truncated_loss(
    params,
    entering_state: jax.Array,
    inputs: jax.Array,
    targets: jax.Array,
    valid: jax.Array,
    scored: jax.Array,
    *,
    k1: int,
    loss: LossName = "squared_error",
    reduction: str = "mean",
    activation: str | Callable = "tanh",
    backward: Literal["autodiff", "bptt", "fast"] = "autodiff",
    cell=elman,
    unroll_factor: int = 1,
    projections: Projections = "auto",
) -> tuple[jax.Array, jax.Array]:
    """The truncated objective of one window, and the state to carry into the next window.

    The state entering the window is held fixed (`jax.lax.stop_gradient`), so the gradient of
    this loss flows back at most k2 = len(window) steps.

    Args:
      params: the weights.
      entering_state: the state before the window's first step, [B, H] (a constant).
      inputs, targets, valid, scored: one window (see `Windows`), [k2, B, ...].
      k1: steps per update; the carried state is the one after the window's k1-th step.
      loss, reduction, activation, backward, cell, projections: as in `rnn_jax.unroll` and `rnn_jax.losses`;
      unroll_factor: `rnn_jax.unroll`'s ``unroll`` (the scan's unroll factor).

    Returns:
      (loss on the scored steps, the state entering the next window [B, H]).

    Raises:
      ValueError: unless 1 <= k1 <= k2 (the window's length: the state after step k1 is carried), and as
      `rnn_jax.unroll` and `rnn_jax.losses`.
    """
    check_truncation(k1, jnp.shape(inputs)[0])
    entering_state = jax.tree.map(jax.lax.stop_gradient, entering_state)
    run = unroll(
        params, inputs, activation=activation, initial_state=entering_state, mask=valid, backward=backward, cell=cell,
        unroll=unroll_factor, projections=projections,
    )  # fmt: skip
    carried = jax.tree.map(lambda s: jax.lax.stop_gradient(s[k1 - 1]), run.states)
    return loss_value(loss, run.outputs, targets, scored, reduction), carried


def tbptt_gradients(
    params,
    inputs: jax.Array,
    targets: jax.Array,
    k1: int,
    k2: int,
    *,
    loss: LossName = "squared_error",
    reduction: str = "mean",
    activation: str | Callable = "tanh",
    backward: Literal["autodiff", "bptt", "fast"] = "autodiff",
    initial_state: jax.Array | None = None,
    cell=elman,
) -> tuple[jax.Array, object, jax.Array]:
    """The gradient of every TBPTT(k1, k2) update of a stream, at fixed parameters.

    What training would apply at each update if the weights did not change in between; with
    k2 >= N and reduction="sum", their sum is the full BPTT gradient of the whole stream's loss.

    Args:
      params: the weights.
      inputs: the stream, [N, B, D] (N a multiple of k1).
      targets: [N, B, O] or [N, B].
      k1, k2: update every k1 steps, back at most k2 steps (1 <= k1 <= k2).
      loss, reduction, activation, backward, cell: as in `truncated_loss`.
      initial_state: s_0, [B, H] (zeros by default).

    Returns:
      (losses [U], gradients stacked on a leading axis [U, ...], the carried state after the
      last window [B, H]).

    Raises:
      ValueError / TypeError naming the argument: for k1, k2 as `check_truncation` and N not a multiple of k1;
      for a ``cell`` (module or name) that is not one or ``params`` not of that cell (`rnn_jax.unroll.check_params`);
      for ``targets`` not of the outputs' shape [N, B, O] (labels: [N, B]; naming ``inputs`` too when the two
      disagree as batch-first and time-major data do) or, when concrete, labels outside [0, O) (every step of a
      stream is scored), checked here because the windows' losses are traced.
    """
    cell = cells.resolve(cell)
    check_params(params, cell)
    _checks.rank("inputs", inputs, 3, "N, B, D")
    _checks.time_major("inputs", inputs, "targets", targets)
    losses.check_targets(loss, (*inputs.shape[:2], params.w_y.shape[-1]), targets, name="targets")
    w = windows(inputs, targets, k1, k2)
    s0 = cell.initial_state(params, inputs.shape[1]) if initial_state is None else initial_state
    objective = functools.partial(
        truncated_loss, k1=k1, loss=loss, reduction=reduction, activation=activation, backward=backward, cell=cell
    )

    def body(carry, win):
        (value, carried), grads = jax.value_and_grad(objective, has_aux=True)(params, carry, *win)
        return carried, (value, grads)

    final, (values, grads) = lax_scan(body, s0, tuple(w))
    return values, grads, final
