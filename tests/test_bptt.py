"""The hand-derived BPTT, its custom VJP, the per-lag terms and truncated BPTT, against independent oracles.

Property-based (hypothesis) over random sizes, lengths, activations, masks and losses, in float64.
"""

from __future__ import annotations

import functools
import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnn_jax as rj
from rnn_jax import activations, bptt
from tests.jaxprs import scan_stacked_dtypes
from tests.stages import slow_unless

SETTINGS = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def problems(draw, stream=False):
    d, h, o = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 3))
    t, b = draw(st.integers(1, 7)), draw(st.integers(1, 3))
    activation = draw(st.sampled_from(["tanh", "sigmoid", "relu", "identity"]))
    loss = draw(st.sampled_from(["squared_error", "cross_entropy"]))
    reduction = draw(st.sampled_from(["sum", "mean"]))
    lengths = None if stream or draw(st.booleans()) else draw(st.lists(st.integers(0, t), min_size=b, max_size=b))
    seed = draw(st.integers(0, 2**16))
    return d, h, o, t, b, activation, loss, reduction, lengths, seed


def _make(problem):
    d, h, o, t, b, activation, loss, reduction, lengths, seed = problem
    keys = jax.random.split(jax.random.key(seed), 5)
    params = rj.elman.init(keys[0], d, h, o, dtype=jnp.float64)
    params = params._replace(
        b_s=0.1 * jax.random.normal(keys[1], (h,), jnp.float64), b_y=0.1 * jax.random.normal(keys[2], (o,), jnp.float64)
    )
    xs = jax.random.normal(keys[3], (t, b, d), jnp.float64)
    if loss == "cross_entropy":
        targets = jax.random.randint(keys[4], (t, b), 0, o)
    else:
        targets = jax.random.normal(keys[4], (t, b, o), jnp.float64)
    lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    return params, xs, targets, lengths, activation, loss, reduction


def _autodiff(params, xs, targets, lengths, activation, loss, reduction, backward="autodiff"):
    """The loss and its gradient through `rj.unroll`, compiled: one compile per drawn shape takes a third of the time
    of running the backward pass op by op."""

    def f(p, xs, targets, lengths):
        mask = None if lengths is None else rj.sequence_mask(lengths, xs.shape[0])
        out = rj.unroll(p, xs, activation=activation, lengths=lengths, backward=backward).outputs
        return rj.losses.by_name(loss, out, targets, mask, reduction)

    return jax.jit(jax.value_and_grad(f))(params, xs, targets, lengths)


@SETTINGS
@given(problems())
def test_hand_bptt_equals_jax_grad(x64, problem):
    params, xs, targets, lengths, activation, loss, reduction = _make(problem)
    value, reference = _autodiff(params, xs, targets, lengths, activation, loss, reduction)
    by_hand_value, by_hand = jax.jit(
        functools.partial(bptt.loss_and_gradients, loss=loss, reduction=reduction, activation=activation)
    )(params, xs, targets, lengths=lengths)
    np.testing.assert_allclose(by_hand_value, value, rtol=1e-12)
    chex.assert_trees_all_close(by_hand, reference, rtol=1e-10, atol=1e-13)


@SETTINGS
@given(problems())
def test_custom_vjp_path_equals_autodiff(x64, problem):
    params, xs, targets, lengths, activation, loss, reduction = _make(problem)
    chex.assert_trees_all_close(
        _autodiff(params, xs, targets, lengths, activation, loss, reduction, backward="bptt"),
        _autodiff(params, xs, targets, lengths, activation, loss, reduction),
        rtol=1e-10,
        atol=1e-13,
    )


def test_custom_vjp_gives_input_and_initial_state_gradients(key, x64):
    params = rj.elman.init(key, 3, 4, 2, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (5, 2, 3), jnp.float64)
    s0 = 0.3 * jnp.ones((2, 4), jnp.float64)
    lengths = jnp.array([5, 2], jnp.int32)

    def f(xs, s0, backward):
        run = rj.unroll(params, xs, initial_state=s0, lengths=lengths, backward=backward, activation=jnp.sin)
        # outputs, all states and the final state all feed the loss
        return jnp.sum(run.outputs**2) + jnp.sum(jnp.cos(run.states)) + jnp.sum(run.final_state**3)

    chex.assert_trees_all_close(
        jax.grad(f, argnums=(0, 1))(xs, s0, "bptt"), jax.grad(f, argnums=(0, 1))(xs, s0, "autodiff"), rtol=1e-10
    )


