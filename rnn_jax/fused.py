"""The recursions through time of the Elman network, the LSTM and the GRU as fused kernels (Pallas): one launch
runs all T steps.

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
`rnn_jax.bptt.backward` as its custom VJP (``unroll(..., backward="fused")``). The LSTM's recursions
(`lstm_recurrence`, `lstm_reverse_errors`: the equations of `rnn_jax.bptt.lstm_backward`, carrying
(h, c) forward and (dE/dh, dE/dc) back, with W_s as four [H, H] gate blocks) make `lstm_scan` the same way,
and the GRU's (`gru_recurrence`, `gru_reverse_errors`: `rnn_jax.bptt.gru_backward`'s equations) `gru_scan`.

On a GPU the kernels compile through Triton, with float32 products in full IEEE precision (as the rest of
rnn-jax on GPUs). The compiled kernel keeps W_s on chip, so it takes H <= `MAX_HIDDEN` for Elman and H <= 64
for the LSTM and the GRU (`max_hidden`; H is padded to a power of two >= 16, B to a multiple of `ROWS`, with zeros that
change no value). On other backends the same kernels run in Pallas's interpreter: exact, and how the tests
check them on a CPU, but slow, for testing only.

References:
  Diamos, G. et al. (2016). Persistent RNNs: stashing recurrent weights on-chip. ICML.
  Appleyard, J., Kocisky, T. & Blunsom, P. (2016). Optimizing performance of recurrent neural
  networks on GPUs. arXiv:1604.01946.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from rnn_jax import activations, bptt
from rnn_jax.cells import elman, gru, lstm
from rnn_jax.cells.elman import ElmanParams
from rnn_jax.cells.gru import GRUParams
from rnn_jax.cells.lstm import LSTMParams, LSTMState

ROWS = 16  # sequences per program of a kernel's grid (Triton's matrix product needs at least 16 rows)
MAX_HIDDEN = 128  # the largest (padded) H whose W_s [H, H] the compiled kernel keeps on chip (64 KiB in float32)


class KernelOptions(NamedTuple):
    """How the compiled kernels run (ignored by the interpreter). ``python -m experiments.fused_kernels`` measures
    the choices for the Elman kernels; on one H200 (README, "Fused recursions") 8 warps were the better default:
    the Elman kernels' forward + reverse time 0.90x 4 warps' at H = 64, 1.02x at H = 32 (B = 1) and 0.38x at
    H = 128 (where 4 warps spill the 128 x 128 W_s), and the LSTM's and GRU's train steps at (64,256,32,64,32)
    0.77x and 0.88x. Holding W_s in registers through the loop beat reading it at every step, or tied."""

    num_warps: int = 8  # Triton warps (32 threads each) per program
    weights_once: bool = True  # load W_s into registers once before the loop (False: from memory at every step)
    # for the LSTM's and GRU's forward kernels, carry h_{t-1} W_s's gate blocks formed at the end of the step before
    # (as the Elman forward kernel always does) rather than h_{t-1} alone; not yet measured on a GPU; the Elman
    # kernels ignore it
    carry_products: bool = False


DEFAULT_OPTIONS = KernelOptions()
_OPTIONS: contextvars.ContextVar[KernelOptions] = contextvars.ContextVar(
    "fused_kernel_options", default=DEFAULT_OPTIONS
)


@contextlib.contextmanager
def kernel_options(options: KernelOptions) -> Iterator[None]:
    """Within this context, kernels traced without explicit options use ``options`` (as
    `jax.default_matmul_precision` does for products): how ``unroll(..., backward="fused")`` and the harness's
    ``rnn-jax-fused-per-step`` / ``-4warps`` choose them. It applies at trace time, so compile inside it."""
    token = _OPTIONS.set(options)
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def compiled() -> bool:
    """Whether the kernels compile (on a GPU, through Triton) rather than run in Pallas's interpreter."""
    return jax.default_backend() == "gpu"


def triton_available() -> bool:
    """Whether this JAX has Pallas's Triton backend, through which the kernels compile on a GPU (deprecated since
    JAX 0.11 in favour of Mosaic GPU; `backward="fast"` takes the kernels only while it is there)."""
    try:
        from jax.experimental.pallas import triton  # noqa: F401
    except ImportError:
        return False
    return True


def padded_hidden(hidden: int) -> int:
    """H as the kernels see it: the next power of two, at least 16."""
    return max(16, 1 << (hidden - 1).bit_length())


