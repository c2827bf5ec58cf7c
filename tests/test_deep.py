"""Deep, bidirectional and dropout networks (rnn_jax.deep) against plain per-sequence Python loops.

The oracle below runs each sequence on its own, in NumPy float64, reversing it by hand within its
length for the backward direction; it uses none of rnn_jax's step, scan, masking or reversal code.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax import cells, deep, gradcheck, train
from rnn_jax.config import Config, GradcheckConfig, ModelConfig, OptimConfig, RunConfig, TaskConfig
from rnn_jax.interop import saved
from rnn_jax.unroll import unroll
from tests.oracle import PHI, relative_error

CELLS = ["elman", "lstm", "gru"]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_transition(name, p, carry, x, activation="tanh", mask=None):
    """One sequence's state update in NumPy: ``carry`` [H] (LSTM: (h, c)), x [D], mask [H] on h_{t-1} in W_s."""
    phi = PHI[activation]
    h_prev = carry[0] if name == "lstm" else carry
    h_in = h_prev if mask is None else h_prev * mask
    if name == "elman":
        return phi(x @ p.w_x + h_in @ p.w_s + p.b_s)
    if name == "lstm":
        i, f, g, o = np.split(x @ p.w_x + h_in @ p.w_s + p.b_s, 4)
        c = _sigmoid(f) * carry[1] + _sigmoid(i) * phi(g)
        return (_sigmoid(o) * phi(c), c)
    a_r, a_z, a_n = np.split(x @ p.w_x + p.b_x, 3)
    u_r, u_z, u_n = np.split(h_in @ p.w_s + p.b_s, 3)
    r, z = _sigmoid(a_r + u_r), _sigmoid(a_z + u_z)
    return (1 - z) * phi(a_n + r * u_n) + z * h_prev


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def deep_oracle(name, params, xs, lengths, *, activation="tanh", residual=False, masks=None):
    """outputs [T, B, O] and top [T, B, dirs*H] of the deep network, one sequence at a time.

    ``masks[l][d]``: [B, H] recurrent dropout mask of layer l, direction d (None: no dropout).
    """
    params, xs = _np(params), np.asarray(xs, np.float64)
    num_steps, batch, _ = xs.shape
    outputs = np.zeros((num_steps, batch, params.w_y.shape[1]))
    top = np.zeros((num_steps, batch, params.w_y.shape[0]))
    for b in range(batch):
        n = int(lengths[b]) if lengths is not None else num_steps
        seq = xs[:n, b]
        for index, layer in enumerate(params.layers):
            parts = []
            for d, p in enumerate(x for x in layer if x is not None):
                hidden = p.w_s.shape[0]
                if params.initial is None:
                    carry = (np.zeros(hidden), np.zeros(hidden)) if name == "lstm" else np.zeros(hidden)
                else:
                    carry = tuple(params.initial[index][d]) if name == "lstm" else params.initial[index][d]
                mask = None if masks is None else np.asarray(masks[index][d][b], np.float64)
                h = np.zeros((n, hidden))
                for t in range(n) if d == 0 else range(n - 1, -1, -1):  # the backward one from the sequence's end
                    carry = np_transition(name, p, carry, seq[t], activation, mask)
                    h[t] = carry[0] if name == "lstm" else carry
                parts.append(h)
            new = np.concatenate(parts, axis=-1)
            seq = new + seq if residual and index > 0 else new
        top[:n, b] = seq
        outputs[:n, b] = seq @ params.w_y + params.b_y
    return outputs, top