@pytest.mark.parametrize("min_batch", [0, 10**9], ids=["summed-in-scan", "summed-after"])
@pytest.mark.parametrize("num_steps", [6, 0])
@pytest.mark.parametrize("with_lengths", slow_unless([True], [False, True]))
@pytest.mark.parametrize("activation", slow_unless(["tanh"], ["tanh", jnp.sin], ids=["tanh", "callable"]))
@pytest.mark.parametrize(
    ("cell_name", "backward_name"), [("elman", "concatenated_backward"), ("lstm", "lstm_backward")]
)
def test_both_cpu_forms_of_the_reverse_scan_equal_autodiff(monkeypatch, x64, min_batch, num_steps, with_lengths,
                                                           activation, cell_name, backward_name):  # fmt: skip
    """On a CPU the Elman and LSTM custom VJPs sum the weight gradients inside their reverse scans from
    `bptt.CPU_SUM_IN_SCAN_MIN_BATCH` batch rows up, after them below: forced each way, every gradient (weights,
    inputs, initial state) equals autodiff's in float64, with outputs, states and the final state all in the loss,
    with and without lengths, for T = 0 too."""
    monkeypatch.setattr(bptt, "CPU_SUM_IN_SCAN_MIN_BATCH", min_batch)
    calls = []
    original = getattr(bptt, backward_name)
    monkeypatch.setattr(bptt, backward_name, lambda *a, **k: calls.append(k) or original(*a, **k))
    cell = rj.cells.get(cell_name)
    keys = jax.random.split(jax.random.key(3), 4)
    params = cell.init(keys[0], 3, 4, 2, dtype=jnp.float64)
    xs = jax.random.normal(keys[1], (num_steps, 3, 3), jnp.float64)
    s0 = 0.3 * jax.random.normal(keys[2], (3, 4), jnp.float64)
    if cell is rj.lstm:
        s0 = rj.lstm.LSTMState(s0, 0.5 * jax.random.normal(keys[3], (3, 4), jnp.float64))
    lengths = jnp.array([num_steps, num_steps // 3, 0], jnp.int32) if with_lengths else None

    def f(params, xs, s0, backward):
        run = rj.unroll(params, xs, initial_state=s0, lengths=lengths, backward=backward, activation=activation,
                        cell=cell)  # fmt: skip
        final = sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree.leaves(run.final_state))
        return jnp.sum(jnp.sin(run.outputs)) + sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(run.states)) + final

    got = jax.grad(f, argnums=(0, 1, 2))(params, xs, s0, "bptt")
    want = jax.grad(f, argnums=(0, 1, 2))(params, xs, s0, "autodiff")
    if jax.default_backend() == "cpu":  # elsewhere the custom VJPs sum inside the scan (Elman: `bptt.backward`)
        assert [k["sum_in_scan"] for k in calls] == [min_batch == 0]
    chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("with_lengths", slow_unless([False], [False, True]))
@pytest.mark.parametrize("zero_pass", [0, 10**9], ids=["zero-pass", "no-pass"])
@pytest.mark.parametrize("min_batch", [0, 10**9], ids=["summed-in-scan", "summed-after"])
@pytest.mark.parametrize("reads", ["outputs", "states", "final_state"])
def test_errors_of_what_the_loss_does_not_read_are_left_out(monkeypatch, x64, reads, min_batch, zero_pass,
                                                            with_lengths):  # fmt: skip
    """The Elman custom VJP gets symbolic zeros for the outputs its loss does not read (in a train step: the states
    and the final state) and gives the backward pass None for them, so no zero error is added in its reverse scan;
    the gradients still equal autodiff's in float64, the weight sums inside or after the scan, with or without the
    zero pass-through of larger steps (`bptt.CPU_ZERO_PASS_MIN_WORK`), with and without lengths."""
    monkeypatch.setattr(bptt, "CPU_SUM_IN_SCAN_MIN_BATCH", min_batch)
    monkeypatch.setattr(bptt, "CPU_ZERO_PASS_MIN_WORK", zero_pass)
    calls = []
    original = bptt.concatenated_backward
    monkeypatch.setattr(bptt, "concatenated_backward", lambda *a, **k: calls.append(a) or original(*a, **k))
    keys = jax.random.split(jax.random.key(5), 3)
    params = rj.elman.init(keys[0], 3, 4, 2, dtype=jnp.float64)
    xs = jax.random.normal(keys[1], (6, 3, 3), jnp.float64)
    s0 = 0.3 * jax.random.normal(keys[2], (3, 4), jnp.float64)
    lengths = jnp.array([6, 2, 0], jnp.int32) if with_lengths else None

    def f(params, xs, s0, backward):
        run = rj.unroll(params, xs, initial_state=s0, lengths=lengths, backward=backward)
        return jnp.sum(jnp.sin(getattr(run, reads)))

    got = jax.grad(f, argnums=(0, 1, 2))(params, xs, s0, "bptt")
    want = jax.grad(f, argnums=(0, 1, 2))(params, xs, s0, "autodiff")
    chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-13)
    if jax.default_backend() == "cpu":  # elsewhere `bptt.backward`, which takes None for them as well
        ((*_, output_error, state_error, final_state_error, _, _),) = calls
        assert (state_error is None, final_state_error is None) == (reads != "states", reads != "final_state")
        assert output_error is not None  # instantiated where the loss reads only the final state