def max_hidden(cell=elman) -> int:
    """The largest H whose W_s ([H, G H]: one [H, H] block per gate of ``cell.GATES``, one for Elman) the compiled
    kernel keeps on chip, as much as the Elman network's [`MAX_HIDDEN`, `MAX_HIDDEN`]: 128 for Elman, 64 for the
    LSTM and the GRU."""
    blocks = 1 if cell is elman else len(cell.GATES)
    width = MAX_HIDDEN
    while blocks * width * width > MAX_HIDDEN * MAX_HIDDEN:
        width //= 2
    return width


def supported(hidden: int, cell=elman) -> bool:
    """Whether ``cell`` has fused kernels (`SCANS`) that run for state width H here (compiled, W_s must fit on
    chip)."""
    return cell in SCANS and (not compiled() or padded_hidden(hidden) <= max_hidden(cell))


def check_hidden(hidden: int, cell=elman) -> None:
    """Raises ValueError naming H where the compiled kernel cannot keep W_s on chip."""
    if not supported(hidden, cell):
        raise ValueError(
            f"backward: the fused kernel keeps W_s on chip and takes H <= {max_hidden(cell)} for this cell on a "
            f"GPU, got H = {hidden}; use backward='fast' (or 'bptt' / 'autodiff')"
        )


def _pad(a: jax.Array, rows: int, width: int | None) -> jax.Array:
    """Zero-pads axis -2 (B) to ``rows`` and, unless ``width`` is None, axis -1 (H) to ``width``."""
    pads = [(0, 0)] * a.ndim
    pads[-2] = (0, rows - a.shape[-2])
    if width is not None:
        pads[-1] = (0, width - a.shape[-1])
    return a if all(p == (0, 0) for p in pads) else jnp.pad(a, pads)


def _recursion_kernel(
    *refs, step: Callable, counts: tuple[int, int, int, int], num_steps: int, reverse: bool, weights_once: bool
):
    """One program: ``carry, outs = step(sequences at t, carry, matrices)`` for every t (in reverse time if
    ``reverse``), with the matrices loaded once (or at every step) and each step's outputs written at t.

    ``refs``: the sequences, the matrices, the initial carries, then the outputs and the final carries;
    ``counts`` = (sequences, matrices, carries, outputs).
    """
    num_sequences, num_matrices, num_carries, num_outputs = counts
    sequence_refs, refs = refs[:num_sequences], refs[num_sequences:]
    matrix_refs, refs = refs[:num_matrices], refs[num_matrices:]
    initial_refs, refs = refs[:num_carries], refs[num_carries:]
    out_refs, final_refs = refs[:num_outputs], refs[num_outputs:]
    loaded = [r[...] for r in matrix_refs] if weights_once else None

    def body(i, carry):
        t = num_steps - 1 - i if reverse else i
        matrices = loaded if weights_once else [r[...] for r in matrix_refs]
        carry, outs = step([r[t] for r in sequence_refs], carry, matrices)
        for r, out in zip(out_refs, outs, strict=True):
            r[t] = out
        return carry

    finals = jax.lax.fori_loop(0, num_steps, body, tuple(r[...] for r in initial_refs))
    for r, final in zip(final_refs, finals, strict=True):
        r[...] = final


