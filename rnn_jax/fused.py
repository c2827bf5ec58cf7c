"""The Elman network's two recursions through time as fused kernels (Pallas): one launch runs all T steps.

Of the work in BPTT, only two recursions are sequential:

    forward   s_t     = phi(u_t + s_{t-1} W_s)                  u_t = x_t W_x + b_s
    reverse   delta_t = (e_t + c_t) * phi'(pre_t),  c_{t-1} = delta_t W_s^T      c_T = dE/ds_T
                                                                e_t = g_t W_y^T + dE/ds_t|direct

(with a validity mask m_t, a frozen step keeps s_{t-1} and passes its error straight back:
delta_t = m_t (e_t + c_t) phi'_t and c_{t-1} = delta_t W_s^T + (1 - m_t)(e_t + c_t), as in `rnn_jax.bptt`).
Everything else - the input projections u_t, the read-out, the output errors e_t, the weight
gradients - is a single large product over all T B rows, outside the recursions.

A `jax.lax.scan` step on a GPU launches a few kernels, each of which reads W_s from memory again;
at long T with small products that launch cost, not the arithmetic, sets the time (README, "On a
GPU": about 6 us per step, where cuDNN's persistent kernels take a fraction of that). Here each
recursion is one Pallas kernel: every program of its grid takes a block of `ROWS` sequences, loads
W_s (or W_s^T) once, and loops over the T steps with it held on chip, writing s_t (or delta_t) as
it goes. `elman_scan` is the Elman unroll with these kernels and the hand-derived BPTT of
`rnn_jax.bptt.backward` as its custom VJP (``unroll(..., backward="fused")``).

On a GPU the kernels compile through Triton, with float32 products in full IEEE precision
(as the rest of rnn-jax on GPUs). The compiled kernel keeps W_s on chip, so it takes H <= `MAX_HIDDEN`
(H is padded to a power of two >= 16, B to a multiple of `ROWS`, with zeros that change no
value). On other backends the same kernels run in Pallas's interpreter: exact, and how the tests
check them on a CPU, but slow, for testing only.

References:
  Diamos, G. et al. (2016). Persistent RNNs: stashing recurrent weights on-chip. ICML.
  Appleyard, J., Kocisky, T. & Blunsom, P. (2016). Optimizing performance of recurrent neural
  networks on GPUs. arXiv:1604.01946.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from rnn_jax import activations, bptt
from rnn_jax.cells import elman
from rnn_jax.cells.elman import ElmanParams

ROWS = 16  # sequences per program of a kernel's grid (Triton's matrix product needs at least 16 rows)
MAX_HIDDEN = 128  # the largest (padded) H whose W_s [H, H] the compiled kernel keeps on chip (64 KiB in float32)


class KernelOptions(NamedTuple):
    """How the compiled kernels run (ignored by the interpreter). Not tuned on a GPU yet:
    ``python -m experiments.fused_kernels`` measures the choices."""

    num_warps: int = 4  # Triton warps (32 threads each) per program
    weights_once: bool = True  # load W_s into registers once before the loop (False: from memory at every step)


DEFAULT_OPTIONS = KernelOptions()


def compiled() -> bool:
    """Whether the kernels compile (on a GPU, through Triton) rather than run in Pallas's interpreter."""
    return jax.default_backend() == "gpu"


def padded_hidden(hidden: int) -> int:
    """H as the kernels see it: the next power of two, at least 16."""
    return max(16, 1 << (hidden - 1).bit_length())


def supported(hidden: int) -> bool:
    """Whether the kernels run for state width H here (compiled, they keep W_s on chip: H <= `MAX_HIDDEN`)."""
    return not compiled() or padded_hidden(hidden) <= MAX_HIDDEN


def check_hidden(hidden: int) -> None:
    """Raises ValueError naming H where the compiled kernel cannot keep W_s on chip."""
    if not supported(hidden):
        raise ValueError(
            f"backward: the fused kernel keeps W_s on chip and takes H <= {MAX_HIDDEN} on a GPU, got H = {hidden}; "
            "use backward='fast' (or 'bptt' / 'autodiff')"
        )


