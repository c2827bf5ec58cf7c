"""The scan unroll against the Python-loop oracle; masking; the three sequence shapes; bad input."""

from __future__ import annotations

import functools
import importlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax import cells
from rnn_jax.bptt import elman_scan as bptt_elman_scan
from rnn_jax.bptt import lstm_scan as bptt_lstm_scan
from rnn_jax.unroll import CPU_HOIST_MAX_BATCH, lax_scan, remat_chunk, resolve_projections
from tests.jaxprs import scan_stacked_dtypes
from tests.oracle import elman_loop, gru_loop, lstm_loop
from tests.stages import slow_unless

ACTIVATIONS = ["tanh", "sigmoid", "relu", "identity"]
T, B, D, H, O = 7, 3, 4, 5, 2


def _setup(key, dtype=jnp.float32, scale=0.9):
    k_p, k_x = jax.random.split(key)
    params = rj.elman.init(k_p, D, H, O, recurrent_scale=scale, dtype=dtype)
    # non-zero biases so that a wrong bias path shows
    params = params._replace(b_s=jnp.linspace(-0.3, 0.3, H, dtype=dtype), b_y=jnp.linspace(0.1, 0.2, O, dtype=dtype))
    xs = jax.random.normal(k_x, (T, B, D), dtype)
    return params, xs


@pytest.mark.parametrize("activation", slow_unless(["tanh", "relu"], ACTIVATIONS))
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("unroll_factor", slow_unless([1, 3], [1, 3, T]))
@pytest.mark.parametrize("jit", [False, True])
def test_scan_unroll_equals_python_loop(key, activation, with_lengths, unroll_factor, jit):
    params, xs = _setup(key)
    lengths = jnp.array([T, 3, 0], jnp.int32) if with_lengths else None
    run = functools.partial(rj.unroll, activation=activation, unroll=unroll_factor)
    if jit:
        run = jax.jit(run)
    got = run(params, xs, lengths=lengths)
    want_y, want_s, want_final = elman_loop(
        params, xs, activation, lengths=None if lengths is None else np.asarray(lengths)
    )
    chex.assert_trees_all_close(
        (got.outputs, got.states, got.final_state), (want_y, want_s, want_final), atol=2e-5, rtol=2e-5
    )