def run_recursion(
    step: Callable,
    sequences: Sequence[jax.Array],
    matrices: Sequence[jax.Array],
    initials: Sequence[jax.Array],
    num_outputs: int,
    reverse: bool,
    options: KernelOptions | None,
) -> tuple[list[jax.Array], list[jax.Array]]:
    """A recursion ``carry, outputs = step(sequences at t, carry, matrices)`` over t = 1 .. T (T .. 1 if
    ``reverse``) as one `pl.pallas_call` over blocks of `ROWS` sequences: (``num_outputs`` [T, B, H] outputs, the
    final carries [B, H]). The kernel runner of every recursion here, and the building block for a new one.

    ``sequences``: [T, B, H] or [T, B, 1] (a mask) arrays read at every step; ``matrices``: [H, H], or [1, H] (a
    bias), loaded as W_s is; ``initials``: the carries, [B, H] each. B must already be a multiple of `ROWS` and H a
    power of two >= 16 (`padded_hidden`; zero-pad both); ``options``: `KernelOptions` (None: those of
    `kernel_options`, else `DEFAULT_OPTIONS`).
    """
    num_steps, batch, hidden = sequences[0].shape
    dtype = initials[0].dtype
    if num_steps == 0:
        return [jnp.zeros((0, batch, hidden), dtype)] * num_outputs, list(initials)
    per_step = pl.BlockSpec((num_steps, ROWS, hidden), lambda i: (0, i, 0))
    per_step_mask = pl.BlockSpec((num_steps, ROWS, 1), lambda i: (0, i, 0))
    whole = pl.BlockSpec((hidden, hidden), lambda i: (0, 0))
    vector = pl.BlockSpec((1, hidden), lambda i: (0, 0))
    rows = pl.BlockSpec((ROWS, hidden), lambda i: (i, 0))
    options = options or _OPTIONS.get()
    counts = (len(sequences), len(matrices), len(initials), num_outputs)
    kernel = functools.partial(
        _recursion_kernel,
        step=step,
        counts=counts,
        num_steps=num_steps,
        reverse=reverse,
        weights_once=options.weights_once,
    )
    params = None
    if compiled():
        from jax.experimental.pallas import triton as pl_triton

        params = pl_triton.CompilerParams(num_warps=options.num_warps, num_stages=1)
    results = pl.pallas_call(
        kernel,
        out_shape=(
            *[jax.ShapeDtypeStruct((num_steps, batch, hidden), dtype)] * num_outputs,
            *[jax.ShapeDtypeStruct((batch, hidden), dtype)] * len(initials),
        ),
        grid=(batch // ROWS,),
        in_specs=[
            *[per_step_mask if s.shape[-1] == 1 else per_step for s in sequences],
            *[vector if w.shape[0] == 1 else whole for w in matrices],
            *[rows] * len(initials),
        ],
        out_specs=(*[per_step] * num_outputs, *[rows] * len(initials)),
        compiler_params=params,
        interpret=not compiled(),
    )(*sequences, *matrices, *initials)
    return list(results[:num_outputs]), list(results[num_outputs:])


def _product(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=a.dtype)


def _forward_step(phi: Callable, masked: bool) -> Callable:
    """The Elman forward step with its recurrent product formed at the end of the step before (the first one before
    the kernel) and carried, with the previous state only where a mask may freeze it, so that the loop carries
    what its matrix product produced, as the reverse kernels do. Carrying s_{t-1} and multiplying at the start of
    the step instead was 6.6x slower at H = 128 on one H200 (7.5 against 1.14 ms at B = 64, T = 256, 8 warps; any
    activation, even the identity; the reverse kernel took 1.3 ms). The LSTM's and GRU's forward kernels carry
    h_{t-1} unless `KernelOptions.carry_products`: the same change for them has not been measured on a GPU."""

    def step(at_t, carry, matrices):
        *kept, z = carry  # z = s_{t-1} W_s; kept = [s_{t-1}] where masked
        s = phi(at_t[0] + z)
        if masked:
            s = jnp.where(at_t[1] > 0, s, kept[0])
        return (*([s] if masked else []), _product(s, matrices[0])), (s,)

    return step


def _reverse_step(masked: bool) -> Callable:
    def step(at_t, carry, matrices):
        (c,), (w_s_t,) = carry, matrices
        a = at_t[0] + c
        delta = a * at_t[1]
        if not masked:
            return (_product(delta, w_s_t),), (delta,)
        m = at_t[2]
        delta = m * delta
        return (_product(delta, w_s_t) + (1 - m) * a,), (delta,)

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
      options: `KernelOptions` (None: those of `kernel_options`, else `DEFAULT_OPTIONS`).

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
    s_0 = _pad(initial_state, rows, width)
    initials = [*([s_0] if mask is not None else []), _product(s_0, w)]  # the carry of `_forward_step`
    (states,), _ = run_recursion(_forward_step(phi, mask is not None), sequences, [w], initials, 1, False, options)
    states = states[:, :batch, :hidden]
    return states, states[-1] if num_steps else initial_state


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
      options: `KernelOptions` (None: those of `kernel_options`, else `DEFAULT_OPTIONS`).
    """
    del unroll
    num_steps, batch, hidden = direct.shape
    rows, width = _padded_sizes(batch, hidden)
    sequences = [_pad(direct, rows, width), _pad(dphi, rows, width)]
    if m is not None:
        sequences.append(_pad(m, rows, None))
    w_t = _pad(params.w_s.T, width, width)
    (deltas,), (initial_error,) = run_recursion(
        _reverse_step(m is not None), sequences, [w_t], [_pad(final_error, rows, width)], 1, True, options
    )
    return initial_error[:batch, :hidden], deltas[:, :batch, :hidden]


# ------------------------------------------------------------------ the LSTM


def _gate_blocks(a: jax.Array, rows: int, width: int, gates: int = 4) -> list[jax.Array]:
    """[T, B, G H] -> the G gates' [T, B, H] blocks (the LSTM's i, f, g, o), each padded to [T, rows, width]."""
    return [_pad(block, rows, width) for block in jnp.split(a, gates, axis=-1)]


def _gate_matrices(w_s: jax.Array, width: int, transpose: bool = False) -> list[jax.Array]:
    """W_s [H, G H] -> the G gates' [H, H] blocks (or their transposes), each padded to [width, width]."""
    gates = w_s.shape[1] // w_s.shape[0]
    return [_pad(block.T if transpose else block, width, width) for block in jnp.split(w_s, gates, axis=-1)]