def _random_biases(params, key, scale=0.3):
    """Non-zero biases and initial states, so that the oracle comparisons see them."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree,
        [
            a + scale * jax.random.normal(k, a.shape, a.dtype) if a.ndim == 1 else a
            for a, k in zip(leaves, keys, strict=True)
        ],
    )


@pytest.mark.parametrize("name", CELLS)
def test_step_is_transition_then_readout_bit_for_bit(key, name):
    cell = cells.get(name)
    params = _random_biases(cell.init(key, 3, 4, 2), jax.random.fold_in(key, 1))
    carry = jax.tree.map(lambda a: a + 0.5, cell.initial_state(params, 5))
    x = jax.random.normal(jax.random.fold_in(key, 2), (5, 3))
    new, y = jax.jit(cell.step)(params, carry, x)
    expected = jax.jit(cell.transition)(params, carry, x)
    chex.assert_trees_all_equal(new, expected)
    np.testing.assert_array_equal(y, cell.hidden(expected) @ params.w_y + params.b_y[None, :])


@pytest.mark.parametrize("name", CELLS)
def test_recurrent_mask_multiplies_only_the_recurrent_product(key, x64, name):
    cell = cells.get(name)
    params = _random_biases(cell.init(key, 3, 4, 2, dtype=jnp.float64), jax.random.fold_in(key, 1))
    carry = jax.tree.map(lambda a: a + 0.7, cell.initial_state(params, 2))
    x = jax.random.normal(jax.random.fold_in(key, 2), (2, 3), jnp.float64)
    mask = jnp.asarray([[2.0, 0.0, 2.0, 0.0], [0.0, 0.0, 2.0, 2.0]])
    got = cell.transition(params, carry, x, recurrent_mask=mask)
    for b in range(2):
        one = jax.tree.map(lambda a, b=b: np.asarray(a[b]), carry)
        want = np_transition(name, _np(params), tuple(one) if name == "lstm" else one, np.asarray(x[b]), mask=mask[b])
        np.testing.assert_allclose(np.asarray(cell.hidden(got)[b]), want[0] if name == "lstm" else want, rtol=1e-12)
    assert not np.allclose(cell.hidden(got), cell.hidden(cell.transition(params, carry, x)))


ARCHITECTURES = [
    pytest.param(
        dict(layers=2, bidirectional=True, residual=True, lengths=[5, 2, 0, 4]), id="2-bidir-residual-lengths"
    ),
    pytest.param(
        dict(layers=3, residual=False, lengths=None, learn_initial_state=True), id="3-s0", marks=pytest.mark.slow
    ),
]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("name", CELLS)
def test_deep_network_equals_per_sequence_python_loop(key, name, arch):
    arch = dict(arch)
    lengths = arch.pop("lengths")
    residual = arch.pop("residual")
    params = _random_biases(deep.init(key, name, 3, 4, 2, **arch), jax.random.fold_in(key, 1))
    xs = jax.random.normal(jax.random.fold_in(key, 2), (5, 4, 3))
    lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    run = jax.jit(lambda p, x, n: deep.apply(p, x, cell=name, lengths=n, residual=residual))(params, xs, lengths)
    want_outputs, want_top = deep_oracle(name, params, xs, lengths, residual=residual)
    np.testing.assert_allclose(run.outputs, want_outputs, atol=2e-5)
    np.testing.assert_allclose(run.top, want_top, atol=2e-5)
    batch_first = deep.apply(params, jnp.swapaxes(xs, 0, 1), cell=name, lengths=lengths, residual=residual,
                             time_major=False)  # fmt: skip
    np.testing.assert_allclose(jnp.swapaxes(batch_first.outputs, 0, 1), run.outputs, atol=1e-6)


def test_reverse_within_lengths_reverses_each_sequence_and_is_its_own_inverse():
    a = jnp.arange(12).reshape(4, 3)[:, :, None]  # [T=4, B=3, 1], a[t, b] = 3t + b
    lengths = jnp.asarray([4, 2, 0], jnp.int32)
    got = np.asarray(deep.reverse_within_lengths(a, lengths))[:, :, 0]
    np.testing.assert_array_equal(got[:, 0], [9, 6, 3, 0])
    np.testing.assert_array_equal(got[:, 1], [4, 1, 7, 10])  # reversed within 2 steps, the padding left in place
    np.testing.assert_array_equal(got[:, 2], [2, 5, 8, 11])
    np.testing.assert_array_equal(deep.reverse_within_lengths(deep.reverse_within_lengths(a, lengths), lengths), a)


@pytest.mark.parametrize("name", ["lstm", pytest.param("elman", marks=pytest.mark.slow),
                                  pytest.param("gru", marks=pytest.mark.slow)])  # fmt: skip
def test_learnable_initial_state_equals_unroll_from_it_and_gets_gradient(key, name):
    cell = cells.get(name)
    params = _random_biases(deep.init(key, name, 3, 4, 2, learn_initial_state=True), jax.random.fold_in(key, 1))
    xs = jax.random.normal(jax.random.fold_in(key, 2), (6, 2, 3))
    lengths = jnp.asarray([6, 3], jnp.int32)
    s0 = params.initial[0].forward
    single = params.layers[0].forward._replace(w_y=params.w_y, b_y=params.b_y)
    expected = unroll(single, xs, cell=cell, lengths=lengths,
                      initial_state=jax.tree.map(lambda s: jnp.broadcast_to(s[None], (2, 4)), s0))  # fmt: skip
    got = deep.apply(params, xs, cell=name, lengths=lengths)
    np.testing.assert_allclose(got.outputs, expected.outputs, atol=1e-6)
    chex.assert_trees_all_close(got.final_states[0].forward, expected.final_state, atol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(deep.apply(p, xs, cell=name, lengths=lengths).outputs ** 2))(params)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads.initial))


@pytest.mark.parametrize(
    "arch",
    [
        pytest.param(dict(model="elman", layers=2, bidirectional=True, residual=True, learn_initial_state=True),
                     id="elman-2-bidirectional-residual-s0"),
        pytest.param(dict(model="lstm", layers=2, bidirectional=True, learn_initial_state=True),
                     id="lstm-2-bidirectional-s0", marks=pytest.mark.slow),
        pytest.param(dict(model="gru", layers=2, bidirectional=True), id="gru-2-bidirectional", marks=pytest.mark.slow),
        pytest.param(dict(model="elman", layers=3, residual=True), id="elman-3-residual", marks=pytest.mark.slow),
    ],
)  # fmt: skip
def test_deep_gradients_match_float64_finite_differences_in_the_gradient_checker(arch):
    config = GradcheckConfig(activation="tanh", input_size=2, hidden=2, output_size=2, seq_len=3, batch_size=3,
                             lengths="variable", loss="squared_error", **arch)  # fmt: skip
    report = gradcheck.check_gradients(config)
    assert report.passed, gradcheck.explain(report)
    checked = {c.param for c in report.comparisons if c.reference == "finite_diff"}
    assert "layers[1].forward.w_s" in checked or arch["layers"] == 1
    assert ("layers[0].backward.w_x" in checked) == bool(arch.get("bidirectional"))
    assert ("initial[0].forward" in " ".join(checked)) == bool(arch.get("learn_initial_state"))
    assert "remat vs autodiff" in report.worst()


def _ones_network(key, variational, rate=0.5, width=64):
    """A one-layer identity network (W_x = W_y = I, W_s = 0, linear phi): y_t = m_out_t * m_in_t * x_t."""
    params = deep.init(key, "elman", width, width, width)
    eye = jnp.eye(width)
    layer = params.layers[0].forward._replace(w_x=eye, w_s=jnp.zeros_like(eye))
    params = params._replace(layers=(deep.Layer(layer, None),), w_y=eye)
    xs = jnp.ones((6, 3, width))
    return deep.apply(params, xs, cell="elman", activation="identity", key=key, dropout=rate, variational=variational)


def test_variational_masks_are_the_same_at_every_step_and_differ_across_sequences(key):
    y = np.asarray(_ones_network(key, variational=True).outputs)
    for t in range(1, y.shape[0]):
        np.testing.assert_array_equal(y[t], y[0])
    assert not np.array_equal(y[0, 0], y[0, 1]) and not np.array_equal(y[0, 1], y[0, 2])
    assert set(np.unique(y)) <= {0.0, 4.0}  # kept twice (input and output) with p = 0.5: scaled by 2 * 2


def test_per_step_masks_differ_across_steps(key):
    y = np.asarray(_ones_network(key, variational=False).outputs)
    assert all(not np.array_equal(y[t], y[0]) for t in range(1, y.shape[0]))
    assert set(np.unique(y)) <= {0.0, 4.0}


@pytest.mark.parametrize("variational", [pytest.param(False, marks=pytest.mark.slow), True])
def test_dropout_is_off_without_a_key_and_on_with_one(key, variational):
    params = deep.init(key, "gru", 3, 4, 2, bidirectional=True)
    xs = jax.random.normal(key, (5, 2, 3))
    plain = deep.apply(params, xs, cell="gru").outputs
    options = dict(cell="gru", dropout=0.5, recurrent_dropout=0.5, variational=variational)
    np.testing.assert_array_equal(deep.apply(params, xs, **options).outputs, plain)
    assert not np.allclose(deep.apply(params, xs, key=key, **options).outputs, plain)


@pytest.mark.parametrize("name", ["gru", pytest.param("elman", marks=pytest.mark.slow),
                                  pytest.param("lstm", marks=pytest.mark.slow)])  # fmt: skip
def test_recurrent_dropout_equals_the_oracle_with_the_masks_applied_by_hand(key, name):
    params = _random_biases(deep.init(key, name, 3, 4, 2, layers=2, bidirectional=True), jax.random.fold_in(key, 1))
    xs = jax.random.normal(jax.random.fold_in(key, 2), (5, 3, 3))
    lengths = jnp.asarray([5, 3, 1], jnp.int32)
    drop_key, rate = jax.random.fold_in(key, 3), 0.4
    got = deep.apply(params, xs, cell=name, lengths=lengths, key=drop_key, recurrent_dropout=rate)
    # the masks as apply's docstring says they are drawn: layer l's (forward, backward) from split(fold_in(key, l))
    masks = []
    for index in range(2):
        _, k_f, k_b = jax.random.split(jax.random.fold_in(drop_key, index), 3)
        masks.append([np.asarray(jax.random.bernoulli(k, 1 - rate, (3, 4))) / (1 - rate) for k in (k_f, k_b)])
    want, _ = deep_oracle(name, params, xs, lengths, masks=masks)
    np.testing.assert_allclose(got.outputs, want, atol=2e-5)
    plain, _ = deep_oracle(name, params, xs, lengths)
    assert not np.allclose(want, plain, atol=1e-3)


# ---------------------------------------------------------------- rematerialisation and mixed precision


def _deep_value_and_grad(name, params, xs, lengths, drop_key, **options):
    """(outputs, top, final states) of a 2-layer bidirectional residual network with input and recurrent dropout,
    and the gradient, w.r.t. the parameters (learnable initial states included) and the inputs, of a loss that
    reads all three."""

    def loss(p, x):
        run = deep.apply(p, x, cell=name, lengths=lengths, key=drop_key, dropout=0.2, recurrent_dropout=0.3,
                         residual=True, **options)  # fmt: skip
        finals = sum(jnp.sum(jnp.square(f)) for f in jax.tree.leaves(run.final_states))
        return jnp.sum(jnp.square(run.outputs)) + jnp.sum(jnp.cos(run.top)) + finals, run

    (_, run), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs)
    return run, grads


def _deep_setup(key, name, dtype, bidirectional=True, steps=7):
    params = deep.init(key, name, 3, 4, 2, layers=2, bidirectional=bidirectional, learn_initial_state=True,
                       dtype=dtype)  # fmt: skip
    params = _random_biases(params, jax.random.fold_in(key, 1))
    xs = jax.random.normal(jax.random.fold_in(key, 2), (steps, 3, 3), dtype)
    return params, xs, jnp.asarray([steps, 3, 0], jnp.int32)


@pytest.mark.parametrize(("name", "bidirectional", "remat", "unroll_factor"), [
    ("elman", False, 3, 2),  # k = 3 does not divide T = 7; scan unroll 2 inside the chunks
    pytest.param("lstm", True, 3, 2, marks=pytest.mark.slow),
    pytest.param("gru", True, "sqrt", 1, marks=pytest.mark.slow),
    pytest.param("elman", True, 10, 1, marks=pytest.mark.slow),  # k > T
])  # fmt: skip
def test_deep_remat_equals_no_remat_float64(key, x64, name, bidirectional, remat, unroll_factor):
    """Every direction of every layer checkpointed every k steps gives the values and gradients of remat=None
    (float64, relative 1e-10), with dropout, residual connections, learnable initial states and lengths (one
    full, one short, one empty sequence)."""
    params, xs, lengths = _deep_setup(key, name, jnp.float64, bidirectional)
    fn = jax.jit(_deep_value_and_grad, static_argnames=("remat", "unroll"), static_argnums=0)
    drop_key = jax.random.fold_in(key, 3)
    want = fn(name, params, xs, lengths, drop_key)
    got = fn(name, params, xs, lengths, drop_key, remat=remat, unroll=unroll_factor)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10 * max(float(np.max(np.abs(w))), 1.0))


def test_deep_remat_shrinks_the_backward_pass_memory(key):
    """A 2-layer Elman network at T = 400: with remat="sqrt" (k = 20) XLA's temporary buffers of the gradient
    are under half of those without, which keep every step's intermediates of both layers (each layer's
    outputs [T, B, H], read by the layer above and by the read-out, stay O(T) either way)."""
    params = deep.init(key, "elman", 3, 16, 2, layers=2)
    xs = jax.random.normal(key, (400, 4, 3))

    def temp_bytes(remat):
        grad = jax.grad(lambda p: jnp.mean(jnp.square(deep.apply(p, xs, cell="elman", remat=remat).outputs)))
        stats = jax.jit(grad).lower(params).compile().memory_analysis()
        if stats is None:
            pytest.skip(f"no XLA memory analysis on the {jax.default_backend()} backend")
        return stats.temp_size_in_bytes

    plain = temp_bytes(None)
    assert temp_bytes("sqrt") < plain / 2, plain


@pytest.mark.slow  # the default stage has the single-layer test of the same scan (tests/test_unroll.py)
@pytest.mark.parametrize("name", CELLS)
def test_deep_bfloat16_compute_keeps_float32_values_and_gradients_close_to_float32(key, name):
    """compute_dtype=bfloat16: outputs, top, final states and every gradient in float32, and within bfloat16's
    precision of the float32 network's: relative 3e-2 over all values, and over all gradients (8 bits of
    mantissa, ~4e-3 per rounding, through 7 steps of two layers; measured 1.0-1.4% for the three cells, a
    small leaf alone up to 5%), but not equal to them (it ran in bfloat16)."""
    params, xs, lengths = _deep_setup(key, name, jnp.float32)
    fn = jax.jit(_deep_value_and_grad, static_argnames="compute_dtype", static_argnums=0)
    drop_key = jax.random.fold_in(key, 3)
    want_run, want_grads = fn(name, params, xs, lengths, drop_key)
    run, grads = fn(name, params, xs, lengths, drop_key, compute_dtype=jnp.bfloat16)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((run, grads)))
    for got, want in ((run, want_run), (grads, want_grads)):
        assert 0 < relative_error(got, want) <= 3e-2


@pytest.mark.parametrize("name", ["gru", pytest.param("elman", marks=pytest.mark.slow),
                                  pytest.param("lstm", marks=pytest.mark.slow)])  # fmt: skip
def test_deep_hoisted_projections_equal_in_step_float64(key, x64, name):
    """projections="hoisted" (each direction's x_t W_x for all T steps before its scan) gives the values and
    gradients of "in_step" (float64, relative 1e-10), bidirectional, residual, with dropout and lengths."""
    params, xs, lengths = _deep_setup(key, name, jnp.float64)
    fn = jax.jit(_deep_value_and_grad, static_argnames="projections", static_argnums=0)
    drop_key = jax.random.fold_in(key, 3)
    want = fn(name, params, xs, lengths, drop_key)
    got = fn(name, params, xs, lengths, drop_key, projections="hoisted")
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10 * max(float(np.max(np.abs(w))), 1.0))
    with pytest.raises(ValueError, match="projections: 'hoisted' .* cannot be combined with remat"):
        deep.apply(params, xs, cell=name, projections="hoisted", remat=2)
    with pytest.raises(ValueError, match="projections: expected 'auto', 'in_step' or 'hoisted' for a deep network"):
        deep.apply(params, xs, cell=name, projections="hoisted_readout")


@pytest.mark.parametrize(("backend", "options", "hoists"),
                         [("cpu", {}, False), ("gpu", {}, True), ("tpu", {}, True), ("gpu", {"remat": 2}, False),
                          ("gpu", {"compute_dtype": jnp.bfloat16}, False)])  # fmt: skip
def test_deep_auto_projections_hoist_where_measured_faster(monkeypatch, key, backend, options, hoists):
    """projections="auto" (the default) hoists every direction's input product on GPU/TPU, where
    `experiments.deep_projections` measured it faster, and keeps it in the step on a CPU and with remat or a compute
    dtype (traced only; the backend is faked)."""
    params, xs, lengths = _deep_setup(key, "gru", jnp.float32)
    in_step = []  # the steps of the in-step form call the cell's transition, the hoisted form's do not
    original = rj.gru.transition
    monkeypatch.setattr(rj.gru, "transition", lambda *a, **k: in_step.append(1) or original(*a, **k))
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    jax.eval_shape(lambda p: deep.apply(p, xs, cell="gru", lengths=lengths, **options).outputs, params)
    assert (not in_step) == hoists


def test_deep_model_config_passes_remat_precision_and_projections_to_every_layer(key, record_scan_options):
    """`train.forward` hands --remat, --precision and --projections to `deep.apply` (traced only, nothing
    compiled)."""
    from rnn_jax import tasks

    seen = record_scan_options(deep, "apply")
    model = ModelConfig(hidden=4, layers=2, remat="sqrt", precision="bfloat16")
    task = tasks.make(TaskConfig(task="adding", seq_len=8))
    params = train.init_params(model, task, key)
    batch = task.batch(key, 4, jnp.float32)
    outputs = jax.eval_shape(lambda p: train.forward(model, task, p, batch), params)
    assert seen == [("sqrt", jnp.bfloat16)] and outputs.dtype == jnp.float32
    # --projections reaches deep.apply as given (its "auto" chooses by backend)
    seen = record_scan_options(deep, "apply", keys=("projections",))
    for projections in ("hoisted", "auto", "in_step"):
        jax.eval_shape(lambda p, c=projections: train.forward(ModelConfig(hidden=4, layers=2, projections=c), task,
                                                               p, batch), params)  # fmt: skip
    assert seen == [("hoisted",), ("auto",), ("in_step",)]


@pytest.mark.slow
def test_deep_training_with_remat_and_precision_learns(standard_promotion):
    """A deep LSTM trained with remat and bfloat16 compute on the adding task (T = 8) ends below the trivial
    baseline, with float32 parameters."""
    model = ModelConfig(model="lstm", hidden=16, layers=2, remat="sqrt", precision="bfloat16")
    config = _tiny(model, steps=300)
    config = Config(model=model, task=TaskConfig(task="adding", seq_len=8, batch_size=32), optim=config.optim,
                    run=dataclasses.replace(config.run, log_every=20))  # fmt: skip
    summary = train.train_and_evaluate(config)
    assert jax.tree.leaves(summary["params"])[0].dtype == jnp.float32
    assert summary["final_eval"]["loss"] < 0.5 * summary["baseline"]["loss"], summary["baseline"]


def test_bad_rates_sizes_and_widths_are_clear_errors(key):
    params = deep.init(key, "gru", 3, 4, 2)
    xs = jnp.zeros((5, 2, 3))
    for rate in (1.0, -0.1, "0.5"):
        with pytest.raises(ValueError, match=r"dropout: expected a dropout rate in \[0, 1\)"):
            deep.apply(params, xs, cell="gru", dropout=rate)
    with pytest.raises(ValueError, match=r"recurrent_dropout: expected a dropout rate in \[0, 1\), got 1.5"):
        deep.apply(params, xs, cell="gru", recurrent_dropout=1.5)
    with pytest.raises(ValueError, match="xs: expected input width D = 3"):
        deep.apply(params, jnp.zeros((5, 2, 4)), cell="gru")
    with pytest.raises(ValueError, match="lengths: expected every length in"):
        deep.apply(params, xs, cell="gru", lengths=jnp.asarray([6, 1], jnp.int32))
    with pytest.raises(ValueError, match="layers: expected a positive integer"):
        deep.init(key, "gru", 3, 4, 2, layers=0)
    # residual connections start at layer 2: with one layer the option was silently nothing
    with pytest.raises(ValueError, match=r"residual: .* needs layers >= 2, got layers=1"):
        deep.apply(params, xs, cell="gru", residual=True)
    with pytest.raises(TypeError, match=r"params: expected the DeepParams of rnn_jax.deep.init, got GRUParams"):
        deep.apply(rj.gru.init(key, 3, 4, 2), xs, cell="gru")
    with pytest.raises(TypeError, match=r"params: expected the lstm cell's LSTMParams, got GRUParams"):
        deep.apply(params, xs, cell="lstm")
    np.testing.assert_array_equal(  # a NumPy rate is a rate (it was refused as if out of range)
        deep.apply(params, xs, cell="gru", dropout=np.float32(0.25), key=key).outputs,
        deep.apply(params, xs, cell="gru", dropout=0.25, key=key).outputs,
    )
    with pytest.raises(ValueError, match="remat: expected None, a positive integer k or 'sqrt', got 'cube'"):
        deep.apply(params, xs, cell="gru", remat="cube")
    with pytest.raises(TypeError, match="compute_dtype: expected a floating dtype or None"):
        deep.apply(params, xs, cell="gru", compute_dtype=jnp.int32)
    with pytest.raises(TypeError, match=r"params: expected the lstm cell's LSTMParams, got GRUParams"):
        deep.apply(params, xs, cell="lstm")  # drawn for the GRU: failed inside the scan


def _layer(cell, key, width: int, hidden: int, bidirectional: bool = False) -> deep.Layer:
    """One layer of a deep network: [width] inputs, H = ``hidden`` per direction."""
    draw = [cell.init(k, width, hidden, 1)._replace(w_y=None, b_y=None) for k in jax.random.split(key)]
    return deep.Layer(draw[0], draw[1] if bidirectional else None)


@pytest.mark.parametrize("name", CELLS)
def test_layers_of_mixed_widths_that_chain_equal_the_python_loop(key, name):
    """Layer 2 may have its own H (6 against 4) when its W_x takes layer 1's output width (2 directions x 4)."""
    cell = cells.get(name)
    layers = (_layer(cell, key, 3, 4, True), _layer(cell, jax.random.fold_in(key, 1), 8, 6))
    params = deep.DeepParams(layers, jax.random.normal(jax.random.fold_in(key, 2), (6, 2)), jnp.zeros((2,)), None)
    xs = jax.random.normal(jax.random.fold_in(key, 3), (5, 2, 3))
    want_outputs, want_top = deep_oracle(name, params, xs, None)
    run = deep.apply(params, xs, cell=name)
    np.testing.assert_allclose(run.outputs, want_outputs, atol=2e-5)
    np.testing.assert_allclose(run.top, want_top, atol=2e-5)


@pytest.mark.parametrize(
    ("layers", "readout", "residual", "message"),
    [
        (
            [(3, 4, False), (6, 5, False)],
            (5, 2),
            False,
            r"params.layers\[1\].forward.w_x: expected 4 rows \(the output width of params.layers\[0\]: H = 4\), "
            r"got shape \(6, 15\)",
        ),  # failed inside a dot of the second scan
        (
            [(3, 4, True), (4, 5, True)],
            (10, 2),
            False,
            r"params.layers\[1\].forward.w_x: expected 8 rows \(the output width of params.layers\[0\]: "
            r"2 directions x H = 4\), got shape \(4, 15\)",
        ),  # bidirectional: the two directions' states are concatenated
        (
            [(3, 4, False), (4, 4, False)],
            (5, 2),
            False,
            r"params.w_y: expected 4 rows \(the output width of params.layers\[1\]: H = 4\), got shape \(5, 2\)",
        ),
        (
            [(3, 4, False), (4, 6, False)],
            (6, 2),
            True,
            r"residual: adds the input of params.layers\[1\] \(width 4\) to its output \(width 6\); they must be equal",
        ),
    ],
    ids=["unidirectional", "bidirectional", "read-out", "residual"],
)
def test_layers_that_do_not_chain_are_refused_before_the_scans(key, layers, readout, residual, message):
    cell = cells.get("gru")
    built = tuple(_layer(cell, jax.random.fold_in(key, i), *layer) for i, layer in enumerate(layers))
    params = deep.DeepParams(built, jnp.zeros(readout), jnp.zeros((readout[1],)), None)
    with pytest.raises(ValueError, match=message):
        deep.apply(params, jnp.zeros((5, 2, 3)), cell="gru", residual=residual)


def test_a_backward_direction_must_take_the_layer_input_too(key):
    params = deep.init(key, "elman", 3, 4, 2, bidirectional=True)
    wrong = params.layers[0]._replace(backward=rj.elman.init(key, 5, 4, 1)._replace(w_y=None, b_y=None))
    with pytest.raises(ValueError, match=r"params.layers\[0\].backward.w_x: expected 3 rows \(the input width D\), "
                                         r"got shape \(5, 4\)"):  # fmt: skip
        deep.apply(params._replace(layers=(wrong,)), jnp.zeros((5, 2, 3)), cell="elman")


def test_a_misshapen_deep_read_out_is_refused_by_name(key):
    params = deep.init(key, "lstm", 3, 4, 2)
    with pytest.raises(ValueError, match=r"params.b_y: expected rank 1 \[O\], got rank 2 with shape \(1, 2\)"):
        deep.apply(params._replace(b_y=params.b_y[None]), jnp.zeros((5, 2, 3)), cell="lstm")  # 4-D outputs
    layer = params.layers[0]._replace(forward=params.layers[0].forward._replace(b_s=jnp.zeros((4,))))
    with pytest.raises(ValueError, match=r"params.b_s: expected shape \[4H\] = \(16,\), got \(4,\)"):
        deep.apply(params._replace(layers=(layer,)), jnp.zeros((5, 2, 3)), cell="lstm")


@pytest.mark.parametrize("time_major", ["no", 1, None])
def test_deep_time_major_must_be_a_bool(key, time_major):
    params = deep.init(key, "elman", 3, 4, 2)
    with pytest.raises(TypeError, match=r"time_major: expected True or False, got "):
        deep.apply(params, jnp.zeros((5, 2, 3)), cell="elman", time_major=time_major)


@pytest.mark.parametrize("bad_key", [0, jnp.zeros((3,), jnp.uint32), jax.random.split(jax.random.key(0))])
def test_deep_init_refuses_what_is_not_one_prng_key(bad_key):
    with pytest.raises(TypeError, match=r"key: expected a JAX PRNG key \(jax.random.key\(seed\) or "):
        deep.init(bad_key, "gru", 3, 4, 2)


def test_deep_init_takes_a_legacy_key(key):
    chex.assert_trees_all_equal(
        deep.init(jax.random.PRNGKey(0), "gru", 3, 4, 2, layers=2), deep.init(key, "gru", 3, 4, 2, layers=2)
    )


def _tiny(model: ModelConfig, task="adding", steps=2, **run) -> Config:
    return Config(
        model=model,
        task=TaskConfig(task=task, seq_len=8, batch_size=8),
        optim=OptimConfig(learning_rate=1e-2),
        run=RunConfig(steps=steps, eval_every=steps, log_every=1, eval_batches=1, progress=False, **run),
    )


@pytest.mark.parametrize(
    "model, task, run, message",
    [
        (ModelConfig(layers=2, backward="bptt"), "adding", {}, "backward: 'bptt' is derived for the single-layer"),
        (ModelConfig(bidirectional=True), "xor", {}, "bidirectional: the 'xor' task predicts the next input"),
        (ModelConfig(dropout=1.0), "adding", {}, r"dropout: expected a dropout rate in \[0, 1\), got 1.0"),
        (ModelConfig(layers=0), "adding", {}, "layers: expected a positive integer, got 0"),
        (ModelConfig(residual=True), "adding", {}, "residual: .* needs layers >= 2, got layers=1"),
        (ModelConfig(remat="every10"), "adding", {}, "remat: expected None, a positive integer k or 'sqrt'"),
        (ModelConfig(layers=2), "xor", {"tbptt_k1": 4}, "tbptt_k1: truncated BPTT runs the single-layer network"),
        (ModelConfig(layers=2, projections="hoisted", remat="2"), "adding", {}, "projections: 'hoisted' .* remat"),
        (ModelConfig(projections="hoisted", remat="4"), "adding", {}, "projections: 'hoisted' .* cannot be combined"),
        (ModelConfig(projections="outside"), "adding", {}, r"projections: expected one of \['auto', 'in_step'"),
        (ModelConfig(variational_dropout=True), "adding", {}, r"variational_dropout: .* needs dropout > 0"),
        (
            ModelConfig(layers=2, projections="hoisted_readout"),
            "adding",
            {},
            "'hoisted_readout' is a form of the single",
        ),
    ],
)
def test_options_that_cannot_combine_are_clear_errors(model, task, run, message):
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(_tiny(model, task, **run))


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("name", CELLS)
def test_generated_outputs_fed_back_equal_the_per_sequence_python_loop(key, name, residual):
    """With ``feedback="output"`` (y_t is x_{t+1}) generation is a deterministic recursion: the oracle runs the
    inputs it fed itself and must reproduce every output and the top layer's states. A step that differed from
    `apply` (a layer skipped, the residual misplaced, the learned s_0 ignored) would not; after a prime read by
    `apply`, generation continues from its final states as if the prime and the generated inputs were one run."""
    params = _random_biases(
        deep.init(key, name, 3, 4, 3, layers=3, learn_initial_state=True), jax.random.fold_in(key, 1)
    )
    first = jax.random.normal(jax.random.fold_in(key, 2), (2, 3))
    gen = deep.generate(params, key, first, 5, cell=name, residual=residual, feedback="output")
    np.testing.assert_array_equal(gen.inputs[1:], gen.outputs[:-1])
    want_outputs, want_top = deep_oracle(name, params, gen.inputs, None, residual=residual)
    np.testing.assert_allclose(gen.outputs, want_outputs, atol=2e-5)
    np.testing.assert_allclose(gen.states, want_top, atol=2e-5)

    prime = jax.random.normal(jax.random.fold_in(key, 3), (4, 2, 3))
    finals = deep.apply(params, prime, cell=name, residual=residual).final_states
    carries = tuple(layer.forward for layer in finals)
    gen = deep.generate(params, key, first, 5, cell=name, residual=residual, feedback="output", carries=carries)
    want_outputs, _ = deep_oracle(name, params, jnp.concatenate([prime, gen.inputs]), None, residual=residual)
    np.testing.assert_allclose(gen.outputs, want_outputs[4:], atol=2e-5)


def test_generation_refuses_what_cannot_generate(key):
    """Each by name; an int key failed inside the sampling loop with JAX's "invalid PRNG key data"."""
    first = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="a bidirectional network cannot generate"):
        deep.generate(deep.init(key, "gru", 3, 4, 3, bidirectional=True), key, first, 4, cell="gru")
    params = deep.init(key, "gru", 3, 4, 3, layers=2)
    with pytest.raises(ValueError, match="carries: expected one carry per layer \\(2\\), got 1"):
        deep.generate(params, key, first, 4, cell="gru", carries=(jnp.zeros((2, 4)),))
    with pytest.raises(ValueError, match="the output width O = 2 must equal the input width D = 3"):
        deep.generate(deep.init(key, "gru", 3, 4, 2, layers=2), key, first, 4, cell="gru")
    with pytest.raises(TypeError, match="params: expected the DeepParams"):
        deep.generate(cells.get("gru").init(key, 3, 4, 3), key, first, 4, cell="gru")
    with pytest.raises(ValueError, match="temperature: expected a value > 0, got 0"):
        deep.generate(params, key, first, 4, cell="gru", temperature=0)
    with pytest.raises(TypeError, match="key: expected a JAX PRNG key .*, got int 0"):
        deep.generate(params, 0, first, 4, cell="gru")
    with pytest.raises(TypeError, match="key: expected a JAX PRNG key .*, got int 7"):
        deep.apply(params, first[None], cell="gru", key=7, dropout=0.5)
    with pytest.raises(TypeError, match="key: expected a JAX PRNG key .*, got int 0"):
        rj.generate(cells.get("gru").init(key, 3, 4, 3), 0, first, 4, cell="gru")


