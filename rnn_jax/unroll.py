"""Unrolling a cell through time with `jax.lax.scan`.

For the Elman cell, `unroll` computes, for t = 1 .. T,

    s_t = phi(x_t W_x + s_{t-1} W_s + b_s),   y_t = s_t W_y + b_y,   s_0 = initial_state

and with ``lengths`` (or a ``mask``) a sequence's state is frozen past its end:

    for t in range(T):
        s_new, y_t = step(params, s, x[t])
        s = s_new if t < lengths[b] else s          # per sequence b
        y_t = y_t if t < lengths[b] else 0
        states[t], outputs[t] = s, y_t

so ``final_state`` is each sequence's state at its last valid step, the outputs past the end
are zeros (as in PyTorch's padded sequences), and the losses score only the valid steps.

The three shapes of the literature:
  many-to-many  the outputs at every step, ``Unrolled.outputs`` [T, B, O];
  many-to-one   the output at each sequence's last valid step, `last_valid` [B, O]
                (or, equivalently, a loss mask that selects only that step);
  one-to-many   `generate`: feed each output (or a sample from it) back as the next input.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import _checks, cells
from rnn_jax.cells import _common, elman, gru, lstm


class Unrolled(NamedTuple):
    """The result of `unroll` (time-major unless ``time_major=False`` was asked for)."""

    outputs: jax.Array  # [T, B, O]  y_t
    states: jax.Array  # [T, B, H]  s_t (frozen past each sequence's end)
    final_state: jax.Array  # [B, H]  s at each sequence's last valid step


def sequence_mask(lengths: jax.Array, num_steps: int) -> jax.Array:
    """The validity mask of a padded batch: ``mask[t, b] = t < lengths[b]``.

    Args:
      lengths: [B] integer lengths, each in [0, T] (checked when concrete); any integer dtype (compared as int32 or
        wider, so that T past a small dtype's range, 300 steps with uint8 lengths, does not wrap around).
      num_steps: T, an integer >= 0.

    Returns:
      [T, B] bool.

    Raises:
      ValueError naming ``num_steps`` when it is not an integer >= 0; ValueError / TypeError naming ``lengths``: not
      of rank 1, not integers, or (concrete) outside [0, T].
    """
    num_steps = _checks.count("num_steps", num_steps)
    lengths = jnp.asarray(lengths)
    lengths = _checks.lengths("lengths", lengths, num_steps, lengths.size)  # rank 1 checked first; any B
    wide = lengths.dtype if jnp.iinfo(lengths.dtype).bits >= 32 else jnp.int32  # an int8 / uint8 / int16 step
    return jnp.arange(num_steps, dtype=wide)[:, None] < lengths.astype(wide)[None, :]  # counter wrapped past its range


def last_valid(sequence, lengths: jax.Array):
    """Each sequence's entry at its last valid step ``lengths[b] - 1`` (many-to-one).

    Args:
      sequence: [T, B, ...] time-major, or a pytree of them (the LSTM's states, an ``LSTMState`` of two), every leaf
        of the same T and B (not a final state [B, H], which already is each sequence's last valid state).
      lengths: [B] integers in [1, T].

    Returns:
      [B, ...] (a pytree of them for a pytree).

    Raises:
      ValueError naming the leaf of ``sequence`` that is not [T, B, ...] with B = the size of ``lengths`` and the T of
      the first leaf; ValueError / TypeError naming ``lengths``: not [B] integers or (concrete) outside [1, T].
    """
    lengths = jnp.asarray(lengths)
    _checks.rank("lengths", lengths, 1, "B")
    batch = lengths.shape[0]
    paths = jax.tree_util.tree_flatten_with_path(sequence)[0]
    if not paths:
        raise ValueError(f"sequence: expected a [T, B, ...] array or a pytree of them, got {sequence!r}")
    steps = None
    for path, leaf in paths:
        name = "sequence" + jax.tree_util.keystr(path)
        shape = jnp.shape(leaf)
        if len(shape) < 2 or shape[1] != batch or (steps is not None and shape[0] != steps):
            want = f"B = {batch} (the size of lengths)"
            if steps is not None:
                want += f" and T = {steps}, the first leaf's"
            hint = " (a final state [B, H] is already each sequence's last valid state)" if len(shape) == 2 else ""
            raise ValueError(f"{name}: expected time-major [T, B, ...] with {want}, got shape {shape}{hint}")
        steps = shape[0]
    lengths = _checks.lengths("lengths", lengths, steps, batch, shortest=1)
    return jax.tree.map(lambda a: a[lengths - 1, jnp.arange(batch)], sequence)


def _resolve_mask(mask: jax.Array | None, lengths: jax.Array | None, num_steps: int, batch: int) -> jax.Array | None:
    if mask is not None and lengths is not None:
        raise ValueError("mask, lengths: give one of them, not both")
    if lengths is not None:
        return sequence_mask(_checks.lengths("lengths", lengths, num_steps, batch), num_steps)
    if mask is not None:
        mask = jnp.asarray(mask)
        _checks.rank("mask", mask, 2, "T, B")
        if mask.shape != (num_steps, batch):
            raise ValueError(f"mask: expected shape [T, B] = {(num_steps, batch)}, got {mask.shape}")
        if mask.dtype != jnp.bool_:
            raise TypeError(f"mask: expected dtype bool, got {mask.dtype}")
    return mask


Remat = int | Literal["sqrt"] | None


def remat_chunk(remat: Remat, num_steps: int) -> int | None:
    """The checkpoint interval k of a ``remat`` option for T = ``num_steps`` (None: no rematerialisation).

    ``remat`` is None, an integer k >= 1 (or its decimal string, as the command line gives it), or
    "sqrt" (k = ceil(sqrt(T))).

    Raises:
      ValueError naming ``remat`` for anything else.
    """
    if remat is None:
        return None
    if isinstance(remat, str) and remat.isdigit():
        remat = int(remat)
    if remat == "sqrt":
        return math.isqrt(num_steps - 1) + 1 if num_steps > 1 else 1  # ceil(sqrt(T))
    if isinstance(remat, bool) or not isinstance(remat, int | np.integer) or remat < 1:
        raise ValueError(f"remat: expected None, a positive integer k or 'sqrt', got {remat!r}")
    return int(remat)


def check_scan_options(remat: Remat, compute_dtype) -> None:
    """Refuses a ``remat`` that `remat_chunk` does not take (ValueError) or a mixed-precision ``compute_dtype``
    that is neither None nor a floating dtype (TypeError): the options of `scan_in_dtype`."""
    remat_chunk(remat, 1)
    if compute_dtype is None:
        return
    try:
        floating = jnp.issubdtype(jnp.dtype(compute_dtype), jnp.floating)
    except TypeError:  # not a dtype at all ("foo"): NumPy's "data type not understood"
        floating = False
    if not floating:
        raise TypeError(f"compute_dtype: expected a floating dtype or None, got {compute_dtype!r}")


def _plain_scan(cell_step, initial_state, xs, mask, unroll):
    if mask is None:

        def body(carry, x_t):
            new, y_t = cell_step(carry, x_t)
            return new, (new, y_t)

        final, (states, outputs) = jax.lax.scan(body, initial_state, xs, unroll=unroll)
    else:

        def body(carry, inputs):
            x_t, valid_t = inputs
            new, y_t = cell_step(carry, x_t)
            keep = valid_t[:, None]
            new = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, carry)
            return new, (new, jax.tree.map(lambda y: jnp.where(keep, y, jnp.zeros_like(y)), y_t))

        final, (states, outputs) = jax.lax.scan(body, initial_state, (xs, mask), unroll=unroll)
    return outputs, states, final


def _remat_scan(cell_step, initial_state, xs, mask, unroll, chunk):
    """`scan` checkpointed every ``chunk`` steps: an outer scan over T // k chunks of a `jax.checkpoint`-ed
    inner scan of k steps, then one checkpointed scan over the T mod k remaining steps."""
    num_steps = xs.shape[0]
    chunk = min(chunk, num_steps)
    full, rest = divmod(num_steps, chunk)

    @functools.partial(jax.checkpoint, prevent_cse=False)  # inside a scan, CSE cannot undo the recomputation
    def inner(carry, xs_k, mask_k):
        outputs, states, final = _plain_scan(cell_step, carry, xs_k, mask_k, min(unroll, xs_k.shape[0]))
        return final, (outputs, states)

    def split(a):  # [T, ...] -> [T // k, k, ...] (the first full * k steps)
        return None if a is None else a[: full * chunk].reshape(full, chunk, *a.shape[1:])

    final, (outputs, states) = jax.lax.scan(
        lambda carry, inputs: inner(carry, *inputs), initial_state, (split(xs), split(mask))
    )
    merge = functools.partial(jax.tree.map, lambda a: a.reshape(full * chunk, *a.shape[2:]))
    outputs, states = merge(outputs), merge(states)
    if rest:
        tail = None if mask is None else mask[full * chunk :]
        final, (out_rest, states_rest) = inner(final, xs[full * chunk :], tail)
        outputs = jnp.concatenate([outputs, out_rest], axis=0)
        states = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), states, states_rest)
    return outputs, states, final


def scan(
    cell_step: Callable,
    initial_state,
    xs: jax.Array,
    mask: jax.Array | None,
    unroll: int = 1,
    remat: Remat = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The scan at the heart of `unroll`: ``(outputs [T, B, O], states [T, B, H], final_state)``.

    ``cell_step(carry, x_t) -> (carry, y_t)``; with a ``mask`` [T, B] the carry is frozen and
    the output zeroed wherever the mask is False. With ``remat`` (see `unroll`) the same values
    come out of a two-level scan whose chunks `jax.checkpoint` recomputes in the backward pass.
    No argument checking: `unroll` does that. On a CPU a bfloat16 carry or input crosses the loop's
    boundary in float32 (`CPU_WIDENED_BFLOAT16_SCANS`).
    """
    chunk = remat_chunk(remat, xs.shape[0])
    if _widens_bfloat16() and _has_bfloat16(initial_state, xs):
        return _widened_scan(cell_step, initial_state, xs, mask, unroll, chunk)
    return _scan_in_chunks(cell_step, initial_state, xs, mask, unroll, chunk)


def _scan_in_chunks(cell_step, initial_state, xs, mask, unroll, chunk):
    if chunk is None or xs.shape[0] == 0:
        return _plain_scan(cell_step, initial_state, xs, mask, unroll)
    return _remat_scan(cell_step, initial_state, xs, mask, unroll, chunk)


# XLA:CPU has no bfloat16 arithmetic: it computes each bfloat16 operation in float32 between conversions, and a
# dynamic-update-slice into a bfloat16 [T, ...] buffer (a scan stacking a bfloat16 output, or autodiff saving a
# bfloat16 residual for the backward pass) converted the whole buffer at every step, O(T^2) work. On the 2-core Xeon
# (2026-11-29, interleaved) a scan of T = 1000 steps tanh([1, 32] @ [32, 32] + x_t) took 17.2-17.8 ms in bfloat16
# against 0.28-0.36 ms in float32 (0.23-0.31 ms in bfloat16 stacking float32 outputs), and its gradient 51 ms
# against 0.97 (1.32 ms with the float32 carry and each step checkpointed; a float32 carry alone: still 52 ms,
# the residuals). So on a CPU a bfloat16 scan carries, reads and stacks float32 arrays that hold the bfloat16
# values, and each step is checkpointed: the backward pass recomputes its bfloat16 intermediates instead of saving
# them. float16 is native to XLA:CPU (the same scan: 0.19 ms stacking float16, its gradient 0.97 ms; 1.58 ms widened
# and checkpointed), so it is left alone; so are GPUs and TPUs, which compute in bfloat16 natively (on one H200
# mixed precision took 0.67-0.90x the float32 autodiff train step at the batched sizes).
CPU_WIDENED_BFLOAT16_SCANS = True


def _widens_bfloat16() -> bool:
    return CPU_WIDENED_BFLOAT16_SCANS and jax.default_backend() == "cpu"


def _has_bfloat16(*trees) -> bool:
    return any(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(trees))


def _widened(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a, tree)


def _narrowed(tree, like):
    """``tree`` cast back to the dtypes of ``like`` (arrays or `jax.ShapeDtypeStruct`s, the same structure)."""
    return jax.tree.map(lambda a, other: a.astype(other.dtype), tree, like)


def stackable(tree):
    """``tree`` as a scan step should hand it to the scan to stack: on a CPU its bfloat16 arrays widened to
    float32 (`CPU_WIDENED_BFLOAT16_SCANS`; the caller narrows the stacked result once), elsewhere as it is.
    For loops that are never differentiated and keep their carry in its own dtype (the hand-derived reverse
    scans); `lax_scan` widens the carry too and checkpoints the step."""
    return _widened(tree) if _widens_bfloat16() else tree


def _boundary_step(step, carry_like, x_like):
    """``step(carry, x) -> (carry, y)`` for a loop whose carry and inputs cross its boundary widened: it narrows
    them back to ``carry_like``'s and ``x_like``'s dtypes on entry (the same values), widens what it returns, and
    is checkpointed, so that autodiff saves only its (widened) inputs and recomputes its bfloat16 intermediates."""

    @functools.partial(jax.checkpoint, prevent_cse=False)  # inside a scan, CSE cannot undo the recomputation
    def widened_step(carry, x):
        return _widened(step(_narrowed(carry, carry_like), _narrowed(x, x_like)))

    return widened_step


def _step_like(xs):
    """What a scan over ``xs`` (a pytree of [T, ...] arrays, or None) hands each step, as `jax.ShapeDtypeStruct`s."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), xs)


def lax_scan(step: Callable, init, xs=None, *, length: int | None = None, reverse: bool = False, unroll: int = 1):
    """`jax.lax.scan` ``(step, init, xs) -> (final carry, stacked outputs)``, for loops outside `scan` (diagnostics,
    decoding, generation): on a CPU, when the carry, the inputs or the outputs hold bfloat16, they cross the
    loop's boundary as float32 arrays holding the bfloat16 values and each step is checkpointed
    (`CPU_WIDENED_BFLOAT16_SCANS`); the results come back in the dtypes ``step`` gives them, equal bit for bit."""
    options = {"length": length, "reverse": reverse, "unroll": unroll}
    if not _widens_bfloat16():
        return jax.lax.scan(step, init, xs, **options)
    x_like = _step_like(xs)
    _, output_like = jax.eval_shape(step, init, x_like)
    if not _has_bfloat16(jax.eval_shape(lambda: init), x_like, output_like):  # (init may hold Python numbers)
        return jax.lax.scan(step, init, xs, **options)
    init = jax.tree.map(jnp.asarray, init)
    final, outputs = jax.lax.scan(_boundary_step(step, init, x_like), _widened(init), _widened(xs), **options)
    return _narrowed(final, init), _narrowed(outputs, output_like)


def _widened_scan(cell_step, initial_state, xs, mask, unroll, chunk):
    """`scan` with every bfloat16 carry, input and output widened to float32 at the loop's boundary
    (`_boundary_step`, as in `lax_scan`), here inside `scan`'s masking and rematerialisation."""
    x_like = _step_like(xs)
    _, output_like = jax.eval_shape(cell_step, initial_state, x_like)
    step = _boundary_step(cell_step, initial_state, x_like)
    outputs, states, final = _scan_in_chunks(step, _widened(initial_state), _widened(xs), mask, unroll, chunk)
    return _narrowed(outputs, output_like), _narrowed(states, initial_state), _narrowed(final, initial_state)


def scan_in_dtype(
    step: Callable,
    params,
    initial_state,
    xs: jax.Array,
    mask: jax.Array | None,
    unroll: int = 1,
    remat: Remat = None,
    compute_dtype: jnp.dtype | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`scan` of ``step(params, carry, x_t) -> (carry, y_t)``, run in ``compute_dtype`` (mixed precision).

    The parameters are cast inside each step, so their cotangents arrive, and are summed over time, in
    the parameters' own dtype; ``xs`` [T, B, D] and the initial state (each leaf [B, H]) are cast once
    before the scan, and the outputs [T, B, O], states [T, B, H] (per leaf) and final state are cast
    back to the parameters' dtype (that of ``params.w_s``). ``compute_dtype=None`` is `scan` of ``step``
    with ``params`` unchanged; ``mask``, ``unroll`` and ``remat`` are `scan`'s (on a CPU it widens the
    loop's boundary to float32: `CPU_WIDENED_BFLOAT16_SCANS`).
    """
    if compute_dtype is None:
        return scan(functools.partial(step, params), initial_state, xs, mask, unroll, remat)
    cast = functools.partial(jax.tree.map, lambda a: a.astype(compute_dtype))

    def step_in_dtype(carry, x_t):
        return step(cast(params), carry, x_t)

    run = scan(step_in_dtype, cast(initial_state), xs.astype(compute_dtype), mask, unroll, remat)
    return jax.tree.map(lambda a: a.astype(params.w_s.dtype), run)


Projections = Literal["auto", "in_step", "hoisted", "hoisted_readout"]
Form = Literal["in_step", "hoisted", "hoisted_readout"]  # what "auto" resolves to: where each product runs
HOISTING_BACKENDS = ("gpu", "tpu")  # where projections="auto" hoists: measured on a GPU, see `resolve_projections`

# On a CPU, "auto" hoists the Elman cell's projections for at most this many batch rows (per device), when D or O
# is above 1. Measured (`experiments.projections`, interleaved, the 2-core AMD EPYC Zen 3 CPU, 2026-11-28): with B = 1
# to 8 hoisting made the forward pass 0.40-0.85x the time and the autodiff train step 0.64-0.91x wherever D or O > 1;
# from B = 16 up mixed (forward 0.89-1.10x, train 0.90-1.30x; 1.29x at (64,256,32,128,32)). At D = O = 1, where
# each in-step "product" is a broadcast multiply, not a matrix-library call, it gained nothing there (1.06x forward,
# 1.02x train at (1,1000,1,32,1)) and lost on a 2-core Intel Xeon with AVX-512 (2026-11-29, 15 repeats: forward
# 1.03-1.11x, train 1.00-1.12x at (1,1000,1,{32,64},1), (4,500,1,32,1), (8,256,1,32,1); with O = 8 it won, 0.96x and
# 0.93x, and D = 8, O = 1 was a tie), so there the products stay in the step. The gated cells' hoisted forward passes
# were slower at 11 of 14 sizes with B <= 8 (LSTM up to 1.6x, GRU up to 2.3x): their input products stay in the step.
CPU_HOIST_MAX_BATCH = 8

# With at most `CPU_HOIST_MAX_BATCH` rows on a CPU, "auto" hoists only the read-out ("hoisted_readout", as flax's
# `nn.RNN` with a Dense read-out does) for the LSTM and GRU, and for the Elman cell with one sequence and one input
# (B = 1, D = 1). There the in-step input term is cheap (a broadcast multiply fused with the step's bias and phi for
# Elman at D = 1; for the gated cells the hoisted input's per-step slice is what compiled slowly), while the read-out
# is a [B, H] @ [H, O] matrix-library call per step. Measured (`experiments.projections`, 9 interleaved repeats, the
# 2-core Intel Xeon with AVX-512, 2026-11-29; `experiments/results/projections/xeon/`), over the in-step time, at the
# 10 sizes with B <= 8: LSTM forward 0.53-0.99x, train (autodiff) 0.76-0.98x; GRU forward 0.45-1.05x (above 1 only at
# (4,500,1,32,1), (4,500,32,128,32) and (8,256,32,128,32): 1.02-1.05x), train 0.87-1.01x; Elman with B = 1, D = 1
# forward 0.91-0.95x, train 0.88-0.98x, the best of the three forms; the Elman cell with D > 1 was faster with both
# hoisted (e.g. (2,1000,8,32,8) forward 0.47x against 0.71x), and with D = O = 1 and B = 4 in the step (1.04x). From
# 16 rows the read-out alone was mixed for the gated cells (0.94-1.10x, GRU forward 1.05-1.10x) and for Elman
# (0.92-1.35x): in the step.


def resolve_projections(
    projections: Projections,
    plain: bool = True,
    *,
    cell=None,
    batch: int | None = None,
    widths: tuple[int, int] | None = None,
) -> Form:
    """Where the unroll computes the input and read-out projections: "in_step" (inside every scan step),
    "hoisted" (both out of the scan, see `hoisted_scan`) or "hoisted_readout" (x_t W_x in the step, the read-out
    after the scan).

    "in_step", "hoisted" and "hoisted_readout" say so; "auto" hoists both, when ``plain`` (no remat, no mixed
    precision), on the backends of `HOISTING_BACKENDS`; on a CPU, with at most `CPU_HOIST_MAX_BATCH` ``batch`` rows,
    it hoists both for the Elman ``cell`` with ``widths`` (D, O) not both 1, and only the read-out for the LSTM and
    GRU and for an Elman network of one sequence (B = 1) with D = 1 (see the constants' comments); otherwise (and
    with the cell, batch or Elman widths unknown) it keeps both in the step. Why, measured (the
    README's Performance section has the figures): on one H200 GPU, where one large product replaces T small kernel
    launches, hoisting made every measured train step 1.04-1.7x faster and the forward passes up to 3.7x; on a
    2-core CPU, where XLA:CPU calls its matrix library once per product and step, hoisting saves two such calls a
    step, which is what a step of a few rows costs (see `CPU_HOIST_MAX_BATCH`; at D = O = 1 the step makes no such
    call), while with more rows the tall, skinny [T B, D] @ [D, H] products ran slower than the same work inside
    the steps (the autodiff train step at (64,256,32,128,32) 1.4x slower).
    (`unroll` makes one exception for the hand-derived custom VJP, see there.)

    Raises:
      ValueError: for another value, or "hoisted" with remat or a compute dtype (``plain`` False).
    """
    if projections == "auto":
        if not plain:
            return "in_step"
        if jax.default_backend() in HOISTING_BACKENDS:
            return "hoisted"
        if batch is None or batch > CPU_HOIST_MAX_BATCH:
            return "in_step"
        if cell is lstm or cell is gru:
            return "hoisted_readout"
        if cell is not elman or widths is None:
            return "in_step"
        if batch == 1 and widths[0] == 1:
            return "hoisted_readout"
        return "hoisted" if max(widths) > 1 else "in_step"
    if projections == "in_step":
        return "in_step"
    if projections in ("hoisted", "hoisted_readout"):
        if not plain:
            raise ValueError(
                f"projections: {projections!r} computes a product for all T steps outside the scan in the "
                "parameters' dtype; it cannot be combined with remat or compute_dtype (use 'auto' or 'in_step')"
            )
        return projections
    raise ValueError(f"projections: expected 'auto', 'in_step', 'hoisted' or 'hoisted_readout', got {projections!r}")


def _fast_backward(cell, plain: bool, projections: Projections, batch: int, hidden: int, dtype) -> str:
    """What ``backward="fast"`` runs: the fastest measured of the backward passes for this cell, size and backend.

    On a GPU, "fused" where `_fused_kernels_win`. Elman: the hand-derived custom VJP ("bptt") everywhere else but
    `_custom_vjp_loses`. LSTM: "bptt" on a CPU with B > 1 and the projections in the step (on the 2-core CPU its
    train step was 0.79-0.89x autodiff's at the two smaller batched standard sizes, a tie at (128,512,64,256,64)
    and 1.27x slower at (1,1000,1,32,1)). GRU: autodiff (its custom VJP, `rnn_jax.bptt.gru_scan`, measured no
    faster on the 2-core CPU: see the README). Remat and mixed precision need autodiff. bfloat16 parameters follow
    the same rule: with their reverse scans widened on a CPU (`CPU_WIDENED_BFLOAT16_SCANS`) the hand-derived
    passes stay ahead there (Xeon, 2026-11-29, value and gradient: Elman (1,1000,1,32,1) 1.57 against 2.79 ms,
    (64,256,32,128,32) 68 against 88 ms; LSTM (4,1000,1,32,1) 13.8 against 18.9 ms).
    """
    if not plain:
        return "autodiff"
    if _fused_kernels_win(cell, projections, hidden, dtype):
        return "fused"
    if cell is elman:
        return "autodiff" if _custom_vjp_loses(batch) else "bptt"
    if cell is lstm and batch > 1 and projections != "hoisted" and jax.default_backend() == "cpu":
        return "bptt"
    return "autodiff"


# the widest (padded) H at which backward="fast" takes the fused kernels on a GPU, per cell (see `_fused_kernels_win`)
FUSED_FAST_MAX_HIDDEN = {elman: 128, lstm: 64, gru: 64}


def _fused_kernels_win(cell, projections: Projections, hidden: int, dtype) -> bool:
    """Where ``backward="fast"`` takes the fused kernels (`rnn_jax.fused`): on a GPU, in float32, for a cell that
    has them, with the projections hoisted (as they must be) and the padded state width H at most the cell's
    `FUSED_FAST_MAX_HIDDEN`. Measured on one H200 (README, "Fused recursions"): at H = 32 and 64 the fused train
    step was 2.5-9.1x faster than the scan's for all three cells (Elman, LSTM, GRU at (32,100,8,64,8),
    (1,1000,1,32,1) and, for the gated cells, (64,256,32,64,32)); at H = 128, since the Elman forward kernel carries
    s_{t-1} W_s, its train step was 1.74-1.80x faster than the scan's ((64,256,32,128,32): 2.31 against 4.15 ms;
    (128,512,64,128,64): 4.86 against 8.44 ms; 2026-11-29). The gated cells' kernels take H <= 64 (`fused.max_hidden`).
    Not where Pallas's Triton backend is missing (a later JAX may drop it)."""
    if jax.default_backend() != "gpu" or projections == "in_step" or jnp.dtype(dtype) != jnp.float32:
        return False
    from rnn_jax import fused  # fused sits on this module, like bptt

    widest = FUSED_FAST_MAX_HIDDEN.get(cell, 0)
    return cell in fused.SCANS and fused.padded_hidden(hidden) <= widest and fused.triton_available()


def _custom_vjp_loses(batch: int) -> bool:
    """Where ``backward="fast"`` takes autodiff for the Elman cell rather than the custom VJP (when the fused
    kernels do not apply): a single sequence on a GPU, where the custom VJP's train step was 1.6x slower than
    autodiff's at (1,1000,1,32,1) on one H200 (in two runs; at B >= 32 it was 1.2-1.6x faster; the batch sizes
    between were not measured)."""
    return batch == 1 and jax.default_backend() == "gpu"


def hoisted_scan(
    cell,
    params,
    initial_state,
    xs: jax.Array,
    mask: jax.Array | None,
    activation,
    unroll: int = 1,
    recurrence: Callable | None = None,
    *,
    input_in_step: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`scan` of ``cell.step`` with the projections that do not depend on the state taken out of the loop:

        X_proj = project_input(X)            one [T B, D] @ [D, G H] product before the scan
        s_t    = transition_projected(s_{t-1}, X_proj[t])     the scan: only the recurrent product
        Y      = readout(S)                  one [T B, H] @ [H, O] product after it

    (as cuDNN does); with ``input_in_step`` only the read-out leaves the loop, and each step computes its own
    project_input(x_t) (projections="hoisted_readout"). The same values as ``scan(cell.step, ...)`` up to the
    order of float round-off; the outputs are zero past each sequence's end, as there. ``recurrence(X_proj, s_0,
    mask) -> (states, final)``, when given, replaces the scan (`rnn_jax.fused` passes its kernel).
    """

    def transition_step(carry, x_t):
        x_proj_t = cell.project_input(params, x_t) if input_in_step else x_t
        return cell.transition_projected(params, carry, x_proj_t, activation=activation), None

    if recurrence is None:
        scanned = xs if input_in_step else cell.project_input(params, xs)
        _, states, final = scan(transition_step, initial_state, scanned, mask, unroll)
    else:
        states, final = recurrence(cell.project_input(params, xs), initial_state, mask)
    outputs = _common.readout(params, states)
    if mask is not None:
        outputs = jnp.where(mask[..., None], outputs, jnp.zeros_like(outputs))
    return outputs, states, final


def scan_in_form(cell, params, xs, initial_state, mask, activation, unroll: int, form: Form):
    """``cell``'s unroll ``(outputs, states, final)`` with its projections where ``form`` says
    (`resolve_projections`): the scan of ``cell.step``, or `hoisted_scan` (the input product in the step for
    "hoisted_readout")."""
    if form != "in_step":
        return hoisted_scan(
            cell, params, initial_state, xs, mask, activation, unroll, input_in_step=form == "hoisted_readout"
        )
    return scan(functools.partial(cell.step, params, activation=activation), initial_state, xs, mask, unroll)


_FIELD_SHAPES = {  # each field's axes in the letters of the package docstring; GH: G gate blocks of H columns
    "w_x": ("D", "GH"),
    "w_s": ("H", "GH"),
    "b_x": ("GH",),
    "b_s": ("GH",),
    "w_y": ("H", "O"),
    "b_y": ("O",),
}


def check_params(params, cell, *, readout: bool = True) -> None:
    """Raises TypeError when ``params`` are not ``cell``'s ``Params`` (for a cell module that declares them), naming
    the registered cell whose parameters they are, if any; and ValueError naming the first field whose rank or
    shape is not the cell's: w_x [D, G H], w_s [H, G H], b_x and b_s [G H], w_y [H, O], b_y [O], with G the cell's
    gate blocks (``len(cell.GATES)``, 1 for Elman) and D, H, O read from w_x, w_s and w_y (a b_y of shape [1, O]
    broadcast into 4-D outputs silently). ``readout=False`` leaves w_y and b_y out (None in a layer of
    `rnn_jax.deep`). Shapes only: nothing is computed, traced parameters are checked too."""
    expected = getattr(cell, "Params", None)
    if expected is None:
        return
    if not isinstance(params, expected):
        owners = [name for name, module in cells.CELLS.items() if isinstance(params, module.Params)]
        hint = f" (they are the {owners[0]} cell's: pass cell=rnn_jax.{owners[0]})" if owners else ""
        raise TypeError(
            f"params: expected the {cell.__name__.rsplit('.', 1)[-1]} cell's {expected.__name__}, got "
            f"{type(params).__name__}{hint}"
        )
    gates = len(getattr(cell, "GATES", ())) or 1
    fields = [f for f in params._fields if f in _FIELD_SHAPES and (readout or f not in ("w_y", "b_y"))]
    letters = {f: ", ".join(_FIELD_SHAPES[f]).replace("GH", f"{gates}H" if gates > 1 else "H") for f in fields}
    for f in fields:
        _checks.rank(f"params.{f}", getattr(params, f), len(_FIELD_SHAPES[f]), letters[f])
    h = jnp.shape(params.w_s)[0]
    sizes = {"D": jnp.shape(params.w_x)[0], "H": h, "GH": gates * h}
    if readout:
        sizes["O"] = jnp.shape(params.w_y)[1]
    for f in fields:
        want, got = tuple(sizes[a] for a in _FIELD_SHAPES[f]), jnp.shape(getattr(params, f))
        if got != want:
            raise ValueError(f"params.{f}: expected shape [{letters[f]}] = {want}, got {got}")


def initial_carry(initial_state, cell, params, batch: int, compute_dtype: jnp.dtype | None = None):
    """s_0 for ``batch`` sequences: the cell's zero state for None, else ``initial_state`` checked against it.

    A plain tuple or list is taken as the cell's state tuple (the LSTM's ``(h0, c0)``, as PyTorch writes it).

    Raises:
      ValueError / TypeError naming ``initial_state``, for another structure or shape, a non-floating dtype, or
      float64 values for parameters of another dtype (``compute_dtype`` None: no mixed precision to cast them).
    """
    zero = cell.initial_state(params, batch)
    if initial_state is None:
        return zero
    if isinstance(zero, tuple) and type(initial_state) in (tuple, list) and len(initial_state) == len(zero):
        initial_state = type(zero)(*initial_state)
    expected, got = jax.tree.map(jnp.shape, zero), jax.tree.map(jnp.shape, initial_state)
    if jax.tree.structure(zero) != jax.tree.structure(initial_state) or expected != got:
        raise ValueError(f"initial_state: expected shape {expected} ([B, H]), got {got}")
    for leaf in jax.tree.leaves(initial_state):
        _checks.floating("initial_state", leaf)
        if compute_dtype is None:
            _checks.not_float64("initial_state", leaf, params.w_s.dtype)
    return initial_state


def check_backward(backward: str, cell, projections: Projections, remat: Remat, compute_dtype, hidden: int) -> None:
    """Refuses what a hand-derived backward pass (``backward`` "bptt" or "fused", as resolved) cannot run: remat or
    mixed precision, a projection form it does not compute, a cell it is not derived for, a state too wide for the
    fused kernels. Reads no arrays: `unroll` calls it, and `rnn_jax.train.check_model` before a run starts.

    Raises:
      ValueError: naming the option.
    """
    if backward not in ("bptt", "fused"):
        return
    if remat is not None or compute_dtype is not None:
        raise ValueError(
            f"backward: {backward!r} (a hand-derived custom VJP) keeps every state and runs in the parameters' "
            f"dtype; it cannot rematerialise or compute in another dtype (got remat={remat!r}, "
            f"compute_dtype={compute_dtype!r}): use backward='autodiff' or 'fast'"
        )
    if backward == "bptt":
        if (cell is lstm or cell is gru) and projections in ("hoisted", "hoisted_readout"):
            raise ValueError(
                f"projections: the {cell.__name__.rsplit('.', 1)[-1].upper()}'s hand-derived backward pass "
                "(backward='bptt') keeps the gate pre-activations and outputs of a forward pass that computes "
                f"its products in the step; use projections='auto' or 'in_step', or backward='autodiff' (got "
                f"{projections!r})"
            )
        return
    from rnn_jax import fused  # fused sits on this module, like bptt

    if cell not in fused.SCANS:
        raise ValueError(
            f"backward: 'fused' (rnn_jax.fused) exists for the Elman, LSTM and GRU cells only, got cell {cell.__name__}"
        )
    if projections in ("in_step", "hoisted_readout"):
        raise ValueError(
            "projections: the fused kernels compute only the recurrent product in each step (the others are "
            f"hoisted out of the loop); use projections='auto' or 'hoisted' with backward='fused', got "
            f"{projections!r}"
        )
    fused.check_hidden(hidden, cell)


def unroll(
    params: elman.ElmanParams,
    xs: jax.Array,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    initial_state: jax.Array | None = None,
    lengths: jax.Array | None = None,
    mask: jax.Array | None = None,
    unroll: int = 1,
    time_major: bool = True,
    check_finite: bool = False,
    backward: Literal["autodiff", "bptt", "fused", "fast"] = "autodiff",
    cell=elman,
    remat: Remat = None,
    compute_dtype: jnp.dtype | None = None,
    projections: Projections = "auto",
) -> Unrolled:
    """Runs ``cell.step`` over a batch of sequences with `jax.lax.scan`.

    Args:
      params: the cell's parameters (`ElmanParams` for the default cell).
      xs: inputs, [T, B, D] (or [B, T, D] with ``time_major=False``), floating.
      activation: phi, by name or as a callable.
      initial_state: s_0, [B, H] (the LSTM's an ``LSTMState(h, c)`` or an ``(h, c)`` tuple); zeros by default.
      lengths: [B] integer lengths in [0, T]; past its length a sequence's state is frozen.
      mask: [T, B] bool, the alternative to ``lengths``: the state updates only where True.
      unroll: scan's unroll factor (time steps per loop iteration), >= 1.
      time_major: False when ``xs`` is batch-first; the outputs are then batch-first too (a bool).
      check_finite: raise if ``xs`` (or ``initial_state``) holds NaN or Inf (concrete inputs only).
      backward: how gradients through the unroll are computed: "autodiff" (`jax.grad`
        differentiates the scan), "bptt" (the hand-derived BPTT equations of `rnn_jax.bptt`
        as a `jax.custom_vjp`; Elman, LSTM, GRU) or "fast" (the fastest measured, `_fast_backward`:
        on a GPU "fused" in float32 for H <= 64, else "bptt" for Elman except for a single
        sequence (B = 1) on a GPU, "bptt" for the LSTM on a CPU with B > 1, "autodiff"
        otherwise; see the README's Performance section) or "fused"
        (Elman, LSTM, GRU: `rnn_jax.fused`, the forward and the reverse recursion each one Pallas
        kernel that keeps W_s on chip over all T steps, with the hand-derived BPTT around them;
        compiled on a GPU for H <= 128 (Elman) or 64 (LSTM, GRU), interpreted (slowly) elsewhere;
        ``unroll`` does not apply). The forward values are the same.
      cell: the module providing ``step`` and ``initial_state`` (`rnn_jax.cells`), or its name ("elman", "lstm",
        "gru").
      remat: rematerialisation (gradient checkpointing) of the backward pass: None (default:
        the backward pass keeps every step's intermediates, memory O(T)); an integer k: keep
        only the state entering every k-th step and recompute each chunk of k steps during
        the backward pass (an outer `lax.scan` over the T // k chunks whose body is a
        `jax.checkpoint` of an inner scan of k steps, plus one chunk of the T mod k remaining
        steps), memory O(T / k + k); or "sqrt": k = ceil(sqrt(T)), memory O(sqrt(T)), for about
        one extra forward pass of compute (Chen et al. 2016). Values and gradients are those of
        ``remat=None``. Needs the autodiff backward pass: ``backward="fast"`` then uses
        "autodiff", and ``backward="bptt"`` raises (its custom VJP keeps all T states by design).
      compute_dtype: mixed precision: e.g. ``jnp.bfloat16`` runs the unroll (states, products,
        the backward pass through time) in that dtype while ``params`` stay as they are (float32):
        each step casts the parameters, so their gradients arrive, and are summed over time, in
        the parameters' dtype; ``xs`` and the initial state are cast once, and the outputs, states
        and final state are cast back to the parameters' dtype. None (default): the parameters'
        dtype throughout. Like ``remat``, it needs the autodiff backward pass.
      projections: where the products that do not depend on the state are computed: "in_step"
        (x_t W_x and the read-out inside every scan step), "hoisted" (`hoisted_scan`: each as one
        product over all T steps, outside the scan; not with remat or compute_dtype),
        "hoisted_readout" (x_t W_x in the step, the read-out as one product after the scan; the same
        limits) or "auto" (default: hoisted on GPU and TPU; on a CPU in the step, but with at most
        `CPU_HOIST_MAX_BATCH` = 8 batch rows hoisted for the Elman cell with D or O above 1 and
        hoisted_readout for the LSTM, the GRU and one Elman sequence with D = 1, as measured, see
        `resolve_projections`; on every backend, the forward pass that the Elman "bptt"
        differentiates is hoisted, also measured).
        The values are the same up to float round-off; it applies to both backward passes.

    Returns:
      `Unrolled` (outputs [T, B, O], states [T, B, H], final_state [B, H]).

    Raises:
      ValueError / TypeError naming the argument, on a wrong rank, width, dtype or length (of ``xs`` or of a
      field of ``params``: `check_params`), or a ``time_major`` that is not a bool.

    References:
      Chen, T., Xu, B., Zhang, C. & Guestrin, C. (2016). Training deep nets with sublinear memory
      cost. arXiv:1604.06174. Gruslys, A. et al. (2016). Memory-efficient backpropagation through
      time. NeurIPS.
    """
    cell = cells.resolve(cell)
    check_params(params, cell)
    time_major = _checks.boolean("time_major", time_major)
    _checks.rank("xs", xs, 3, "T, B, D" if time_major else "B, T, D")
    _checks.floating("xs", xs)
    if compute_dtype is None:
        _checks.not_float64("xs", xs, params.w_s.dtype)
    if not time_major:
        xs = jnp.swapaxes(xs, 0, 1)
    num_steps, batch, width = xs.shape
    input_size = params.w_x.shape[0]
    if width != input_size:
        raise ValueError(f"xs: expected input width D = {input_size} (params.w_x is {params.w_x.shape}), got {width}")
    unroll = _checks.positive_int("unroll", unroll)
    initial_state = initial_carry(initial_state, cell, params, batch, compute_dtype)
    if check_finite:
        _checks.finite("xs", xs)
        jax.tree.map(functools.partial(_checks.finite, "initial_state"), initial_state)
    mask = _resolve_mask(mask, lengths, num_steps, batch)
    check_scan_options(remat, compute_dtype)
    plain = remat is None and compute_dtype is None
    widths = (input_size, params.w_y.shape[1]) if cell is elman else None  # (D, O): only Elman's choice reads them
    form = resolve_projections(projections, plain, cell=cell, batch=batch, widths=widths)
    if backward == "fast":
        backward = _fast_backward(cell, plain, projections, batch, params.w_s.shape[0], params.w_s.dtype)
    check_backward(backward, cell, projections, remat, compute_dtype, params.w_s.shape[0])
    if backward == "bptt":
        from rnn_jax import bptt  # bptt sits on this module; imported here to keep the arrow one way

        if cell is lstm or cell is gru:
            gated_scan = bptt.lstm_scan if cell is lstm else bptt.gru_scan
            # a forward pass alone takes the "auto" form (the read-out hoisted with few rows on a CPU: the LSTM's
            # forward pass at (8,256,8,32,8) 0.620 against 0.946 ms in the step, README); training keeps the step
            outputs, states, final = gated_scan(params, xs, initial_state, mask, activation, unroll, form)
        elif cell is elman:
            # the forward pass that the custom VJP differentiates is hoisted with "auto" on every backend: on the
            # 2-core CPU that made its train step 2-16% faster at 4 of the 5 standard sizes (4% slower at
            # (256,64,128,512,128))
            forms = (form, "hoisted" if projections == "auto" else form)
            outputs, states, final = bptt.elman_scan(params, xs, initial_state, mask, activation, unroll, forms)
        else:
            raise ValueError(
                f"backward: 'bptt' is derived for the Elman, LSTM and GRU cells only, got cell {cell.__name__}"
            )
    elif backward == "fused":
        from rnn_jax import fused  # fused sits on this module, like bptt

        outputs, states, final = fused.SCANS[cell](params, xs, initial_state, mask, activation)
    elif backward == "autodiff" and form != "in_step":
        outputs, states, final = scan_in_form(cell, params, xs, initial_state, mask, activation, unroll, form)
    elif backward == "autodiff":
        cell_step = functools.partial(cell.step, activation=activation)
        outputs, states, final = scan_in_dtype(cell_step, params, initial_state, xs, mask, unroll, remat, compute_dtype)
    else:
        raise ValueError(f"backward: expected 'autodiff', 'bptt', 'fused' or 'fast', got {backward!r}")
    if not time_major:
        outputs, states = jnp.swapaxes(outputs, 0, 1), jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), states)
    return Unrolled(outputs, states, final)


Feedback = Literal["sample", "argmax", "output"]


class Generated(NamedTuple):
    """The result of `generate` (time-major)."""

    inputs: jax.Array  # [N, B, D]  x_t fed in at each step (the first is ``first_input``)
    outputs: jax.Array  # [N, B, O]  y_t
    states: jax.Array  # [N, B, H]  s_t


def generate(
    params: elman.ElmanParams,
    key: jax.Array,
    first_input: jax.Array,
    num_steps: int,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    initial_state: jax.Array | None = None,
    feedback: Feedback = "sample",
    temperature: float = 1.0,
    cell=elman,
) -> Generated:
    """One-to-many: runs the network for ``num_steps`` steps, feeding each output back in.

        x_1 = first_input
        s_t, y_t = step(params, s_{t-1}, x_t)
        x_{t+1} = one_hot(sample from softmax(y_t / temperature))   feedback="sample"
                  one_hot(argmax y_t)                               feedback="argmax"
                  y_t                                               feedback="output"

    Args:
      params: the cell's parameters; O must equal D for the output to be fed back.
      key: PRNG key; step t samples with ``fold_in(key, t)``.
      first_input: x_1, [B, D].
      num_steps: N >= 1.
      activation: phi.
      initial_state: s_0, [B, H]; zeros by default.
      feedback: how an output becomes the next input.
      temperature: softmax temperature for ``feedback="sample"`` (> 0).
      cell: the module providing ``step`` and ``initial_state`` (`rnn_jax.cells`), or its name ("elman", "lstm",
        "gru").

    Returns:
      `Generated` (inputs [N, B, D], outputs [N, B, O], states [N, B, H]).
    """
    cell = cells.resolve(cell)
    check_params(params, cell)
    num_steps = check_generation(key, first_input, num_steps, params.w_x.shape[0], params.w_y, feedback, temperature)
    initial_state = initial_carry(initial_state, cell, params, first_input.shape[0])

    def step(s: Any, x: jax.Array) -> tuple[Any, jax.Array, Any]:
        s, y = cell.step(params, s, x, activation=activation)
        return s, y, s

    return feed_back(step, initial_state, first_input, num_steps, key, feedback=feedback, temperature=temperature)


def check_generation(
    key: jax.Array,
    first_input: jax.Array,
    num_steps: int,
    input_size: int,
    w_y: jax.Array,
    feedback: str,
    temperature: float,
) -> int:
    """Refuses, naming the argument, what `feed_back` cannot run for a network of input width ``input_size`` and
    read-out ``w_y`` [H, O]: a key that is not one PRNG key, a ``first_input`` that is not [B, D] floating (or float64
    for float32 parameters), a ``num_steps`` that is not a positive integer, an output that is not the input's width,
    an unknown ``feedback``, a ``temperature`` that is not > 0. Returns ``num_steps`` as an int."""
    _checks.prng_key("key", key)
    _checks.rank("first_input", first_input, 2, "B, D")
    _checks.floating("first_input", first_input)
    _checks.not_float64("first_input", first_input, w_y.dtype)
    num_steps = _checks.positive_int("num_steps", num_steps)
    _checks.dim("first_input", first_input, 1, input_size, "the input width D")
    output_size = w_y.shape[1]
    if output_size != input_size:
        raise ValueError(
            f"generate: the output width O = {output_size} must equal the input width D = {input_size} to feed it back"
        )
    if feedback not in ("sample", "argmax", "output"):
        raise ValueError(f"feedback: expected 'sample', 'argmax' or 'output', got {feedback!r}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected a value > 0, got {temperature}")
    return num_steps


def feed_back(
    step: Callable[[Any, jax.Array], tuple[Any, jax.Array, Any]],
    carry: Any,
    first_input: jax.Array,
    num_steps: int,
    key: jax.Array,
    *,
    feedback: Feedback,
    temperature: float,
) -> Generated:
    """The one-to-many loop of `generate` around any network's step (`rnn_jax.deep.generate` runs a stack in it).

    Args:
      step: ``(carry, x_t) -> (carry, y_t [B, O], s_t)``; s_t is what `Generated.states` records.
      carry: the network's state before the first step.
      first_input: x_1, [B, D], with D = O.
      num_steps, key, feedback, temperature: as in `generate` (checked there, by `check_generation`).

    Returns:
      `Generated` (inputs [N, B, D], outputs [N, B, O], states [N, ...]).
    """

    def next_input(y: jax.Array, t: jax.Array) -> jax.Array:
        if feedback == "output":
            return y
        if feedback == "argmax":
            index = jnp.argmax(y, axis=-1)
        else:
            index = jax.random.categorical(jax.random.fold_in(key, t), y / temperature, axis=-1)
        return jax.nn.one_hot(index, y.shape[-1], dtype=y.dtype)

    def body(loop, t):
        carry, x = loop
        carry, y, s = step(carry, x)
        return (carry, next_input(y, t)), (x, y, s)

    _, sequences = lax_scan(body, (carry, first_input), jnp.arange(num_steps))
    return Generated(*sequences)