def _carried_products(h: jax.Array, matrices: Sequence[jax.Array], carry_products: bool) -> list[jax.Array]:
    """h W_k for each gate block W_k [H, H] where ``carry_products`` (the carries that a gated forward step adds to
    h, formed at the end of the step before, or before the kernel for the first step), else none."""
    return [_product(h, w) for w in matrices] if carry_products else []


def _lstm_forward_step(phi: Callable, masked: bool, carry_products: bool) -> Callable:
    """The LSTM forward step over the carry (h_{t-1}, c_{t-1}), or with ``carry_products`` (h_{t-1}, c_{t-1},
    h_{t-1} W_i, h_{t-1} W_f, h_{t-1} W_g, h_{t-1} W_o), the products formed from the (masked) h_t at the end of
    the step before, as `_forward_step` carries the Elman network's (a frozen row carries its own h's products)."""

    def step(at_t, carry, matrices):
        h, c, *products = carry  # products: h_{t-1} W_k for k = i, f, g, o where carried
        if not carry_products:
            products = [_product(h, w) for w in matrices]
        z = [u + p for u, p in zip(at_t[:4], products, strict=True)]  # z_i, z_f, z_g, z_o
        c_new = jax.nn.sigmoid(z[1]) * c + jax.nn.sigmoid(z[0]) * phi(z[2])
        h_new = jax.nn.sigmoid(z[3]) * phi(c_new)
        if masked:
            keep = at_t[4] > 0
            h_new, c_new = jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)
        return (h_new, c_new, *_carried_products(h_new, matrices, carry_products)), (h_new, c_new, *z)

    return step


def _lstm_reverse_step(act: activations.Activation, masked: bool) -> Callable:
    def step(at_t, carry, matrices):
        q, e = carry  # q = dz_{t+1} W_s^T + p_{t+1} (what reaches h_t from step t + 1), e = e_{t+1}
        direct_h, direct_c, z_i, z_f, z_g, z_o, c_t, c_prev = at_t[:8]
        a = direct_h + q
        i, f, o, g = jax.nn.sigmoid(z_i), jax.nn.sigmoid(z_f), jax.nn.sigmoid(z_o), act.fn(z_g)
        phi_c = act.fn(c_t)
        dc = e + direct_c + a * o * activations.derivative(act, c_t, phi_c)
        dz = [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * activations.derivative(act, z_g, g),
              a * phi_c * o * (1 - o)]  # fmt: skip
        if masked:
            m = at_t[8]
            dz = [m * d for d in dz]
            q, e = (1 - m) * a, m * dc * f + (1 - m) * (e + direct_c)
        else:
            q, e = jnp.zeros_like(a), dc * f
        for d, w_t in zip(dz, matrices, strict=True):
            q = q + _product(d, w_t)
        return (q, e), tuple(dz)

    return step