def _pad(a: jax.Array, rows: int, width: int | None) -> jax.Array:
    """Zero-pads axis -2 (B) to ``rows`` and, unless ``width`` is None, axis -1 (H) to ``width``."""
    pads = [(0, 0)] * a.ndim
    pads[-2] = (0, rows - a.shape[-2])
    if width is not None:
        pads[-1] = (0, width - a.shape[-1])
    return a if all(p == (0, 0) for p in pads) else jnp.pad(a, pads)


def _recursion_kernel(*refs, step: Callable, num_sequences: int, num_steps: int, reverse: bool, weights_once: bool):
    """One program: ``carry = step(sequences at t, carry, W)`` for every t (in reverse time if ``reverse``),
    with W loaded once (or at every step) and each step's output written to ``out_ref[t]``."""
    sequence_refs = refs[:num_sequences]
    matrix_ref, initial_ref, out_ref, final_ref = refs[num_sequences:]
    matrix = matrix_ref[...] if weights_once else None

    def body(i, carry):
        t = num_steps - 1 - i if reverse else i
        w = matrix if weights_once else matrix_ref[...]
        carry, out = step([r[t] for r in sequence_refs], carry, w)
        out_ref[t] = out
        return carry

    final_ref[...] = jax.lax.fori_loop(0, num_steps, body, initial_ref[...])


def _run_recursion(
    step: Callable,
    sequences: Sequence[jax.Array],
    matrix: jax.Array,
    initial: jax.Array,
    reverse: bool,
    options: KernelOptions | None,
) -> tuple[jax.Array, jax.Array]:
    """The recursion as one `pl.pallas_call` over blocks of `ROWS` sequences: ([T, B, H] outputs, [B, H] final).

    ``sequences``: [T, B, H] or [T, B, 1] (a mask) arrays read at every step; ``matrix`` [H, H]; ``initial``
    [B, H]. B, H must already be padded (`padded_hidden`, a multiple of `ROWS`).
    """
    num_steps, batch, hidden = sequences[0].shape
    if num_steps == 0:
        return jnp.zeros((0, batch, hidden), initial.dtype), initial
    per_step = [pl.BlockSpec((num_steps, ROWS, s.shape[-1]), lambda i: (0, i, 0)) for s in sequences]
    rows = pl.BlockSpec((ROWS, hidden), lambda i: (i, 0))
    options = options or DEFAULT_OPTIONS
    kernel = functools.partial(
        _recursion_kernel,
        step=step,
        num_sequences=len(sequences),
        num_steps=num_steps,
        reverse=reverse,
        weights_once=options.weights_once,
    )
    params = None
    if compiled():
        from jax.experimental.pallas import triton as pl_triton

        params = pl_triton.CompilerParams(num_warps=options.num_warps, num_stages=1)
    return pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((num_steps, batch, hidden), initial.dtype),
            jax.ShapeDtypeStruct((batch, hidden), initial.dtype),
        ),
        grid=(batch // ROWS,),
        in_specs=[*per_step, pl.BlockSpec((hidden, hidden), lambda i: (0, 0)), rows],
        out_specs=(pl.BlockSpec((num_steps, ROWS, hidden), lambda i: (0, i, 0)), rows),
        compiler_params=params,
        interpret=not compiled(),
    )(*sequences, matrix, initial)


def _product(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=a.dtype)


def _forward_step(phi: Callable, masked: bool) -> Callable:
    def step(at_t, s_prev, w_s):
        s = phi(at_t[0] + _product(s_prev, w_s))
        if masked:
            s = jnp.where(at_t[1] > 0, s, s_prev)
        return s, s

    return step


def _reverse_step(masked: bool) -> Callable:
    def step(at_t, c, w_s_t):
        a = at_t[0] + c
        delta = a * at_t[1]
        if not masked:
            return _product(delta, w_s_t), delta
        m = at_t[2]
        delta = m * delta
        return _product(delta, w_s_t) + (1 - m) * a, delta

    return step