@pytest.mark.parametrize("activation", slow_unless(["tanh", "relu"], ACTIVATIONS))
@pytest.mark.parametrize("with_lengths", [False, True])
def test_scan_gradient_equals_python_loop_gradient(key, x64, activation, with_lengths):
    """jax.grad through lax.scan equals jax.grad through a jnp Python loop (float64)."""
    params, xs = _setup(key, jnp.float64)
    lengths = jnp.array([T, 4, 1], jnp.int32) if with_lengths else None
    targets = jax.random.normal(jax.random.key(1), (T, B, O), jnp.float64)
    mask = None if lengths is None else rj.sequence_mask(lengths, T)
    phi = rj.activations.get(activation).fn

    def loss_scan(p):
        return rj.squared_error(rj.unroll(p, xs, activation=activation, lengths=lengths).outputs, targets, mask, "sum")

    def loss_loop(p):
        s = jnp.zeros((B, H), jnp.float64)
        total = jnp.zeros((), jnp.float64)
        for t in range(T):
            new = phi(xs[t] @ p.w_x + s @ p.w_s + p.b_s[None, :])
            valid = jnp.ones((B, 1), bool) if lengths is None else (t < lengths)[:, None]
            s = jnp.where(valid, new, s)
            y = s @ p.w_y + p.b_y[None, :]
            total = total + jnp.sum(jnp.where(valid, jnp.square(targets[t] - y), 0.0))
        return total

    chex.assert_trees_all_close(jax.grad(loss_scan)(params), jax.grad(loss_loop)(params), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_grad_equals_central_finite_differences_float64(key, x64, activation):
    """Every entry of every parameter's gradient agrees with central differences (relative error <= 1e-6)."""
    params, xs = _setup(key, jnp.float64)
    lengths = jnp.array([T, 5, 2], jnp.int32)
    targets = jax.random.normal(jax.random.key(2), (T, B, O), jnp.float64)
    mask = rj.sequence_mask(lengths, T)

    def loss(p):
        return rj.squared_error(rj.unroll(p, xs, activation=activation, lengths=lengths).outputs, targets, mask, "sum")

    grads = jax.grad(loss)(params)
    loss_np = jax.jit(loss)
    eps = 1e-6
    for name, leaf, grad in zip(rj.ElmanParams._fields, params, grads, strict=True):
        flat = np.asarray(leaf).ravel()
        numeric = np.empty_like(flat)
        for i in range(flat.size):
            plus, minus = flat.copy(), flat.copy()
            plus[i] += eps
            minus[i] -= eps
            up = loss_np(params._replace(**{name: jnp.asarray(plus.reshape(leaf.shape))}))
            down = loss_np(params._replace(**{name: jnp.asarray(minus.reshape(leaf.shape))}))
            numeric[i] = (float(up) - float(down)) / (2 * eps)
        analytic = np.asarray(grad).ravel()
        scale = np.maximum(np.abs(numeric), np.abs(analytic)).max() + 1e-12
        rel = np.abs(numeric - analytic).max() / scale
        assert rel <= 1e-6, f"{name}: max relative error {rel:.2e} vs finite differences"


def test_batch_first_equals_time_major(key):
    params, xs = _setup(key)
    lengths = jnp.array([7, 2, 5], jnp.int32)
    tm = rj.unroll(params, xs, lengths=lengths)
    bf = rj.unroll(params, jnp.swapaxes(xs, 0, 1), lengths=lengths, time_major=False)
    chex.assert_trees_all_close(
        (jnp.swapaxes(bf.outputs, 0, 1), jnp.swapaxes(bf.states, 0, 1), bf.final_state),
        (tm.outputs, tm.states, tm.final_state),
    )


def test_mask_equals_lengths(key):
    params, xs = _setup(key)
    lengths = jnp.array([7, 2, 5], jnp.int32)
    by_lengths = rj.unroll(params, xs, lengths=lengths)
    by_mask = rj.unroll(params, xs, mask=rj.sequence_mask(lengths, T))
    chex.assert_trees_all_equal(by_lengths, by_mask)


def test_initial_state_is_used(key):
    params, xs = _setup(key)
    s0 = jnp.full((B, H), 0.5, jnp.float32)
    got = rj.unroll(params, xs, initial_state=s0)
    _, want_s, _ = elman_loop(params, xs, s0=np.asarray(s0))
    chex.assert_trees_all_close(got.states, want_s, atol=2e-5)


@pytest.mark.parametrize("activation", slow_unless(["tanh", "relu"], ACTIVATIONS))
def test_garbage_past_the_end_changes_nothing(key, activation):
    """Padding with garbage past a sequence's length leaves its final state, loss and gradient unchanged."""
    params, xs = _setup(key)
    lengths = jnp.array([7, 3, 5], jnp.int32)
    mask = rj.sequence_mask(lengths, T)
    garbage = jnp.where(mask[:, :, None], xs, 1e3 * jax.random.normal(jax.random.key(9), xs.shape))
    targets = jax.random.normal(jax.random.key(3), (T, B, O))
    garbage_targets = jnp.where(mask[:, :, None], targets, -7.0)

    def loss(p, inputs, tgt):
        out = rj.unroll(p, inputs, activation=activation, lengths=lengths).outputs
        return rj.squared_error(out, tgt, mask)

    clean = rj.unroll(params, xs, activation=activation, lengths=lengths)
    dirty = rj.unroll(params, garbage, activation=activation, lengths=lengths)
    chex.assert_trees_all_equal(clean.final_state, dirty.final_state)
    chex.assert_trees_all_equal(
        jax.value_and_grad(loss)(params, xs, targets), jax.value_and_grad(loss)(params, garbage, garbage_targets)
    )


def test_many_to_one_reads_the_last_valid_step(key):
    params, xs = _setup(key)
    lengths = jnp.array([7, 1, 4], jnp.int32)
    run = rj.unroll(params, xs, lengths=lengths)
    last = rj.last_valid(run.outputs, lengths)
    want_y, _, want_final = elman_loop(params, xs, lengths=np.asarray(lengths))
    for b, length in enumerate(np.asarray(lengths)):
        np.testing.assert_allclose(last[b], want_y[length - 1, b], atol=2e-5)
    with pytest.raises(ValueError, match=r"lengths: expected every length in \[1, T=7\], got values in \[0, 7\]"):
        rj.last_valid(run.outputs, lengths.at[1].set(0))  # no last valid step (index -1 would read step T)
    # the final state is the state at the last valid step, so its read-out is the many-to-one output
    chex.assert_trees_all_close(last, run.final_state @ params.w_y + params.b_y[None, :], atol=1e-6)
    lstm_run = rj.unroll(rj.lstm.init(key, D, H, O), xs, cell=rj.lstm, lengths=lengths)  # a state pytree
    chex.assert_trees_all_equal(rj.last_valid(lstm_run.states, lengths), lstm_run.final_state)
    chex.assert_trees_all_close(run.final_state, want_final, atol=2e-5)


@pytest.mark.parametrize("feedback", ["output", "argmax", "sample"])
def test_generate_feeds_outputs_back(key, feedback):
    params = rj.elman.init(key, 3, 6, 3)
    first = jax.nn.one_hot(jnp.array([0, 2]), 3, dtype=jnp.float32)
    gen = rj.generate(params, jax.random.key(5), first, 6, feedback=feedback)
    chex.assert_shape((gen.inputs, gen.outputs, gen.states), ((6, 2, 3), (6, 2, 3), (6, 2, 6)))
    # replaying the fed inputs through the ordinary unroll reproduces the outputs: the loop is consistent
    replay = rj.unroll(params, gen.inputs)
    chex.assert_trees_all_close(replay.outputs, gen.outputs, atol=1e-6)
    chex.assert_trees_all_close(gen.inputs[0], first)
    if feedback == "output":
        chex.assert_trees_all_close(gen.inputs[1:], gen.outputs[:-1])
    elif feedback == "argmax":
        chex.assert_trees_all_equal(jnp.argmax(gen.inputs[1:], -1), jnp.argmax(gen.outputs[:-1], -1))
    else:
        assert set(np.unique(np.asarray(gen.inputs))) <= {0.0, 1.0}
        chex.assert_trees_all_close(jnp.sum(gen.inputs, -1), jnp.ones((6, 2)))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU form of bfloat16 scans")
def test_generate_in_bfloat16_stacks_float32_on_a_cpu_with_the_same_values(key, monkeypatch):
    """A bfloat16 network's generated sequence is stacked in float32 inside the loop (`CPU_WIDENED_BFLOAT16_SCANS`)
    and returned in bfloat16, equal bit for bit to stacking in bfloat16."""
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), rj.elman.init(key, 3, 6, 3))
    first = jax.nn.one_hot(jnp.array([0, 2]), 3, dtype=jnp.bfloat16)

    def run():
        return rj.generate(params, jax.random.key(5), first, 6, feedback="sample")

    def scan_dtypes():  # a new function each time: make_jaxpr caches its trace by function, not by the flag
        return scan_stacked_dtypes(jax.make_jaxpr(lambda: run())().jaxpr)

    assert jnp.dtype(jnp.bfloat16) not in scan_dtypes()
    widened = run()
    assert {a.dtype for a in widened} == {jnp.dtype(jnp.bfloat16)}
    monkeypatch.setattr(importlib.import_module("rnn_jax.unroll"), "CPU_WIDENED_BFLOAT16_SCANS", False)
    assert jnp.dtype(jnp.bfloat16) in scan_dtypes()
    chex.assert_trees_all_equal(widened, run())


def test_generate_samples_follow_the_softmax(key):
    """With a fixed state-independent output, sampled symbol frequencies match softmax(y / temperature)."""
    params = rj.elman.init(key, 3, 4, 3)
    params = params._replace(w_y=jnp.zeros_like(params.w_y), b_y=jnp.array([0.0, 1.0, 2.0], jnp.float32))
    first = jnp.zeros((2000, 3), jnp.float32)
    gen = rj.generate(params, jax.random.key(1), first, 2, feedback="sample", temperature=2.0)
    freq = np.bincount(np.asarray(jnp.argmax(gen.inputs[1], -1)), minlength=3) / 2000
    np.testing.assert_allclose(freq, np.asarray(jax.nn.softmax(params.b_y / 2.0)), atol=0.04)