def lstm_recurrence(
    u: jax.Array,
    w_s: jax.Array,
    initial_state: LSTMState,
    mask: jax.Array | None,
    activation: str | Callable | activations.Activation = "tanh",
    options: KernelOptions | None = None,
) -> tuple[LSTMState, LSTMState, jax.Array]:
    """The LSTM's forward recursion as one kernel: z_t = u_t + h_{t-1} W_s, c_t = f c_{t-1} + i g,
    h_t = o phi(c_t) (`rnn_jax.cells.lstm`).

    Args:
      u: x_t W_x + b_s, [T, B, 4H] (the gate blocks i, f, g, o side by side).
      w_s: [H, 4H].
      initial_state: (h_0, c_0), each [B, H].
      mask: [T, B] bool (the state is frozen where False), or None.
      activation: phi.
      options: `KernelOptions` (None: those of `kernel_options`, else `DEFAULT_OPTIONS`); with ``carry_products``
        the kernel carries h_{t-1} W_s's four gate blocks as well as (h_{t-1}, c_{t-1}).

    Returns:
      (states (h_t, c_t) [T, B, H] each, the final state, the pre-activations z_t [T, B, 4H]).
    """
    options = options or _OPTIONS.get()
    batch, hidden = u.shape[1], w_s.shape[0]
    rows, width = _padded_sizes(batch, hidden)
    sequences = _gate_blocks(u, rows, width)
    if mask is not None:
        sequences.append(_pad(mask.astype(u.dtype)[..., None], rows, None))
    matrices = _gate_matrices(w_s, width)
    h_0, c_0 = _pad(initial_state.h, rows, width), _pad(initial_state.c, rows, width)
    initials = [h_0, c_0, *_carried_products(h_0, matrices, options.carry_products)]
    outs, finals = run_recursion(
        _lstm_forward_step(activations.get(activation).fn, mask is not None, options.carry_products),
        sequences, matrices, initials, 6, False, options,
    )  # fmt: skip
    outs = [a[:, :batch, :hidden] for a in outs]
    final = LSTMState(*(a[:batch, :hidden] for a in finals[:2]))
    return LSTMState(outs[0], outs[1]), final, jnp.concatenate(outs[2:], axis=-1)


def lstm_reverse_errors(
    params: LSTMParams,
    direct: LSTMState,
    pre: jax.Array,
    cells: jax.Array,
    previous_cells: jax.Array,
    m: jax.Array | None,
    final_error: LSTMState,
    activation: str | Callable | activations.Activation = "tanh",
    options: KernelOptions | None = None,
) -> tuple[jax.Array, LSTMState]:
    """The reverse recursion of `rnn_jax.bptt.lstm_backward` as one kernel: (dz_t [T, B, 4H], dE/d(h_0, c_0)).

    Args:
      params: the weights (W_s is read).
      direct: the errors reaching (h_t, c_t) from outside the recursion (for h: m_t g_t W_y^T + dE/dh_t|direct),
        [T, B, H] each.
      pre: the gate pre-activations z_t of the forward pass, [T, B, 4H].
      cells, previous_cells: c_t and c_{t-1}, [T, B, H].
      m: the validity mask as [T, B, 1] in the states' dtype, or None.
      final_error: dE/d(h_T, c_T) from a use of the final state, [B, H] each.
      activation: phi.
      options: `KernelOptions` (None: those of `kernel_options`, else `DEFAULT_OPTIONS`).
    """
    batch, hidden = cells.shape[1:]
    rows, width = _padded_sizes(batch, hidden)
    sequences = [_pad(direct.h, rows, width), _pad(direct.c, rows, width), *_gate_blocks(pre, rows, width),
                 _pad(cells, rows, width), _pad(previous_cells, rows, width)]  # fmt: skip
    if m is not None:
        sequences.append(_pad(m, rows, width=None))
    initials = [_pad(final_error.h, rows, width), _pad(final_error.c, rows, width)]
    dz, (q_0, e_0) = run_recursion(
        _lstm_reverse_step(activations.get(activation), m is not None),
        sequences, _gate_matrices(params.w_s, width, transpose=True), initials, 4, True, options,
    )  # fmt: skip
    dz = jnp.concatenate([d[:, :batch, :hidden] for d in dz], axis=-1)
    return dz, LSTMState(q_0[:batch, :hidden], e_0[:batch, :hidden])


def _summed_over_steps(a: jax.Array, b: jax.Array) -> jax.Array:
    """sum_t a_t^T b_t for a [T, B, N], b [T, B, M]: one [N, T B] @ [T B, M] product (a weight gradient)."""
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