def test_cpu_weight_sums_threshold_is_lower_in_a_split_step(monkeypatch):
    """On a CPU the sums go inside the reverse scan from `CPU_SUM_IN_SCAN_MIN_BATCH` rows on one device and from
    `CPU_SUM_IN_SCAN_MIN_BATCH_SPLIT` rows per device in a step split over several (the split seen through
    `_split_devices`, faked here; tests/test_distributed.py checks it inside a real shard_map); off a CPU always."""
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    one, split = bptt.CPU_SUM_IN_SCAN_MIN_BATCH, bptt.CPU_SUM_IN_SCAN_MIN_BATCH_SPLIT
    assert split < one
    assert bptt._split_devices() == 1  # outside a shard_map
    for devices, threshold in ((1, one), (2, split), (4, split)):
        monkeypatch.setattr(bptt, "_split_devices", lambda devices=devices: devices)
        assert [bptt._sums_in_scan(rows) for rows in (threshold - 1, threshold)] == [False, True]
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert bptt._sums_in_scan(1)


@pytest.mark.parametrize("loss", ["squared_error", "cross_entropy"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_hand_bptt_with_a_gapped_mask_and_an_initial_state_equals_jax_grad(x64, loss, reduction):
    """The drawn problems above start from s_0 = 0 and mask only the ends of sequences (lengths), where a frozen
    step's pass-through error and the first step's s_0 term vanish; here the mask has gaps inside the sequences,
    s_0 is not zero and O = 3 (the mean divides by the valid steps and O). The hand-derived gradients and the
    per-lag terms' sum equal `jax.grad` through `rj.unroll` in float64; the per-lag terms vanish for lags past the
    start (k > t), and lag t, s_0's term, does not."""
    keys = jax.random.split(jax.random.key(11), 4)
    t, b, d, h, o = 6, 3, 2, 4, 3
    params = rj.elman.init(keys[0], d, h, o, dtype=jnp.float64)
    xs = jax.random.normal(keys[1], (t, b, d), jnp.float64)
    s0 = 0.5 * jax.random.normal(keys[2], (b, h), jnp.float64)
    if loss == "cross_entropy":
        targets = jax.random.randint(keys[3], (t, b), 0, o)
    else:
        targets = jax.random.normal(keys[3], (t, b, o), jnp.float64)
    mask = jnp.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 0, 0]], bool)  # gaps in every row

    def f(p):
        out = rj.unroll(p, xs, initial_state=s0, mask=mask).outputs
        return rj.losses.by_name(loss, out, targets, mask, reduction)

    value, reference = jax.value_and_grad(f)(params)
    options = dict(loss=loss, reduction=reduction, initial_state=s0, mask=mask)
    by_hand_value, by_hand = bptt.loss_and_gradients(params, xs, targets, **options)
    np.testing.assert_allclose(by_hand_value, value, rtol=1e-12)
    chex.assert_trees_all_close(by_hand, reference, rtol=1e-10, atol=1e-13)
    terms = np.asarray(bptt.per_lag_contributions(params, xs, targets, **options))
    np.testing.assert_allclose(terms.sum(axis=(0, 1)), reference.w_s, rtol=1e-9, atol=1e-13)
    np.testing.assert_array_equal(terms[np.triu(np.ones((t, t), bool), k=1)], 0.0)
    assert np.abs(np.diagonal(terms)).max() > 1e-3  # [t, t]: s_0^T times the error reaching step 0


@pytest.mark.slow
@SETTINGS
@given(problems())
def test_per_lag_contributions_sum_to_the_total(x64, problem):
    params, xs, targets, lengths, activation, loss, reduction = _make(problem)
    terms = bptt.per_lag_contributions(
        params, xs, targets, loss=loss, reduction=reduction, activation=activation, lengths=lengths
    )
    t, h = xs.shape[0], params.w_s.shape[0]
    assert terms.shape == (t, t, h, h)
    _, reference = _autodiff(params, xs, targets, lengths, activation, loss, reduction)
    np.testing.assert_allclose(terms.sum(axis=(0, 1)), reference.w_s, rtol=1e-9, atol=1e-13)
    # no lag reaches before the start: the term [t, k] vanishes for k > t; lag t is s_0's term, zero here (s_0 = 0)
    upper = np.triu(np.ones((t, t), bool), k=0)  # k >= t  <=>  index [t, k] on or above the diagonal
    np.testing.assert_array_equal(np.asarray(terms)[upper], 0.0)