# ---------------------------------------------------------------- bad input -> clear errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"xs": jnp.zeros((T, B, D + 1))}, r"xs: expected input width D = 4.*got 5"),
        ({"xs": jnp.zeros((T, D))}, r"xs: expected rank 3 \[T, B, D\], got rank 2"),
        ({"xs": jnp.zeros((T, B, D), jnp.int32)}, r"xs: expected a floating dtype, got int32"),
        ({"lengths": jnp.array([T + 1, 1, 1], jnp.int32)}, r"lengths: expected every length in \[0, T=7\], got .*8"),
        ({"lengths": jnp.array([-1, 1, 1], jnp.int32)}, r"lengths: expected every length in \[0, T=7\], got .*-1"),
        ({"lengths": jnp.array([1, 1], jnp.int32)}, r"lengths: expected the batch size B = 3"),
        ({"lengths": jnp.array([1.0, 1.0, 1.0])}, r"lengths: expected an integer dtype"),
        ({"initial_state": jnp.zeros((B, H + 1))}, r"initial_state: expected shape \(3, 5\)"),
        ({"unroll": 0}, r"unroll: expected a positive integer, got 0"),
        ({"activation": "softsign"}, r"activation: expected one of .*'tanh'.*got 'softsign'"),
        ({"mask": jnp.ones((T, B), jnp.int32)}, r"mask: expected dtype bool"),
        ({"xs": jnp.full((T, B, D), jnp.nan), "check_finite": True}, r"xs: expected finite values, found 84 NaN/Inf"),
        ({"cell": rj.gru}, r"params: expected the gru cell's GRUParams, got ElmanParams \(they are the elman cell's"),
        ({"cell": "rnn"}, r"cell: expected one of \['elman', 'gru', 'lstm'\] or a cell module, got 'rnn'"),
        ({"cell": 3}, r"cell: expected a cell module \(rnn_jax.elman, rnn_jax.lstm, rnn_jax.gru\) or its name, got 3"),
        ({"initial_state": (jnp.zeros((B, H)), jnp.zeros((B, H)))}, r"initial_state: expected shape \(3, 5\)"),
        ({"initial_state": jnp.zeros((B, H), jnp.int32)}, r"initial_state: expected a floating dtype, got int32"),
    ],
)
def test_bad_input_gets_a_clear_error(key, kwargs, message):
    params, xs = _setup(key)
    kwargs = {"xs": xs, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        rj.unroll(params, **kwargs)


@pytest.mark.parametrize("time_major", ["no", "False", 1, 0, None, jnp.bool_(True)])
def test_time_major_must_be_a_bool(key, time_major):
    """A truthy string ("no") was taken as True: batch-first inputs were read as time-major, silently."""
    params, xs = _setup(key)
    with pytest.raises(TypeError, match=rf"time_major: expected True or False, got {re.escape(repr(time_major))}"):
        rj.unroll(params, xs, time_major=time_major)


def test_time_major_takes_a_numpy_bool(key):
    params, xs = _setup(key)
    batch_first = rj.unroll(params, jnp.swapaxes(xs, 0, 1), time_major=np.bool_(False))
    chex.assert_trees_all_equal(batch_first.outputs, jnp.swapaxes(rj.unroll(params, xs).outputs, 0, 1))


_SHAPES = {  # field: (its shape letters, the shape at (D, H, O) = (4, 5, 2))
    "elman": {"w_x": ("D, H", (4, 5)), "w_s": ("H, H", (5, 5)), "b_s": ("H", (5,))},
    "lstm": {"w_x": ("D, 4H", (4, 20)), "w_s": ("H, 4H", (5, 20)), "b_s": ("4H", (20,))},
    "gru": {"w_x": ("D, 3H", (4, 15)), "w_s": ("H, 3H", (5, 15)), "b_x": ("3H", (15,)), "b_s": ("3H", (15,))},
}
_READOUT = {"w_y": ("H, O", (5, 2)), "b_y": ("O", (2,))}


@pytest.mark.parametrize(
    ("cell", "field"), [(c, f) for c in ("elman", "lstm", "gru") for f in {**_SHAPES[c], **_READOUT}]
)
def test_params_of_the_wrong_rank_or_shape_are_refused_by_field(key, cell, field):
    """b_y of shape [1, O] made 4-D outputs silently (broadcast); the others failed inside the scan's products.
    D, H and O are read from w_x's rows, w_s's rows and w_y's columns (the ``sizes`` property)."""
    module = cells.get(cell)
    letters, shape = {**_SHAPES[cell], **_READOUT}[field]
    params = module.init(key, D, H, O)
    a = getattr(params, field)
    with pytest.raises(
        ValueError,
        match=rf"params.{field}: expected rank {len(shape)} \[{letters}\], got rank {len(shape) + 1} with shape "
        + re.escape(str((1, *shape))),
    ):
        rj.unroll(params._replace(**{field: a[None]}), jnp.zeros((T, B, D)), cell=module)
    axis = 0 if field == "w_y" else -1  # one entry too many on an axis that no size (D, H, O) is read from
    wider = jnp.concatenate([a, jnp.take(a, jnp.asarray([0]), axis=axis)], axis=axis)
    with pytest.raises(
        ValueError,
        match=rf"params.{field}: expected shape \[{letters}\] = {re.escape(str(shape))}, got "
        + re.escape(str(wider.shape)),
    ):
        rj.unroll(params._replace(**{field: wider}), jnp.zeros((T, B, D)), cell=module)


@pytest.mark.parametrize(
    ("lengths", "error", "message"),
    [
        (
            jnp.array([1.5, 2.0]),
            TypeError,
            r"lengths: expected an integer dtype, got dtype float32",
        ),  # compared as floats
        (jnp.array([2, T + 1], jnp.int32), ValueError, r"lengths: expected every length in \[0, T=7\], got .*\[2, 8\]"),
        (jnp.array([-1, 2], jnp.int32), ValueError, r"lengths: expected every length in \[0, T=7\], got .*\[-1, 2\]"),
        (jnp.int32(3), ValueError, r"lengths: expected rank 1 \[B\], got rank 0 with shape \(\)"),  # a [T, 1] mask
        (jnp.ones((2, 2), jnp.int32), ValueError, r"lengths: expected rank 1 \[B\], got rank 2 with shape \(2, 2\)"),
    ],
)
def test_sequence_mask_refuses_what_is_not_b_lengths_in_0_to_t(lengths, error, message):
    with pytest.raises(error, match=message):
        rj.sequence_mask(lengths, T)


def test_sequence_mask_takes_lengths_0_to_t_and_leaves_traced_values_unchecked():
    mask = rj.sequence_mask([0, 2, T], T)
    np.testing.assert_array_equal(np.asarray(mask).sum(axis=0), [0, 2, T])
    assert jax.jit(rj.sequence_mask, static_argnums=1)(jnp.array([1, T], jnp.int32), T).shape == (T, 2)


@pytest.mark.parametrize(
    ("dtype", "longest", "steps"), [(jnp.uint8, 255, 300), (jnp.int8, 127, 200), (jnp.int16, 300, 40000)]
)
def test_sequence_mask_of_small_integer_lengths_counts_past_their_range(dtype, longest, steps):
    """T steps were counted in the lengths' dtype: past 255 a uint8 counter wrapped round, and 300 steps with
    lengths [255, 2, 1] marked 305 valid, not 258."""
    lengths = jnp.array([longest, 2, 1], dtype)
    mask = rj.sequence_mask(lengths, steps)
    np.testing.assert_array_equal(mask, np.arange(steps)[:, None] < np.array([longest, 2, 1])[None, :])
    assert int(mask.sum()) == longest + 3


@pytest.mark.parametrize("num_steps", [None, "4", -1, 4.0, True])
def test_sequence_mask_names_a_num_steps_that_is_not_an_integer_from_0(num_steps):
    """None and "4" were raw NumPy comparison errors; -1 was blamed on the lengths."""
    with pytest.raises(ValueError, match=rf"num_steps: expected an integer >= 0, got {re.escape(repr(num_steps))}"):
        rj.sequence_mask(jnp.array([0, 0], jnp.int32), num_steps)
    assert rj.sequence_mask(jnp.array([0, 2], jnp.int32), jnp.int32(2)).shape == (2, 2)  # a concrete JAX integer


def test_last_valid_names_a_leaf_that_is_not_t_b(key):
    """The final state [B, H] was indexed as if it were [T, B] (lengths blamed, or, with B = H, a wrong result), a
    leaf with a shorter T was clamped silently, and a 1-D sequence was an IndexError."""
    params, xs = _setup(key)
    lengths = jnp.array([7, 1, 4], jnp.int32)
    run = rj.unroll(params, xs, lengths=lengths)
    final = (
        r"sequence: expected time-major \[T, B, ...\] with B = 3 \(the size of lengths\), got shape \(3, 5\) \(a final"
    )
    with pytest.raises(ValueError, match=final):
        rj.last_valid(run.final_state, lengths)
    with pytest.raises(ValueError, match=r"sequence\[1\]: expected .* with B = 3 .* and T = 7, the first leaf's, got "
                                         r"shape \(4, 3, 5\)"):  # fmt: skip
        rj.last_valid((run.outputs, run.states[:4]), lengths)
    with pytest.raises(ValueError, match=r"sequence: expected time-major \[T, B, ...\] with B = 1 .*got shape \(7,\)"):
        rj.last_valid(jnp.arange(7.0), jnp.array([2], jnp.int32))
    lstm_states = rj.unroll(rj.lstm.init(key, D, H, O), xs, cell=rj.lstm, lengths=lengths).states
    with pytest.raises(ValueError, match=r"sequence\.c: expected .* T = 7, the first leaf's, got shape \(6, 3, 5\)"):
        rj.last_valid(lstm_states._replace(c=lstm_states.c[1:]), lengths)
    with pytest.raises(ValueError, match=r"lengths: expected every length in \[1, T=7\], got values in \[1, 8\]"):
        rj.last_valid(run.outputs, lengths.at[0].set(8))  # index 7 was clamped to the last step


@pytest.mark.usefixtures("x64")
def test_float64_inputs_for_float32_parameters_are_a_clear_error(key):
    """With 64-bit JAX on, plain NumPy arrays are float64: the state would turn float64 after one step and the
    scan refused its own carry (a TypeError from inside jax.lax.scan) for every backward pass and cell."""
    for cell in (rj.elman, rj.lstm):
        params = cell.init(key, D, H, O)
        for backward in ("autodiff", "bptt"):
            with pytest.raises(TypeError, match=r"xs: got float64 values for float32 parameters .*cast xs"):
                rj.unroll(params, np.ones((T, B, D)), cell=cell, backward=backward)
        state = jax.tree.map(lambda a: a.astype(jnp.float64), cell.initial_state(params, B))
        with pytest.raises(TypeError, match=r"initial_state: got float64 values for float32 parameters"):
            rj.unroll(params, jnp.ones((T, B, D), jnp.float32), cell=cell, initial_state=state)
    params = rj.elman.init(key, D, H, O)  # mixed precision casts the inputs once: allowed
    out = rj.unroll(params, np.ones((T, B, D)), compute_dtype=jnp.bfloat16).outputs
    assert out.dtype == jnp.float32


def test_a_cell_may_be_named_and_an_lstm_state_given_as_a_tuple(key):
    """``cell="lstm"`` is the module; ``(h0, c0)`` (PyTorch's form) is the LSTMState(h0, c0)."""
    params = rj.lstm.init(key, D, H, O)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (T, B, D))
    h0, c0 = (jax.random.normal(jax.random.fold_in(key, i), (B, H)) for i in (2, 3))
    named = rj.unroll(params, xs, cell="lstm", initial_state=(h0, c0))
    module = rj.unroll(params, xs, cell=rj.lstm, initial_state=rj.lstm.LSTMState(h0, c0))
    chex.assert_trees_all_equal(named, module)
    square = rj.lstm.init(key, D, H, D)  # O = D: each output is fed back
    generated = rj.generate(square, key, xs[0], 3, cell="lstm", initial_state=[h0, c0], feedback="output")
    assert generated.states.h.shape == (3, B, H)
    with pytest.raises(TypeError, match=r"params: expected the elman cell's ElmanParams, got LSTMParams"):
        rj.generate(square, key, xs[0], 3)