def lstm_backward(
    params, xs, initial_state, mask, states, pre, output_error, state_error, final_state_error, activation="tanh"
) -> tuple[LSTMParams, jax.Array, LSTMState]:
    """The LSTM BPTT equations of `rnn_jax.bptt.lstm_backward`, with the reverse recursion as one kernel and every
    weight gradient as one product over all T B rows afterwards: (parameter gradients, dE/dx [T, B, D],
    dE/d(h_0, c_0)). The arguments are `rnn_jax.bptt.lstm_backward`'s."""
    m = None if mask is None else mask.astype(xs.dtype)[..., None]  # [T, B, 1]
    g_y = output_error if m is None else output_error * m
    direct = LSTMState(g_y @ params.w_y.T + state_error.h, state_error.c)
    c_prev = bptt.previous_states(initial_state.c, states.c)
    dz, initial_error = lstm_reverse_errors(params, direct, pre, states.c, c_prev, m, final_state_error, activation)
    h_prev = bptt.previous_states(initial_state.h, states.h)
    grads = LSTMParams(
        w_x=_summed_over_steps(xs, dz),
        w_s=_summed_over_steps(h_prev, dz),
        b_s=jnp.sum(dz, axis=(0, 1)),
        w_y=_summed_over_steps(states.h, g_y),
        b_y=jnp.sum(g_y, axis=(0, 1)),
    )
    return grads, dz @ params.w_x.T, initial_error


# ------------------------------------------------------------------ the GRU


def _gru_forward_step(phi: Callable, masked: bool, carry_products: bool) -> Callable:
    """The GRU forward step over the carry h_{t-1}, or with ``carry_products`` (h_{t-1}, h_{t-1} W_r, h_{t-1} W_z,
    h_{t-1} W_n), the products formed from the (masked) h_t at the end of the step before (as
    `_lstm_forward_step`)."""

    def step(at_t, carry, matrices):
        (h, *products), (*gates, b_n) = carry, matrices
        if not carry_products:
            products = [_product(h, w) for w in gates]  # h_{t-1} W_k for k = r, z, n
        a_r, a_z, a_n = at_t[:3]  # a_r, a_z with the recurrent biases b_r, b_z already added
        p_r, p_z = a_r + products[0], a_z + products[1]
        u_n = products[2] + b_n
        z = jax.nn.sigmoid(p_z)
        h_new = (1 - z) * phi(a_n + jax.nn.sigmoid(p_r) * u_n) + z * h
        if masked:
            h_new = jnp.where(at_t[3] > 0, h_new, h)
        return (h_new, *_carried_products(h_new, gates, carry_products)), (h_new, p_r, p_z, u_n)

    return step


def _gru_reverse_step(act: activations.Activation, masked: bool) -> Callable:
    def step(at_t, carry, matrices):
        (q,) = carry  # du_{t+1} W_s^T + p_{t+1}: what reaches h_t from step t + 1
        direct, p_r, p_z, a_n, u_n, h_prev = at_t[:6]
        a = direct + q
        r, z = jax.nn.sigmoid(p_r), jax.nn.sigmoid(p_z)
        pre_n = a_n + r * u_n
        n = act.fn(pre_n)
        dq = a * (1 - z) * activations.derivative(act, pre_n, n)
        da = [dq * u_n * r * (1 - r), a * (h_prev - n) * z * (1 - z), dq]
        if masked:
            m = at_t[6]
            da = [m * d for d in da]
            q = a * (m * z + 1 - m)
        else:
            q = a * z
        for d, w_t in zip((da[0], da[1], da[2] * r), matrices, strict=True):  # du: the reset gate scales u_n
            q = q + _product(d, w_t)
        return (q,), tuple(da)

    return step