def test_per_lag_term_is_the_chain_rule_product(key, x64):
    """For a linear net (identity phi) the lag-k term of the loss at t is s_{t-k-1}^T g_t W_y^T (W_s^T)^k."""
    params = rj.elman.init(key, 2, 3, 2, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (5, 1, 2), jnp.float64)
    targets = jax.random.normal(jax.random.key(2), (5, 1, 2), jnp.float64)
    terms = bptt.per_lag_contributions(params, xs, targets, activation="identity", reduction="sum")
    run = rj.unroll(params, xs, activation="identity")
    s_prev = np.concatenate([np.zeros((1, 1, 3)), np.asarray(run.states[:-1])])
    g = 2 * (np.asarray(run.outputs) - np.asarray(targets))
    w_s, w_y = np.asarray(params.w_s), np.asarray(params.w_y)
    t, k = 4, 2
    want = s_prev[t - k].T @ (g[t] @ w_y.T @ np.linalg.matrix_power(w_s.T, k))
    np.testing.assert_allclose(terms[t, k], want, rtol=1e-12)


@pytest.mark.slow
@SETTINGS
@given(problems(stream=True), st.integers(1, 3))
def test_tbptt_with_k2_at_least_T_equals_full_bptt(x64, problem, k1):
    params, xs, targets, _, activation, loss, _ = _make(problem)
    t = xs.shape[0] - xs.shape[0] % k1
    if t == 0:
        return
    xs, targets = xs[:t], targets[:t]
    _, full = _autodiff(params, xs, targets, None, activation, loss, "sum")
    for backward in ("autodiff", "bptt"):
        _, grads, _ = bptt.tbptt_gradients(
            params, xs, targets, k1, t, loss=loss, reduction="sum", activation=activation, backward=backward
        )
        chex.assert_trees_all_close(jax.tree.map(lambda g: g.sum(0), grads), full, rtol=1e-10, atol=1e-13)


def test_tbptt_window_carry_is_explicit(key, x64):
    """The state carried out of a window is the full-stream state entering the next window (the forward pass
    is not truncated): window u + 1 starts at stream step (u + 1) k1 - (k2 - k1)."""
    params = rj.elman.init(key, 1, 4, 2, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (12, 2, 1), jnp.float64)
    targets = jax.random.randint(jax.random.key(2), (12, 2), 0, 2)
    k1, k2 = 3, 5
    w = bptt.windows(xs, targets, k1, k2)
    assert w.inputs.shape == (4, 5, 2, 1)
    full = rj.unroll(params, xs)
    state = jnp.zeros((2, 4), jnp.float64)
    for u in range(4):
        _, state = bptt.truncated_loss(params, state, *(a[u] for a in w), k1=k1, loss="cross_entropy")
        next_start = (u + 1) * k1 - (k2 - k1)
        chex.assert_trees_all_close(state, full.states[next_start - 1], rtol=1e-12)
    # window 0 is front-padded: k2 - k1 = 2 invalid steps, then the first k1 = 3 scored steps
    np.testing.assert_array_equal(w.valid[0, :, 0], [False, False, True, True, True])
    np.testing.assert_array_equal(w.scored[1, :, 0], [False, False, True, True, True])
    np.testing.assert_array_equal(w.inputs[1, :, :, 0], xs[1:6, :, 0])


def test_truncated_gradient_differs_from_the_full_one(key, x64):
    """Truncation is real: with k2 < T the truncated gradient is not the full one (so its FD check means something)."""
    params = rj.elman.init(key, 2, 4, 2, dtype=jnp.float64, recurrent_scale=1.2)
    xs = jax.random.normal(jax.random.key(1), (8, 2, 2), jnp.float64)
    targets = jax.random.normal(jax.random.key(2), (8, 2, 2), jnp.float64)
    _, full = _autodiff(params, xs, targets, None, "tanh", "squared_error", "sum")
    _, grads, _ = bptt.tbptt_gradients(params, xs, targets, 2, 2, reduction="sum")
    assert not np.allclose(grads.w_s.sum(0), full.w_s, rtol=1e-3)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU form of bfloat16 scans")
def test_bfloat16_tbptt_gradients_stack_float32_on_a_cpu_with_the_same_values(key, monkeypatch):
    """On a CPU the loop over TBPTT windows of a bfloat16 network stacks its per-window gradients in float32
    (`unroll.lax_scan`; stacking bfloat16 there is O(U^2) in the U windows) and returns them in bfloat16. The
    losses and the carried state equal those of the bfloat16 loops bit for bit; the gradients agree within
    bfloat16's rounding (the windows' own scans sum the state's cotangents in float32)."""
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), rj.elman.init(key, 2, 4, 2))
    xs = jax.random.normal(jax.random.key(1), (8, 2, 2), jnp.bfloat16)
    targets = jax.random.normal(jax.random.key(2), (8, 2, 2), jnp.bfloat16)

    def run():  # new functions each time: make_jaxpr and jit cache their traces by function, not by the flag
        stacked = scan_stacked_dtypes(jax.make_jaxpr(lambda: bptt.tbptt_gradients(params, xs, targets, 2, 3))().jaxpr)
        return stacked, jax.jit(lambda: bptt.tbptt_gradients(params, xs, targets, 2, 3))()

    stacked, got = run()
    assert jnp.dtype(jnp.bfloat16) not in stacked
    monkeypatch.setattr(importlib.import_module("rnn_jax.unroll"), "CPU_WIDENED_BFLOAT16_SCANS", False)
    stacked, want = run()
    assert jnp.dtype(jnp.bfloat16) in stacked
    chex.assert_trees_all_equal_dtypes(got, want)
    (losses, grads, final), (want_losses, want_grads, want_final) = got, want
    chex.assert_trees_all_equal((losses, final), (want_losses, want_final))
    scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want_grads))
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        assert float(jnp.max(jnp.abs(g.astype(jnp.float32) - w.astype(jnp.float32)))) <= 1e-2 * scale