def test_nan_input_passes_unchecked_by_default(key):
    """check_finite is opt-in: without it NaN propagates (the train loop then stops on the NaN loss)."""
    params, xs = _setup(key)
    out = rj.unroll(params, xs.at[0, 0, 0].set(jnp.nan)).outputs
    assert bool(jnp.isnan(out[0, 0]).all()) and bool(jnp.isfinite(out[:, 1:]).all())


# ---------------------------------------------------------------- rematerialisation


def _cell_setup(cell_name, dtype, steps=T):
    """Parameters with non-zero biases, inputs and targets for ``cell_name`` (the shared sizes, T = ``steps``)."""
    cell = cells.get(cell_name)
    k_p, k_x, k_d = jax.random.split(jax.random.key(3), 3)
    params = cell.init(k_p, D, H, O, dtype=dtype)
    params = jax.tree.map(lambda p: p + 0.1 * jnp.sin(jnp.arange(p.size, dtype=dtype)).reshape(p.shape), params)
    xs = jax.random.normal(k_x, (steps, B, D), dtype)
    targets = jax.random.normal(k_d, (steps, B, O), dtype)
    return cell, params, xs, targets


def _remat_value_and_grad(cell, params, xs, targets, activation, lengths, remat, unroll_factor):
    """(outputs, states, final_state) and the gradient of a loss that reads all three, w.r.t. params and xs."""

    def loss(p, x):
        run = rj.unroll(p, x, activation=activation, lengths=lengths, cell=cell, remat=remat, unroll=unroll_factor)
        final = sum(jnp.sum(jnp.square(f)) for f in jax.tree.leaves(run.final_state))
        states = sum(jnp.sum(jnp.cos(s)) for s in jax.tree.leaves(run.states))
        return jnp.sum(jnp.square(run.outputs - targets)) + final + states, run

    (_, run), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs)
    return jax.device_get((run, grads))


# (remat, scan unroll): a non-divisor k (3 of T = 7) with unroll 2, a divisor (7), k > T, sqrt (k = 3) fully unrolled
REMAT_CASES = [(3, 2), (7, 1), (10, 3), ("sqrt", T)]


def _assert_remat_equals_plain(cell_name, dtype, activation, with_lengths, cases):
    cell, params, xs, targets = _cell_setup(cell_name, dtype)
    lengths = jnp.array([T, 3, 0], jnp.int32) if with_lengths else None
    rtol = 1e-10 if dtype == jnp.float64 else 1e-5
    fn = jax.jit(_remat_value_and_grad, static_argnums=(0, 4, 6, 7))
    want = fn(cell, params, xs, targets, activation, lengths, None, 1)
    for remat, unroll_factor in cases:
        got = fn(cell, params, xs, targets, activation, lengths, remat, unroll_factor)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            scale = max(float(np.max(np.abs(w))), 1.0)
            np.testing.assert_allclose(
                g, w, rtol=rtol, atol=rtol * scale, err_msg=f"remat={remat}, unroll={unroll_factor}"
            )