def gru_recurrence(
    x_proj: jax.Array,
    params: GRUParams,
    initial_state: jax.Array,
    mask: jax.Array | None,
    activation: str | Callable | activations.Activation = "tanh",
    options: KernelOptions | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The GRU's forward recursion as one kernel (`rnn_jax.cells.gru`): r = s(a_r + u_r), z = s(a_z + u_z),
    n = phi(a_n + r u_n), h_t = (1 - z) n + z h_{t-1}, with [u_r, u_z, u_n] = h_{t-1} W_s + b_s.

    Args:
      x_proj: [a_r, a_z, a_n] = x_t W_x + b_x, [T, B, 3H].
      params: the weights (W_s and b_s are read).
      initial_state: h_0, [B, H].
      mask: [T, B] bool (the state is frozen where False), or None.
      activation: phi.
      options: `KernelOptions` (None: those of `kernel_options`, else `DEFAULT_OPTIONS`); with ``carry_products``
        the kernel carries h_{t-1} W_s's three gate blocks as well as h_{t-1}.

    Returns:
      (states h_t [T, B, H], the final state [B, H], `gru.pre_activations` [p_r, p_z, a_n, u_n] [T, B, 4H]).
    """
    options = options or _OPTIONS.get()
    batch, hidden = initial_state.shape
    rows, width = _padded_sizes(batch, hidden)
    b_r, b_z, b_n = jnp.split(params.b_s, 3)
    a_r, a_z, a_n = jnp.split(x_proj, 3, axis=-1)
    sequences = [_pad(a, rows, width) for a in (a_r + b_r[None, None, :], a_z + b_z[None, None, :], a_n)]
    if mask is not None:
        sequences.append(_pad(mask.astype(x_proj.dtype)[..., None], rows, None))
    gates = _gate_matrices(params.w_s, width)
    h_0 = _pad(initial_state, rows, width)
    initials = [h_0, *_carried_products(h_0, gates, options.carry_products)]
    (h, p_r, p_z, u_n), (final, *_) = run_recursion(
        _gru_forward_step(activations.get(activation).fn, mask is not None, options.carry_products),
        sequences, [*gates, _pad(b_n[None, :], 1, width)], initials, 4, False, options,
    )  # fmt: skip
    h, p_r, p_z, u_n = (x[:, :batch, :hidden] for x in (h, p_r, p_z, u_n))
    return h, final[:batch, :hidden], jnp.concatenate([p_r, p_z, a_n, u_n], axis=-1)


def gru_reverse_errors(
    params: GRUParams,
    direct: jax.Array,
    pre: jax.Array,
    previous: jax.Array,
    m: jax.Array | None,
    final_error: jax.Array,
    activation: str | Callable | activations.Activation = "tanh",
    options: KernelOptions | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The reverse recursion of `rnn_jax.bptt.gru_backward` as one kernel: (da_t = dE/d(x_t W_x + b_x)
    [T, B, 3H] (masked), dE/dh_0 [B, H]).

    Args:
      params: the weights (W_s is read).
      direct: the errors reaching h_t from outside the recursion, m_t g_t W_y^T + dE/dh_t|direct, [T, B, H].
      pre: `gru.pre_activations` of the forward pass, [T, B, 4H].
      previous: h_{t-1}, [T, B, H].
      m: the validity mask as [T, B, 1] in the states' dtype, or None.
      final_error: dE/dh_T from a use of the final state, [B, H].
      activation: phi.
      options: `KernelOptions` (None: those of `kernel_options`, else `DEFAULT_OPTIONS`).
    """
    batch, hidden = previous.shape[1:]
    rows, width = _padded_sizes(batch, hidden)
    sequences = [_pad(direct, rows, width), *_gate_blocks(pre, rows, width), _pad(previous, rows, width)]
    if m is not None:
        sequences.append(_pad(m, rows, width=None))
    da, (initial_error,) = run_recursion(
        _gru_reverse_step(activations.get(activation), m is not None),
        sequences, _gate_matrices(params.w_s, width, transpose=True), [_pad(final_error, rows, width)], 3, True,
        options,
    )  # fmt: skip
    return jnp.concatenate([d[:, :batch, :hidden] for d in da], axis=-1), initial_error[:batch, :hidden]


def gru_backward(
    params, xs, initial_state, mask, states, pre, output_error, state_error, final_state_error, activation="tanh"
) -> tuple[GRUParams, jax.Array, jax.Array]:
    """The GRU BPTT equations of `rnn_jax.bptt.gru_backward`, with the reverse recursion as one kernel and every
    weight gradient as one product over all T B rows afterwards: (parameter gradients, dE/dx [T, B, D],
    dE/dh_0 [B, H]). The arguments are `rnn_jax.bptt.gru_backward`'s."""
    m = None if mask is None else mask.astype(xs.dtype)[..., None]  # [T, B, 1]
    g_y = output_error if m is None else output_error * m
    h_prev = bptt.previous_states(initial_state, states)
    da, initial_error = gru_reverse_errors(
        params, g_y @ params.w_y.T + state_error, pre, h_prev, m, final_state_error, activation
    )
    hidden = states.shape[-1]
    r = jax.nn.sigmoid(pre[..., :hidden])
    du = jnp.concatenate([da[..., : 2 * hidden], da[..., 2 * hidden :] * r], axis=-1)  # the reset gate scales u_n
    grads = GRUParams(
        w_x=_summed_over_steps(xs, da),
        w_s=_summed_over_steps(h_prev, du),
        b_x=jnp.sum(da, axis=(0, 1)),
        b_s=jnp.sum(du, axis=(0, 1)),
        w_y=_summed_over_steps(states, g_y),
        b_y=jnp.sum(g_y, axis=(0, 1)),
    )
    return grads, da @ params.w_x.T, initial_error


# ------------------------------------------------------------------ the unrolls, with BPTT as their VJPs


def _forward_keeping_pre(cell, recurrence, params, xs, initial_state, mask, activation):
    """((outputs, states, final), pre): the hoisted unroll of ``cell`` with ``recurrence(x_proj, params, carry,
    mask, activation) -> (states, final, pre)``, one of the kernels above, as its recursion."""
    from rnn_jax.unroll import hoisted_scan  # unroll imports this module lazily; the arrow points here

    kept = {}

    def fused_recurrence(x_proj, carry, mask_):
        states, final, kept["pre"] = recurrence(x_proj, params, carry, mask_, activation)
        return states, final

    return hoisted_scan(cell, params, initial_state, xs, mask, activation, recurrence=fused_recurrence), kept["pre"]


def _fused_scan(cell, recurrence: Callable, backward: Callable, doc: str):
    """A cell's fused unroll ``(params, xs, initial_state, mask, activation) -> (outputs, states, final)``:
    `_forward_keeping_pre` with ``recurrence`` as its primal, and ``backward(params, xs, initial_state, mask,
    states, pre, *cotangents, activation) -> (parameter gradients, dE/dx, dE/d initial state)`` as its VJP."""
    forward = functools.partial(_forward_keeping_pre, cell, recurrence)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
    def fused_scan(params, xs, initial_state, mask, activation):
        return forward(params, xs, initial_state, mask, activation)[0]

    def forward_rule(params, xs, initial_state, mask, activation):
        (outputs, states, final), pre = forward(params, xs, initial_state, mask, activation)
        return (outputs, states, final), (params, xs, initial_state, mask, states, pre)

    def backward_rule(activation, residuals, cotangents):
        grads, g_xs, g_initial = backward(*residuals, *cotangents, activation)
        return grads, g_xs, g_initial, None  # the mask gets no cotangent

    fused_scan.defvjp(forward_rule, backward_rule)
    fused_scan.__doc__ = doc
    return fused_scan


def _elman_recurrence(x_proj, params, s_0, mask, activation):
    states, final = recurrence(x_proj + params.b_s[None, None, :], params.w_s, s_0, mask, activation)
    return states, final, None  # the Elman backward pass needs no pre-activations


def _elman_backward(params, xs, initial_state, mask, states, pre, g_outputs, g_states, g_final, activation):
    grads = bptt.backward_of_cotangents(
        params, xs, initial_state, mask, states, g_outputs, g_states, g_final, activation, recursion=reverse_errors
    )
    return grads.params, grads.inputs, grads.initial_state


def _lstm_recurrence(x_proj, params, carry, mask, activation):
    return lstm_recurrence(x_proj + params.b_s[None, None, :], params.w_s, carry, mask, activation)


elman_scan = _fused_scan(
    elman,
    _elman_recurrence,
    _elman_backward,
    """The Elman unroll ``(outputs [T, B, O], states [T, B, H], final_state [B, H])`` with the forward recursion as
    one kernel, and `rnn_jax.bptt.backward` with the reverse recursion as one kernel as its VJP. The arguments
    are those of `rnn_jax.unroll.scan`, already checked by `rnn_jax.unroll` (use ``unroll(..., backward="fused")``).""",
)
lstm_scan = _fused_scan(
    lstm,
    _lstm_recurrence,
    lstm_backward,
    """The LSTM unroll ``(outputs [T, B, O], states (h, c) [T, B, H] each, final_state)`` with both recursions as
    kernels and `lstm_backward` as its VJP (``unroll(..., cell=lstm, backward="fused")``).""",
)
gru_scan = _fused_scan(
    gru,
    gru_recurrence,
    gru_backward,
    """The GRU unroll ``(outputs [T, B, O], states [T, B, H], final_state [B, H])`` with both recursions as
    kernels and `gru_backward` as its VJP (``unroll(..., cell=gru, backward="fused")``).""",
)
SCANS = {elman: elman_scan, lstm: lstm_scan, gru: gru_scan}  # the cells with fused kernels, and their unrolls