@pytest.mark.parametrize(("k1", "k2", "message"), [(3, 2, r"k1 <= k2"), (0, 2, r"k1: expected a positive integer")])
def test_bad_truncation_gets_a_clear_error(k1, k2, message):
    with pytest.raises(ValueError, match=message):
        bptt.check_truncation(k1, k2)


def test_stream_length_must_be_a_multiple_of_k1():
    with pytest.raises(ValueError, match=r"stream length N = 7 must be a multiple of k1 = 3"):
        bptt.windows(jnp.zeros((7, 1, 1)), jnp.zeros((7, 1, 1)), 3, 3)


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (jnp.zeros((6, 2, 1)), r"targets: expected the stream length N = 9 on axis 0, got 6 \(shape \(6, 2, 1\)\)"),
        (jnp.zeros((9, 3, 1)), r"targets: expected the batch size B = 2 on axis 1, got 3 \(shape \(9, 3, 1\)\)"),
        (jnp.zeros((9, 2), jnp.int32)[None], r"targets: expected the stream length N = 9 on axis 0, got 1"),
        (jnp.zeros((9,)), r"targets: expected rank >= 2 \[N, B, ...\], got rank 1 with shape \(9,\)"),
    ],
    ids=["shorter", "other-batch", "leading-axis", "rank-1"],
)
def test_windows_refuse_targets_of_another_stream_length_or_batch(targets, message):
    """Shorter targets were padded and sliced as if they fitted (windows past their end silently repeated the
    clamped last slice); another batch made windows whose targets did not belong to the inputs."""
    with pytest.raises(ValueError, match=message):
        bptt.windows(jnp.zeros((9, 2, 1)), targets, 3, 3)


@pytest.mark.parametrize(
    ("targets", "options", "message"),
    [
        (jnp.zeros((5, 4)), {}, r"targets: expected the outputs' shape \(5, 4, 3\), got \(5, 4\)"),  # broadcasting
        (
            jnp.zeros((5, 4, 3)),
            {"loss_mask": jnp.ones((4, 5), bool)},
            r"xs, loss_mask: xs of shape \(5, 4, 2\) .* loss_mask should have \[T, B, ...\] = \(5, 4, ...\); it has "
            r"shape \(4, 5\)",
        ),  # in a mul; transposed, it may be xs that is batch-first
        (
            jnp.zeros((5, 4, 3)),
            {"loss_mask": jnp.ones((5, 3), bool)},
            r"loss_mask: expected shape \(5, 4\) \(the outputs' shape without O\), got \(5, 3\)",
        ),
        (
            jnp.zeros((5, 4, 3)),
            {"loss": "cross_entropy"},
            r"targets: expected shape \(5, 4\) \(the logits' without O\)",
        ),
        (
            jnp.full((5, 4), 3),
            {"loss": "cross_entropy"},
            r"targets: expected class indices in \[0, O=3\), got .*\[3, 3\]",
        ),
        (
            jnp.zeros((5, 4), jnp.int32).at[3:].set(-1),
            {"loss": "cross_entropy", "loss_mask": jnp.ones((5, 4), bool)},
            r"targets: expected class indices in \[0, O=3\) where the loss_mask holds, got values in \[-1, 0\]",
        ),
    ],
)
def test_hand_bptt_checks_targets_and_loss_mask_by_name_before_the_backward_pass(key, targets, options, message):
    params = rj.elman.init(key, 2, 8, 3)
    for run in (bptt.loss_and_gradients, bptt.per_lag_contributions):
        with pytest.raises(ValueError, match=message):
            run(params, jnp.ones((5, 4, 2)), targets, **options)


def test_hand_bptt_lets_padding_hold_any_label(key):
    params, xs, lengths = rj.elman.init(key, 2, 8, 3), jnp.ones((5, 4, 2)), jnp.array([2, 5, 0, 3], jnp.int32)
    labels = jnp.where(rj.sequence_mask(lengths, 5), 1, -1)  # -1 past each end: never looked up
    value, _ = bptt.loss_and_gradients(params, xs, labels, loss="cross_entropy", lengths=lengths)
    want, _ = bptt.loss_and_gradients(params, xs, jnp.ones_like(labels), loss="cross_entropy", lengths=lengths)
    assert float(value) == float(want)