def test_default_model_config_keeps_the_single_layer_path():
    assert not ModelConfig().is_deep
    assert ModelConfig(layers=2).is_deep and ModelConfig(variational_dropout=True).is_deep


def test_dropout_key_is_its_own_stream_leaving_the_existing_keys_as_they_were():
    k_init, k_train, k_eval = train._keys(0)
    expected = jax.random.split(jax.random.key(0), 3)
    for a, b in zip((k_init, k_train, k_eval), expected, strict=True):
        np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
    base = jax.random.key_data(train.dropout_key(0))
    assert not any(np.array_equal(base, jax.random.key_data(k)) for k in expected)


@pytest.mark.slow
def test_deep_bidirectional_dropout_training_improves_checkpoints_and_saves(tmp_path, standard_promotion):
    model = ModelConfig(model="gru", hidden=8, layers=2, bidirectional=True, residual=True, dropout=0.1,
                        recurrent_dropout=0.1, variational_dropout=True, learn_initial_state=True)  # fmt: skip
    config = _tiny(model, steps=40, checkpoint_every=20)
    config = Config(model=config.model, task=TaskConfig(task="adding", seq_len=8, batch_size=32),
                    optim=config.optim, run=config.run)  # fmt: skip
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    train_losses = [r["loss"] for r in summary["records"] if r["kind"] == "train"]
    assert np.mean(train_losses[-5:]) < 0.8 * np.mean(train_losses[:5]), train_losses
    assert summary["final_eval"]["loss"] < summary["baseline"]["loss"]
    # the checkpoint (orbax, with the None read-outs of the layers) loads back to the trained parameters
    _, restored = train.load_trained(str(tmp_path / "run"))
    chex.assert_trees_all_equal(restored, summary["params"])
    saved.save(tmp_path / "model", summary["params"], model)
    loaded, loaded_config = saved.load(tmp_path / "model")
    assert loaded_config == model
    chex.assert_trees_all_equal(loaded, summary["params"])


def test_saved_deep_model_loads_back_with_its_config(tmp_path, key):
    model = ModelConfig(model="lstm", hidden=3, layers=2, bidirectional=True, learn_initial_state=True, dropout=0.2)
    params = _random_biases(train.init_params(model, _Sizes(), key), jax.random.fold_in(key, 1))
    saved.save(tmp_path / "m", params, model)
    loaded, loaded_config = saved.load(tmp_path / "m")
    assert loaded_config == model
    chex.assert_trees_all_equal(loaded, params)  # structure (None read-outs included), dtypes and values


class _Sizes:
    input_size, output_size = 2, 3