# the default stage: the Elman and LSTM cells once each (a rotating activation; remat does not depend on the
# cell); the slow stage: the GRU's case here, and every cell x activation x case below
QUICK_REMAT = [
    ("elman", "tanh", True, [(3, 2), ("sqrt", 1)]),
    ("lstm", "sigmoid", True, [(3, 2)]),
    pytest.param("gru", "relu", False, [(4, 1)], marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("cell_name", "activation", "with_lengths", "cases"), QUICK_REMAT)
def test_remat_equals_plain_scan_float64(x64, cell_name, activation, with_lengths, cases):
    """Outputs, states, final state and gradients (params and inputs) with remat equal remat=None's
    (float64, relative 1e-10), with lengths (one full, one short, one empty sequence), k not dividing T."""
    _assert_remat_equals_plain(cell_name, jnp.float64, activation, with_lengths, cases)


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "with_lengths"), [(jnp.float64, True), (jnp.float32, False)])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cell_name", ["elman", "lstm", "gru"])
def test_remat_equals_plain_scan_every_case(cell_name, activation, dtype, with_lengths):
    """Every cell x activation x dtype (float64 1e-10 with lengths, float32 1e-5 without) x every (remat, unroll)."""
    with jax.enable_x64(dtype == jnp.float64):
        _assert_remat_equals_plain(cell_name, dtype, activation, with_lengths, REMAT_CASES)


@pytest.mark.slow
def test_remat_with_fast_backward_equals_autodiff(key):
    """backward='fast' with remat takes the autodiff path (the custom VJP keeps all states), with equal gradients."""
    params, xs = _setup(key)

    def loss(p, backward, remat):
        return jnp.sum(jnp.square(rj.unroll(p, xs, backward=backward, remat=remat).outputs))

    grad = jax.jit(jax.grad(loss), static_argnums=(1, 2))
    chex.assert_trees_all_close(grad(params, "fast", 3), grad(params, "autodiff", None), rtol=1e-5, atol=1e-6)


def _backward_temp_bytes(cell_name, remat, steps=400):
    """XLA's temporary buffers of the compiled gradient (as `rnn_jax.bench._compiled_mb` reads them)."""
    cell, params, xs, targets = _cell_setup(cell_name, jnp.float32, steps)

    def loss(p):
        return jnp.mean(jnp.square(rj.unroll(p, xs, cell=cell, remat=remat).outputs - targets))

    stats = jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis()
    if stats is None:
        pytest.skip(f"no XLA memory analysis on the {jax.default_backend()} backend")
    return stats.temp_size_in_bytes


@pytest.mark.parametrize(
    ("cell_name", "remat"),
    [
        ("elman", "sqrt"),
        pytest.param("lstm", 20, marks=pytest.mark.slow),
        pytest.param("gru", 50, marks=pytest.mark.slow),
    ],
)
def test_remat_shrinks_the_backward_pass_memory(cell_name, remat):
    """At T = 400 the backward pass keeps every step's intermediates without remat (O(T)); with remat every k
    steps (sqrt: k = 20) it keeps the T / k chunk boundaries and one chunk's intermediates: under a third of it."""
    plain = _backward_temp_bytes(cell_name, None)
    assert _backward_temp_bytes(cell_name, remat) < plain / 3, plain


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"remat": 0}, r"remat: expected None, a positive integer k or 'sqrt', got 0"),
        ({"remat": "cube"}, r"remat: expected None, a positive integer k or 'sqrt', got 'cube'"),
        ({"remat": True}, r"remat: expected None, a positive integer k or 'sqrt', got True"),
        ({"remat": 3, "backward": "bptt"}, r"backward: 'bptt' .* cannot rematerialise .*remat=3"),
        ({"compute_dtype": jnp.bfloat16, "backward": "bptt"}, r"backward: 'bptt' .*compute_dtype="),
        ({"compute_dtype": jnp.int32}, r"compute_dtype: expected a floating dtype"),
        ({"compute_dtype": "foo"}, r"compute_dtype: expected a floating dtype or None, got 'foo'"),
        ({"projections": "hoisted", "remat": 2}, r"projections: 'hoisted' .* cannot be combined with remat"),
        ({"projections": "hoisted", "compute_dtype": jnp.bfloat16}, r"projections: 'hoisted' .*compute_dtype"),
        ({"projections": "hoisted_readout", "remat": 2}, r"projections: 'hoisted_readout' .* cannot be combined"),
        (
            {"projections": "outside"},
            r"projections: expected 'auto', 'in_step', 'hoisted' or 'hoisted_readout', got 'outside'",
        ),
    ],
)
def test_bad_remat_or_precision_gets_a_clear_error(key, kwargs, message):
    params, xs = _setup(key)
    with pytest.raises((ValueError, TypeError), match=message):
        rj.unroll(params, xs, **kwargs)


@pytest.mark.parametrize(("steps", "chunk"), [(1, 1), (2, 2), (4, 2), (5, 3), (9, 3), (10, 4), (100000, 317)])
def test_sqrt_remat_is_the_ceiling_of_the_square_root(steps, chunk):
    assert remat_chunk("sqrt", steps) == chunk
    assert remat_chunk(str(chunk), steps) == chunk  # the command line's string