def _padded_sizes(batch: int, hidden: int) -> tuple[int, int]:
    return -(-batch // ROWS) * ROWS, padded_hidden(hidden)


def recurrence(
    u: jax.Array,
    w_s: jax.Array,
    initial_state: jax.Array,
    mask: jax.Array | None,
    activation: str | Callable | activations.Activation = "tanh",
    options: KernelOptions | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The forward recursion s_t = phi(u_t + s_{t-1} W_s) as one kernel.

    Args:
      u: the state-independent part of the pre-activations, x_t W_x + b_s, [T, B, H].
      w_s: [H, H].
      initial_state: s_0, [B, H].
      mask: [T, B] bool (the state is frozen where False), or None.
      activation: phi.
      options: `KernelOptions` (None: `DEFAULT_OPTIONS`).

    Returns:
      (states s_1 .. s_T [T, B, H], the final state [B, H]).
    """
    num_steps, batch, hidden = u.shape
    rows, width = _padded_sizes(batch, hidden)
    phi = activations.get(activation).fn
    sequences = [_pad(u, rows, width)]
    if mask is not None:
        sequences.append(_pad(mask.astype(u.dtype)[..., None], rows, None))
    w = _pad(w_s, width, width)
    states, final = _run_recursion(
        _forward_step(phi, mask is not None), sequences, w, _pad(initial_state, rows, width), False, options
    )
    return states[:, :batch, :hidden], final[:batch, :hidden]


def reverse_errors(
    params: ElmanParams,
    direct: jax.Array,
    dphi: jax.Array,
    m: jax.Array | None,
    final_error: jax.Array,
    unroll: int = 1,
    options: KernelOptions | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The reverse recursion of `rnn_jax.bptt` as one kernel: (dE/ds_0 [B, H], delta [T, B, H]).

    Args:
      params: the weights (W_s is read).
      direct: e_t, the errors reaching s_t from outside the recursion, [T, B, H].
      dphi: phi'(pre_t), [T, B, H].
      m: the validity mask as [T, B, 1] in the states' dtype, or None.
      final_error: c_T = dE/ds_T from a use of the final state, [B, H].
      unroll: unused (there is no scan to unroll); the signature of `rnn_jax.bptt`'s recursion.
      options: `KernelOptions` (None: `DEFAULT_OPTIONS`).
    """
    del unroll
    num_steps, batch, hidden = direct.shape
    rows, width = _padded_sizes(batch, hidden)
    sequences = [_pad(direct, rows, width), _pad(dphi, rows, width)]
    if m is not None:
        sequences.append(_pad(m, rows, None))
    w_t = _pad(params.w_s.T, width, width)
    deltas, initial_error = _run_recursion(
        _reverse_step(m is not None), sequences, w_t, _pad(final_error, rows, width), True, options
    )
    return initial_error[:batch, :hidden], deltas[:, :batch, :hidden]


# ------------------------------------------------------------------ the unroll, with BPTT as its VJP


def _elman_forward(params, xs, initial_state, mask, activation):
    from rnn_jax.unroll import hoisted_scan  # unroll imports this module lazily; the arrow points here

    def fused_recurrence(x_proj, s_0, mask_):
        return recurrence(x_proj + params.b_s[None, None, :], params.w_s, s_0, mask_, activation)

    return hoisted_scan(elman, params, initial_state, xs, mask, activation, recurrence=fused_recurrence)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def elman_scan(params: ElmanParams, xs: jax.Array, initial_state: jax.Array, mask: jax.Array | None, activation):
    """The Elman unroll ``(outputs [T, B, O], states [T, B, H], final_state [B, H])`` with the forward
    recursion as one kernel, and `rnn_jax.bptt.backward` with the reverse recursion as one kernel as its VJP.

    The arguments are those of `rnn_jax.unroll.scan`, already checked by `rnn_jax.unroll` (use
    ``unroll(..., backward="fused")``).
    """
    return _elman_forward(params, xs, initial_state, mask, activation)


def _elman_scan_fwd(params, xs, initial_state, mask, activation):
    outputs, states, final = _elman_forward(params, xs, initial_state, mask, activation)
    return (outputs, states, final), (params, xs, initial_state, mask, states)


def _elman_scan_bwd(activation, residuals, cotangents):
    params, xs, initial_state, mask, states = residuals
    grads = bptt.backward_of_cotangents(
        params, xs, initial_state, mask, states, *cotangents, activation, recursion=reverse_errors
    )
    return grads.params, grads.inputs, grads.initial_state, None


elman_scan.defvjp(_elman_scan_fwd, _elman_scan_bwd)