@pytest.mark.parametrize(
    ("targets", "loss", "message"),
    [
        (
            jnp.full((12, 4), 7),
            "cross_entropy",
            r"targets: expected class indices in \[0, O=3\), got values in \[7, 7\]",
        ),
        (jnp.full((12, 4), -1), "cross_entropy", r"targets: expected class indices in \[0, O=3\), got .*\[-1, -1\]"),
        (jnp.zeros((9, 4), jnp.int32), "cross_entropy", r"targets: expected shape \(12, 4\) \(the logits' without O\)"),
        (
            jnp.zeros((15, 4, 3)),
            "squared_error",
            r"targets: expected the outputs' shape \(12, 4, 3\), got \(15, 4, 3\)",
        ),
    ],
)
def test_tbptt_checks_the_streams_targets_before_the_windows_trace_them(key, targets, loss, message):
    """Inside the scan over windows the labels are traced, so out of range they gave NaN losses (7) or another
    class's loss (-1) silently; targets of another length were padded and sliced as if they fitted."""
    params = rj.elman.init(key, 2, 8, 3)
    with pytest.raises(ValueError, match=message):
        bptt.tbptt_gradients(params, jnp.ones((12, 4, 2)), targets, 3, 4, loss=loss)


@pytest.mark.parametrize(("k1", "message"), [(0, r"k1: expected a positive integer, got 0"),
                                             (-1, r"k1: expected a positive integer, got -1"),
                                             (5, r"needs k1 <= k2 .*got 5 > 4")])  # fmt: skip
def test_truncated_loss_refuses_k1_outside_the_window(key, k1, message):
    """k1 picks the carried state, states[k1 - 1]: k1 = 0 carried the window's last state, -1 the one before it,
    and k1 = 5 > k2 = 4 the last (a clamped index), all silently."""
    params, valid = rj.elman.init(key, 2, 8, 3), jnp.ones((4, 1), bool)
    with pytest.raises(ValueError, match=message):
        bptt.truncated_loss(params, jnp.zeros((1, 8)), jnp.ones((4, 1, 2)), jnp.zeros((4, 1, 3)), valid, valid, k1=k1)


@pytest.mark.parametrize("name", ["lstm", "gru", "elman"])
def test_tbptt_takes_a_cell_by_name_as_truncated_loss_does(key, name):
    """A name was used as the module: 'str' object has no attribute 'initial_state'."""
    module = rj.cells.get(name)
    params, xs, targets = module.init(key, 3, 4, 2), jnp.ones((4, 2, 3)), jnp.zeros((4, 2, 2))
    chex.assert_trees_all_equal(
        bptt.tbptt_gradients(params, xs, targets, 2, 2, cell=name),
        bptt.tbptt_gradients(params, xs, targets, 2, 2, cell=module),
    )
    with pytest.raises(
        ValueError, match=r"cell: expected one of \['elman', 'gru', 'lstm'\] or a cell module, got 'mgu'"
    ):
        bptt.tbptt_gradients(params, xs, targets, 2, 2, cell="mgu")


@pytest.mark.parametrize("run", ["loss_and_gradients", "per_lag_contributions", "tbptt_gradients", "windows"])
@pytest.mark.parametrize("batch_first", ["xs", "targets"])
def test_batch_first_data_is_named_on_both_arguments(key, run, batch_first):
    """xs [B, T, D] against targets [T, B, O] (or the other way round) blamed the targets' shape alone."""
    params, xs, targets = rj.elman.init(key, 3, 5, 2), jnp.ones((4, 2, 3)), jnp.zeros((4, 2, 2))
    if batch_first == "xs":
        xs = jnp.swapaxes(xs, 0, 1)
    else:
        targets = jnp.swapaxes(targets, 0, 1)
    name = "inputs" if run in ("tbptt_gradients", "windows") else "xs"
    args = (xs, targets, 2, 2) if name == "inputs" else (xs, targets)
    args = args if run == "windows" else (params, *args)
    message = rf"{name}, targets: {name} of shape \({xs.shape[0]}, {xs.shape[1]}, 3\) reads as time-major \[T, B, D\]"
    with pytest.raises(ValueError, match=message + r".*one of them is batch-first.*jnp.swapaxes"):
        getattr(bptt, run)(*args)


def test_batch_first_lengths_and_loss_mask_are_named_with_xs(key):
    params, xs = rj.elman.init(key, 3, 5, 2), jnp.ones((2, 4, 3))  # batch-first: B = 2, T = 4
    targets = jnp.zeros((2, 4, 2))
    with pytest.raises(
        ValueError, match=r"xs, lengths: .*lengths should have B = 4 rows on axis 0; it has shape \(2,\)"
    ):
        bptt.loss_and_gradients(params, xs, targets, lengths=jnp.array([4, 4], jnp.int32))
    with pytest.raises(ValueError, match=r"xs, loss_mask: .* it has shape \(4, 2\), leading axes \(4, 2\)"):
        bptt.loss_and_gradients(params, xs, targets, loss_mask=jnp.ones((4, 2), bool))