# ---------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("cell_name", ["elman", "gru", pytest.param("lstm", marks=pytest.mark.slow)])
def test_bfloat16_compute_keeps_float32_gradients_close_to_float32(cell_name):
    """compute_dtype=bfloat16: float32 outputs and float32 parameter gradients, within bfloat16's precision
    (8 bits of mantissa, relative ~4e-3 per rounding; 3e-2 of the largest entry over T = 7 steps) of float32's."""
    cell, params, xs, targets = _cell_setup(cell_name, jnp.float32)
    lengths = jnp.array([T, 3, 0], jnp.int32)

    def loss(p, compute_dtype):
        out = rj.unroll(p, xs, lengths=lengths, cell=cell, compute_dtype=compute_dtype).outputs
        assert out.dtype == jnp.float32
        return jnp.mean(jnp.square(out - targets))

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    value, grads = value_and_grad(params, jnp.bfloat16)
    want_value, want = value_and_grad(params, None)
    assert value.dtype == jnp.float32 and abs(float(value) - float(want_value)) <= 2e-2 * abs(float(want_value))
    for name, g, w in zip(params._fields, grads, want, strict=True):
        assert g.dtype == jnp.float32, name
        err = float(jnp.max(jnp.abs(g - w))) / float(jnp.max(jnp.abs(w)))
        assert err <= 3e-2, f"{name}: relative error {err:.2e}"
        assert float(jnp.max(jnp.abs(g - w))) > 0 or float(jnp.max(jnp.abs(w))) == 0  # it did run in bfloat16


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU form of bfloat16 scans")
@pytest.mark.parametrize("cell_name", ["elman", "lstm"])
@pytest.mark.parametrize(
    ("precision", "remat", "backward"),
    [("mixed", None, "autodiff"), ("mixed", 3, "autodiff"), ("bfloat16", None, "autodiff"), ("bfloat16", None, "bptt")],
)
def test_cpu_bfloat16_scans_keep_bfloat16_off_the_scan_boundary(cell_name, precision, remat, backward, monkeypatch):
    """On a CPU, where a dynamic-update-slice into a bfloat16 [T, ...] buffer converts the whole buffer at every step
    (O(T^2), `CPU_WIDENED_BFLOAT16_SCANS`), no scan of the bfloat16 value and gradient (mixed precision, or
    bfloat16 parameters through autodiff or the hand-derived reverse scans) stacks or saves a bfloat16 [T, ...]
    array. The outputs are those of the scan in bfloat16 bit for bit (the float32 carry holds bfloat16
    values), and the gradients agree within bfloat16's rounding (autodiff sums the state's cotangents in float32)."""
    cell, params, xs, targets = _cell_setup(cell_name, jnp.float32)
    lengths = jnp.array([T, 3, 0], jnp.int32)
    compute_dtype = jnp.bfloat16 if precision == "mixed" else None
    if precision == "bfloat16":
        params, xs = jax.tree.map(lambda a: a.astype(jnp.bfloat16), (params, xs))

    def run(p):
        options = {"compute_dtype": compute_dtype, "remat": remat, "backward": backward}
        return rj.unroll(p, xs, lengths=lengths, cell=cell, **options).outputs

    def loss(p):
        return jnp.mean(jnp.square(run(p).astype(jnp.float32) - targets))

    def scan_dtypes():
        return scan_stacked_dtypes(jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr)

    def outputs_and_gradients():  # new functions each time: jit caches its trace by function, not by the flag
        return jax.jit(lambda p: run(p))(params), jax.jit(jax.grad(loss))(params)

    assert jnp.dtype(jnp.bfloat16) not in scan_dtypes()
    outputs, grads = outputs_and_gradients()
    monkeypatch.setattr(importlib.import_module("rnn_jax.unroll"), "CPU_WIDENED_BFLOAT16_SCANS", False)
    assert jnp.dtype(jnp.bfloat16) in scan_dtypes()  # what the CPU form avoids
    want_outputs, want = outputs_and_gradients()
    np.testing.assert_array_equal(outputs, want_outputs)
    scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
        assert g.dtype == w.dtype
        assert float(jnp.max(jnp.abs(g.astype(jnp.float32) - w.astype(jnp.float32)))) <= 1e-2 * scale


@pytest.mark.slow
def test_bfloat16_training_still_learns(standard_promotion):
    """A short mixed-precision run (with remat, and the default backward='fast', which then takes the autodiff
    path) on the adding task (T = 10) ends well below its first loss and the trivial baseline. (500 steps: at 300
    the run sits on the plateau just before it learns, and bfloat16's rounding differs between CPUs: on a Zen 3
    machine it ended at 0.196 there, above the baseline's 0.167, and at 0.013 by step 500.)"""
    from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig
    from rnn_jax.train import train_and_evaluate

    config = Config(
        model=ModelConfig(hidden=16, precision="bfloat16", remat="sqrt"),
        task=TaskConfig(task="adding", seq_len=10, batch_size=32),
        optim=OptimConfig(learning_rate=1e-2),
        run=RunConfig(steps=500, eval_every=500, log_every=20, eval_batches=2, progress=False),
    )
    summary = train_and_evaluate(config)
    train_losses = [r["loss"] for r in summary["records"] if r["kind"] == "train"]
    assert jax.tree.leaves(summary["params"])[0].dtype == jnp.float32
    assert summary["final_eval"]["loss"] < 0.5 * train_losses[0], train_losses
    assert summary["final_eval"]["loss"] < 0.5 * summary["baseline"]["loss"], summary["baseline"]


# ---------------------------------------------------------------- hoisted projections


LOOPS = {"elman": elman_loop, "lstm": lstm_loop, "gru": gru_loop}


@pytest.mark.parametrize(("cell_name", "backward"), [("elman", "autodiff"), ("elman", "bptt"), ("lstm", "autodiff"),
                                                     ("gru", "autodiff")])  # fmt: skip
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("form", ["hoisted", "hoisted_readout"])
def test_hoisted_projections_equal_the_python_loop(cell_name, backward, with_lengths, form):
    """The unroll with x_t W_x computed for all steps before the scan (or in the step) and the read-out after it
    equals the NumPy loop oracle (outputs zero past each end, states frozen), float32."""
    cell, params, xs, _ = _cell_setup(cell_name, jnp.float32)
    lengths = jnp.array([T, 3, 0], jnp.int32) if with_lengths else None
    run = jax.jit(functools.partial(rj.unroll, cell=cell, backward=backward, projections=form))
    got = run(params, xs, lengths=lengths)
    want = LOOPS[cell_name](params, xs, "tanh", lengths=None if lengths is None else np.asarray(lengths))
    chex.assert_trees_all_close(
        jax.tree.leaves((got.outputs, got.states, got.final_state)), jax.tree.leaves(want), atol=2e-5, rtol=2e-5
    )


@pytest.mark.parametrize(("cell_name", "backward", "activation"), [
    pytest.param("elman", "autodiff", "sigmoid", marks=pytest.mark.slow), ("elman", "bptt", "tanh"),
    pytest.param("elman", "bptt", "relu", marks=pytest.mark.slow), ("lstm", "autodiff", "tanh"),
    ("gru", "autodiff", "identity")])  # fmt: skip
@pytest.mark.parametrize("form", ["hoisted", "hoisted_readout"])
def test_hoisted_projections_equal_in_step_float64(x64, cell_name, backward, activation, form):
    """Values and gradients (params, inputs, initial state) of a loss reading outputs, states and final state:
    projections hoisted (both, or the read-out only) = in step, float64 to 1e-10 relative, with lengths (full,
    short, empty) and scan unroll 2."""
    cell, params, xs, targets = _cell_setup(cell_name, jnp.float64)
    lengths = jnp.array([T, 3, 0], jnp.int32)
    s0 = jax.tree.map(lambda a: 0.3 * jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape),
                      cell.initial_state(params, B))  # fmt: skip

    def loss(p, x, s, projections):
        run = rj.unroll(p, x, activation=activation, lengths=lengths, initial_state=s, cell=cell, unroll=2,
                        backward=backward, projections=projections)  # fmt: skip
        final = sum(jnp.sum(jnp.square(f)) for f in jax.tree.leaves(run.final_state))
        states = sum(jnp.sum(jnp.cos(a)) for a in jax.tree.leaves(run.states))
        return jnp.sum(jnp.square(run.outputs - targets)) + final + states, run

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    want = value_and_grad(params, xs, s0, "in_step")
    got = value_and_grad(params, xs, s0, form)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10 * max(float(np.max(np.abs(w))), 1.0))


def test_auto_projections_by_backend_cell_batch_and_widths(monkeypatch):
    """The "auto" choice hoists both products on GPU/TPU; on a CPU with at most `CPU_HOIST_MAX_BATCH` rows it hoists
    both for the Elman cell whose widths (D, O) are not both 1, only the read-out for the gated cells and for one
    Elman sequence with D = 1, and keeps the products in the step otherwise (more rows, Elman's D = O = 1 with B > 1,
    or the cell, batch or Elman widths unknown); never with remat or mixed precision (the step's own form)."""
    assert resolve_projections("in_step") == "in_step" and resolve_projections("hoisted") == "hoisted"
    assert resolve_projections("hoisted_readout") == "hoisted_readout"
    for backend in ("cpu", "gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        on_cpu = backend == "cpu"
        assert resolve_projections("auto") == ("in_step" if on_cpu else "hoisted")
        for cell, batch, widths, on_a_cpu in [
            (rj.elman, 2, (3, 2), "hoisted"), (rj.elman, CPU_HOIST_MAX_BATCH, (3, 2), "hoisted"),
            (rj.elman, 1, (3, 2), "hoisted"), (rj.elman, 1, (8, 1), "hoisted"),
            (rj.elman, 1, (1, 1), "hoisted_readout"), (rj.elman, 1, (1, 8), "hoisted_readout"),
            (rj.elman, 2, (1, 1), "in_step"), (rj.elman, 2, (1, 4), "hoisted"),
            (rj.elman, CPU_HOIST_MAX_BATCH + 1, (3, 2), "in_step"),
            (rj.elman, None, (3, 2), "in_step"), (rj.elman, 1, None, "in_step"),
            (rj.lstm, 1, (1, 1), "hoisted_readout"), (rj.gru, CPU_HOIST_MAX_BATCH, None, "hoisted_readout"),
            (rj.lstm, CPU_HOIST_MAX_BATCH + 1, (3, 2), "in_step"), (rj.gru, None, (3, 2), "in_step"),
            (None, 1, (3, 2), "in_step"),
        ]:  # fmt: skip
            kwargs = {"cell": cell, "batch": batch, "widths": widths}
            assert resolve_projections("auto", **kwargs) == (on_a_cpu if on_cpu else "hoisted"), (backend, kwargs)
            assert resolve_projections("auto", plain=False, **kwargs) == "in_step"


def test_auto_projections_reach_the_unroll_on_cpu(monkeypatch):
    """`unroll` passes its cell, batch and widths to the choice: with "auto" on a CPU a batch of at most 8 rows
    runs `hoisted_scan` (the input product in the step for the GRU and for one Elman sequence with D = 1; Elman's
    D = O = 1 with more rows in the step) and a larger one the scan of ``cell.step`` (seen by which of the two is
    called, and how)."""
    import importlib

    module = importlib.import_module("rnn_jax.unroll")
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    calls = []
    real = module.hoisted_scan

    def spy(*args, **kwargs):
        calls.append((args[3].shape[1:], kwargs.get("input_in_step", False)))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "hoisted_scan", spy)
    params = rj.elman.init(jax.random.key(0), 3, 5, 2)
    for batch in (1, CPU_HOIST_MAX_BATCH, CPU_HOIST_MAX_BATCH + 1):
        module.unroll(params, jnp.ones((4, batch, 3)))
    narrow = rj.elman.init(jax.random.key(0), 1, 5, 1)
    for batch in (1, 2):
        module.unroll(narrow, jnp.ones((4, batch, 1)))
    gru_params = rj.gru.init(jax.random.key(0), 3, 5, 2)
    for batch in (CPU_HOIST_MAX_BATCH, CPU_HOIST_MAX_BATCH + 1):
        module.unroll(gru_params, jnp.ones((4, batch, 3)), cell=rj.gru)
    assert calls == [
        ((1, 3), False),
        ((CPU_HOIST_MAX_BATCH, 3), False),
        ((1, 1), True),
        ((CPU_HOIST_MAX_BATCH, 3), True),
    ]


@pytest.mark.parametrize(
    ("cell_name", "backend", "batch", "hidden", "dtype", "projections", "plain", "want"),
    [("elman", "cpu", 1, 8, jnp.float32, "auto", True, "bptt"),
     ("elman", "gpu", 3, 8, jnp.float32, "auto", True, "fused"),
     ("elman", "gpu", 1, 64, jnp.float32, "hoisted", True, "fused"),
     ("elman", "gpu", 3, 65, jnp.float32, "auto", True, "fused"),
     ("elman", "gpu", 1, 128, jnp.float32, "auto", True, "fused"),
     ("elman", "gpu", 3, 129, jnp.float32, "auto", True, "bptt"),
     ("elman", "gpu", 1, 129, jnp.float32, "auto", True, "autodiff"),
     ("elman", "gpu", 3, 8, jnp.float64, "auto", True, "bptt"),
     ("elman", "gpu", 3, 8, jnp.float32, "in_step", True, "bptt"),
     ("elman", "gpu", 3, 8, jnp.float32, "auto", False, "autodiff"),
     ("elman", "tpu", 3, 8, jnp.float32, "auto", True, "bptt"),
     ("lstm", "cpu", 3, 8, jnp.float32, "auto", True, "bptt"),
     ("elman", "cpu", 3, 8, jnp.bfloat16, "auto", True, "bptt"),
     ("lstm", "cpu", 3, 8, jnp.bfloat16, "auto", True, "bptt"),
     ("lstm", "cpu", 1, 8, jnp.float32, "auto", True, "autodiff"),
     ("lstm", "gpu", 3, 64, jnp.float32, "auto", True, "fused"),
     ("lstm", "gpu", 3, 100, jnp.float32, "auto", True, "autodiff"),
     ("gru", "gpu", 3, 65, jnp.float32, "auto", True, "autodiff"),
     ("gru", "cpu", 3, 8, jnp.float32, "auto", True, "autodiff"),
     ("gru", "gpu", 1, 32, jnp.float32, "auto", True, "fused")],
)  # fmt: skip
def test_fast_backward_takes_what_was_measured_fastest(
    monkeypatch, cell_name, backend, batch, hidden, dtype, projections, plain, want
):
    """backward="fast" resolves to the fused kernels on a GPU in float32 at a padded H <= 128 for Elman and <= 64 for
    the gated cells, to the hand-derived
    custom VJP for Elman (but a single sequence on a GPU) and for the LSTM on a CPU with B > 1, else to autodiff;
    remat or mixed precision (not ``plain``) always to autodiff; bfloat16 parameters by the same rule."""
    from rnn_jax.unroll import _fast_backward

    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert _fast_backward(cells.get(cell_name), plain, projections, batch, hidden, dtype) == want