def test_low_level_helpers_name_what_does_not_fit(key):
    """backward with D = 5 inputs for D = 3 weights returned a [5, 5] w_x gradient, output_errors took labels >= O
    (a zero one-hot row), pad_stream with k1 > k2 was NumPy's "index can't contain negative values"."""
    params, xs = rj.elman.init(key, 3, 4, 2), jnp.ones((5, 2, 3))
    run = rj.unroll(params, xs)
    s0, g = jnp.zeros((2, 4)), jnp.ones((5, 2, 2))
    with pytest.raises(ValueError, match=r"xs: expected shape \(5, 2, 3\) \(T, B of states .*D = 3.*got \(5, 2, 5\)"):
        bptt.backward(params, jnp.ones((5, 2, 5)), s0, None, run.states, g)
    with pytest.raises(ValueError, match=r"output_error: expected shape \(5, 2, 2\) .*got \(2, 5, 2\)"):
        bptt.backward(params, xs, s0, None, run.states, jnp.swapaxes(g, 0, 1))
    with pytest.raises(ValueError, match=r"initial_state: expected shape \(2, 4\) .*got \(1, 4\)"):
        bptt.backward(params, xs, s0[:1], None, run.states, g)
    with pytest.raises(ValueError, match=r"targets: expected class indices in \[0, O=2\), got values in \[5, 5\]"):
        bptt.output_errors("cross_entropy", run.outputs, jnp.full((5, 2), 5), None)
    with pytest.raises(ValueError, match=r"targets: expected the outputs' shape \(5, 2, 2\), got \(5, 2\)"):
        bptt.output_errors("squared_error", run.outputs, jnp.zeros((5, 2)), None)
    with pytest.raises(ValueError, match=r"k1, k2: TBPTT\(k1, k2\) needs k1 <= k2 .* got 3 > 2"):
        bptt.pad_stream(xs, 3, 2)


def test_bptt_backward_is_elman_only(key):
    class NotElman:
        __name__ = "mgu"
        initial_state = staticmethod(rj.elman.initial_state)
        step = staticmethod(rj.elman.step)

    params = rj.elman.init(key, 2, 3, 1)
    with pytest.raises(ValueError, match=r"'bptt' is derived for the Elman, LSTM and GRU cells only, got cell mgu"):
        rj.unroll(params, jnp.zeros((3, 1, 2)), backward="bptt", cell=NotElman())
    with pytest.raises(ValueError, match=r"backward: expected 'autodiff', 'bptt', 'fused' or 'fast', got 'rtrl'"):
        rj.unroll(params, jnp.zeros((3, 1, 2)), backward="rtrl")