def test_fast_backward_leaves_the_fused_kernels_where_pallas_has_no_triton(monkeypatch):
    from rnn_jax import fused
    from rnn_jax.unroll import _fast_backward

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(fused, "triton_available", lambda: False)
    assert _fast_backward(rj.elman, True, "auto", 3, 8, jnp.float32) == "bptt"
    assert _fast_backward(rj.gru, True, "auto", 3, 8, jnp.float32) == "autodiff"


@pytest.mark.parametrize(
    ("cell_name", "backend", "batch", "runs"),
    [("elman", "cpu", 1, "bptt"), ("lstm", "cpu", 3, "bptt"), ("lstm", "cpu", 1, None), ("gru", "cpu", 3, None),
     ("elman", "gpu", 1, "fused"),  # one faked-GPU case here, the gated cells (5-8 s each) in the slow stage
     pytest.param("lstm", "gpu", 3, "fused", marks=pytest.mark.slow),
     pytest.param("gru", "gpu", 3, "fused", marks=pytest.mark.slow)],
)  # fmt: skip
def test_fast_backward_runs_what_it_resolves_to(monkeypatch, cell_name, backend, batch, runs):
    """The unroll of backward="fast" calls the custom VJP (`bptt.elman_scan`, `bptt.lstm_scan`) or the fused unroll
    it resolved to (None: neither, autodiff). A GPU is faked; the kernels then run in Pallas's interpreter."""
    from rnn_jax import bptt, fused

    calls = []
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(fused, "compiled", lambda: False)
    for name, original in [("elman_scan", bptt_elman_scan), ("lstm_scan", bptt_lstm_scan)]:
        monkeypatch.setattr(bptt, name, lambda *args, original=original: calls.append("bptt") or original(*args))
    cell = cells.get(cell_name)
    original = fused.SCANS[cell]
    monkeypatch.setitem(fused.SCANS, cell, lambda *args: calls.append("fused") or original(*args))
    params = cell.init(jax.random.key(0), D, H, O)
    xs = jnp.ones((T, batch, D), jnp.float32)
    grads = jax.grad(lambda p: jnp.sum(rj.unroll(p, xs, backward="fast", cell=cell).outputs))(params)
    assert calls == ([] if runs is None else [runs])
    chex.assert_tree_all_finite(grads)


@pytest.mark.parametrize(("backend", "unroll", "reverse"), [("cpu", 1, 2), ("cpu", 3, 3), ("gpu", 1, 1)])
def test_cpu_fast_path_unrolls_its_reverse_scan_by_two(monkeypatch, backend, unroll, reverse):
    """On a CPU the Elman custom VJP's reverse scan is unrolled by `bptt.CPU_REVERSE_UNROLL` unless the caller chose
    an unroll; its forward scan keeps the caller's. (Its values are the fast-path tests' business: unroll 1 there
    runs this reverse scan.)"""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    params = rj.elman.init(jax.random.key(0), D, H, O)
    xs = jnp.ones((T, 2, D), jnp.float32)
    grad = jax.grad(lambda p: jnp.sum(rj.unroll(p, xs, backward="bptt", unroll=unroll).outputs))

    def scans(jaxpr):  # (reverse, unroll) of every scan, nested jaxprs included
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                yield eqn.params["reverse"], eqn.params["unroll"]
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", value)
                if hasattr(inner, "eqns"):
                    yield from scans(inner)

    found = set(scans(jax.make_jaxpr(grad)(params).jaxpr))
    assert found == {(False, unroll), (True, reverse)}


def test_the_gpu_choices_give_the_autodiff_gradients(monkeypatch, x64):
    """What a GPU runs for the Elman fast path (the hoisted forward pass, the custom VJP with its weight gradients as
    single products after the reverse scan) equals autodiff through the in-step scan, on any backend: the backend
    is faked, float64 to 1e-10 relative, with lengths and an initial state."""
    cell, params, xs, targets = _cell_setup("elman", jnp.float64)
    lengths = jnp.array([T, 3, 0], jnp.int32)
    s0 = 0.3 * jnp.cos(jnp.arange(B * H, dtype=jnp.float64)).reshape(B, H)

    def loss(p, x, s, backward, projections):
        run = rj.unroll(p, x, lengths=lengths, initial_state=s, backward=backward, projections=projections)
        return jnp.sum(jnp.square(run.outputs - targets)) + jnp.sum(run.final_state**3) + jnp.sum(jnp.cos(run.states))

    want = jax.grad(loss, argnums=(0, 1, 2))(params, xs, s0, "autodiff", "in_step")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    got = jax.grad(loss, argnums=(0, 1, 2))(params, xs, s0, "fast", "auto")
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10 * max(float(np.max(np.abs(w))), 1.0))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU form of bfloat16 scans")
@pytest.mark.parametrize("reverse", [False, True])
def test_lax_scan_is_jax_lax_scan_with_bfloat16_off_the_boundary_on_a_cpu(key, reverse):
    """`unroll.lax_scan` returns what `jax.lax.scan` does, bit for bit and in the same dtypes (forward, reversed,
    and with no inputs), while on a CPU no bfloat16 [T, ...] array is stacked or saved for the backward pass;
    its gradient agrees within bfloat16's rounding."""
    w = jax.random.normal(key, (4, 4), jnp.bfloat16)
    xs = {"x": jax.random.normal(jax.random.key(1), (9, 2, 4), jnp.bfloat16), "t": jnp.arange(9, dtype=jnp.int32)}

    def step(carry, x):
        s, count = carry
        s = jnp.tanh(s @ w + (x["x"] if x is not None else 0.5))
        return (s, count + 1), (s, s.astype(jnp.float32) * 2, count)

    def run(scan, w_scale):
        def scaled(carry, x):
            return step((carry[0] * w_scale, carry[1]), x)

        init = (jnp.ones((2, 4), jnp.bfloat16), 0)  # a Python number in the carry, as jax.lax.scan allows
        with_inputs = scan(scaled, init, xs, reverse=reverse)
        without = scan(scaled, init, None, length=5, reverse=reverse)
        return with_inputs, without

    def loss(scan, w_scale):
        (_, (states, _, _)), _ = run(scan, w_scale)
        return jnp.sum(states.astype(jnp.float32))

    scale = jnp.bfloat16(0.9)

    def stacked(scan):
        return scan_stacked_dtypes(jax.make_jaxpr(jax.grad(lambda a: loss(scan, a)))(scale).jaxpr)

    plain = jax.lax.scan
    assert jnp.dtype(jnp.bfloat16) not in stacked(lax_scan)
    assert jnp.dtype(jnp.bfloat16) in stacked(plain)
    got, want = run(lax_scan, scale), run(plain, scale)
    chex.assert_trees_all_equal(got, want)
    chex.assert_trees_all_equal_dtypes(got, want)
    g, g_want = jax.grad(lambda a: loss(lax_scan, a))(scale), jax.grad(lambda a: loss(plain, a))(scale)
    assert g.dtype == g_want.dtype
    np.testing.assert_allclose(np.float32(g), np.float32(g_want), rtol=2e-2)