@pytest.mark.slow  # its gradients = autodiff's: the default stage's test_custom_vjp_path_equals_autodiff
def test_train_step_on_the_bptt_path_matches_autodiff(standard_promotion, monkeypatch):
    from rnn_jax import train
    from rnn_jax.config import Config, ModelConfig, RunConfig, TaskConfig

    def run(backward):
        config = Config(
            model=ModelConfig(hidden=6, backward=backward),
            task=TaskConfig(seq_len=8, batch_size=8, min_len=4),
            run=RunConfig(steps=30, eval_every=30, log_every=10, progress=False),
        )
        return train.train_and_evaluate(config)

    a, b = run("autodiff"), run("bptt")
    chex.assert_trees_all_close(a["params"], b["params"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a["final_eval"]["loss"], b["final_eval"]["loss"], rtol=1e-4)
    # and the bptt run really took the hand-derived path: a bug planted there changes its result
    monkeypatch.setattr(bptt, "activation_derivative", lambda act, pre, s: jnp.ones_like(s))
    planted = run("bptt")
    assert not np.allclose(planted["params"].w_s, b["params"].w_s, rtol=1e-3)


# ---------------------------------------------------------------- the LSTM and the GRU, by hand


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
@pytest.mark.parametrize(
    "activation",
    slow_unless(["tanh", jnp.sin], ["tanh", "sigmoid", "relu", "identity", jnp.sin],
                ids=["tanh", "sigmoid", "relu", "identity", "callable"]),
)  # fmt: skip
@pytest.mark.parametrize(
    ("with_lengths", "unroll_factor"),
    [pytest.param(False, 1, marks=pytest.mark.slow), pytest.param(True, 1, marks=pytest.mark.slow), (True, 3)],
)
def test_gated_bptt_equals_autodiff_float64(x64, cell_name, activation, with_lengths, unroll_factor):
    """The hand-derived LSTM and GRU backward passes (`bptt.lstm_scan`, `bptt.gru_scan`) give autodiff's gradients
    for the parameters, the inputs and the initial state (both parts of the LSTM's), for a loss that reads the
    outputs, the states and the final state (float64, relative 1e-10), with lengths (a full, a short and an empty
    sequence) and scan unroll factors, for every named activation and a callable (whose phi' comes from a JVP)."""
    cell = rj.cells.get(cell_name)
    T, B, D, H, O = 7, 3, 4, 5, 2
    k_p, k_x, k_d = jax.random.split(jax.random.key(7), 3)
    params = cell.init(k_p, D, H, O, dtype=jnp.float64)
    params = jax.tree.map(lambda p: p + 0.1 * jnp.sin(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape), params)
    xs = jax.random.normal(k_x, (T, B, D), jnp.float64)
    targets = jax.random.normal(k_d, (T, B, O), jnp.float64)
    h0 = 0.3 * jnp.cos(jnp.arange(B * H, dtype=jnp.float64)).reshape(B, H)
    s0 = cell.LSTMState(h0, -0.2 * jnp.ones((B, H))) if cell_name == "lstm" else h0
    lengths = jnp.array([T, 3, 0], jnp.int32) if with_lengths else None

    def loss(p, x, s, backward):
        run = rj.unroll(p, x, activation=activation, initial_state=s, lengths=lengths, cell=cell,
                        unroll=unroll_factor, backward=backward)  # fmt: skip
        reads = sum(jnp.sum(jnp.cos(h)) + 0.5 * jnp.sum(jnp.sin(h)) for h in jax.tree.leaves(run.states))
        final = sum((k + 2.0) * jnp.sum(f ** (k + 2)) for k, f in enumerate(jax.tree.leaves(run.final_state)))
        return jnp.sum(jnp.square(run.outputs - targets)) + reads + final

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    want, got = grad(params, xs, s0, "autodiff"), grad(params, xs, s0, "bptt")
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10 * max(float(np.max(np.abs(w))), 1.0))


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_gated_bptt_forward_alone_takes_the_auto_form_and_training_keeps_the_step(x64, monkeypatch, cell_name):
    """With few rows on a CPU, "auto" makes a gated cell's hand-derived unroll run its forward pass alone with the
    read-out hoisted (`hoisted_scan`, input in the step) and equal to the step's values (float64, with lengths),
    while the forward pass it differentiates stays in the step (its residuals are the step's pre-activations), so
    the gradients are those of autodiff."""
    import importlib

    module = importlib.import_module("rnn_jax.unroll")
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    calls = []
    real = module.hoisted_scan
    monkeypatch.setattr(module, "hoisted_scan", lambda *a, **k: calls.append(k) or real(*a, **k))
    cell = rj.cells.get(cell_name)
    params = cell.init(jax.random.key(1), 2, 3, 2, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(2), (5, 3, 2), jnp.float64)
    lengths = jnp.array([5, 2, 0], jnp.int32)

    def run(p, backward, projections="auto"):
        return rj.unroll(p, xs, cell=cell, lengths=lengths, backward=backward, projections=projections)

    got, want = run(params, "bptt"), run(params, "autodiff", "in_step")
    assert calls == [{"input_in_step": True}]
    chex.assert_trees_all_close(got, want, rtol=1e-12, atol=1e-14)

    def grad(backward):
        return jax.grad(lambda p: jnp.sum(jnp.sin(run(p, backward).outputs)))(params)

    want_grads = grad("autodiff")
    calls.clear()
    got_grads = grad("bptt")
    assert calls == []  # the bptt forward rule ran in the step
    chex.assert_trees_all_close(got_grads, want_grads, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_gated_bptt_fails_on_a_planted_error(x64, monkeypatch, cell_name):
    """The comparison above can fail: a dropped term in the hand-derived backward pass (phi' taken as 1) changes
    the gradients beyond its tolerance."""
    cell = rj.cells.get(cell_name)
    params = cell.init(jax.random.key(1), 2, 3, 1, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(2), (5, 2, 2), jnp.float64)

    def grad(backward):
        return jax.grad(lambda p: jnp.sum(jnp.square(rj.unroll(p, xs, cell=cell, backward=backward).outputs)))(params)

    want = grad("autodiff")
    monkeypatch.setattr(activations, "derivative", lambda act, pre, value: jnp.ones_like(value))
    got = grad("bptt")
    assert not np.allclose(got.w_s, want.w_s, rtol=1e-6)


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
@pytest.mark.parametrize("form", ["hoisted", "hoisted_readout"])
def test_gated_bptt_refuses_hoisted_projections(key, cell_name, form):
    params = rj.cells.get(cell_name).init(key, 2, 3, 1)
    with pytest.raises(ValueError, match=rf"projections: the {cell_name.upper()}'s hand-derived backward pass.*{form}"):
        rj.unroll(params, jnp.zeros((3, 2, 2)), cell=rj.cells.get(cell_name), backward="bptt", projections=form)
