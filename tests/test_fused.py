"""The fused recursions (`rnn_jax.fused`): the Pallas kernels against Python-loop oracles, and the fused unrolls'
(Elman, LSTM, GRU) values and gradients against autodiff.

On a CPU the kernels run in Pallas's interpreter: the same kernel functions, so these tests check their
arithmetic (the padding of B and H included); whether Triton compiles them is checked on a GPU
(`experiments/gpu_run.sh`).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax import activations, bench, fused, gradcheck
from rnn_jax.config import GradcheckConfig
from tests.oracle import gru_loop, lstm_loop
from tests.stages import slow_unless

# (T, B, D, H, O): B and H below, at and above the kernel's block sizes (ROWS = 16; H padded to 16, 32)
SIZES = [(6, 3, 2, 5, 2), (9, 16, 3, 16, 4), (5, 17, 2, 20, 3)]


def _problem(size, dtype=jnp.float64, seed=0):
    t, b, d, h, o = size
    keys = jax.random.split(jax.random.key(seed), 5)
    params = rj.elman.init(keys[0], d, h, o, dtype=dtype)
    params = params._replace(b_s=0.1 * jax.random.normal(keys[1], (h,), dtype))
    xs = jax.random.normal(keys[2], (t, b, d), dtype)
    s0 = 0.5 * jax.random.normal(keys[3], (b, h), dtype)
    lengths = jax.random.randint(keys[4], (b,), 0, t + 1)
    return params, xs, s0, lengths


def _loop_recurrence(u, w_s, s0, mask, phi):
    """The oracle: s_t = phi(u_t + s_{t-1} W_s), frozen where the mask is False, one Python step at a time."""
    s, states = np.asarray(s0), []
    for t in range(u.shape[0]):
        new = phi(np.asarray(u[t]) + s @ np.asarray(w_s))
        s = new if mask is None else np.where(np.asarray(mask[t])[:, None], new, s)
        states.append(s)
    return np.stack(states), s


@pytest.mark.parametrize("size", slow_unless(SIZES[:1], SIZES))
@pytest.mark.parametrize("masked", [False, True])
def test_the_forward_kernel_equals_a_python_loop(x64, size, masked):
    params, xs, s0, lengths = _problem(size)
    u = xs @ params.w_x + params.b_s[None, None, :]
    mask = rj.sequence_mask(lengths, xs.shape[0]) if masked else None
    states, final = jax.jit(fused.recurrence, static_argnums=4)(u, params.w_s, s0, mask, "tanh")
    want_states, want_final = _loop_recurrence(u, params.w_s, s0, mask, np.tanh)
    np.testing.assert_allclose(states, want_states, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(final, want_final, rtol=1e-12, atol=1e-14)


def _loss(params, xs, s0, lengths, activation, backward):
    run = rj.unroll(params, xs, activation=activation, initial_state=s0, lengths=lengths, backward=backward)
    # the outputs, every state and the final state all feed the loss, so every cotangent reaches the custom VJP
    return jnp.sum(run.outputs**2) + jnp.sum(jnp.cos(run.states)) + jnp.sum(run.final_state**3)


def _value_and_gradients(params, xs, s0, lengths, activation, backward):
    f = jax.value_and_grad(_loss, argnums=(0, 1, 2))
    return jax.jit(f, static_argnums=(4, 5))(params, xs, s0, lengths, activation, backward)


def test_an_empty_sequence_gives_the_initial_state_and_zero_weight_gradients(x64):
    params, _, s0, _ = _problem((1, 3, 2, 5, 2))
    xs = jnp.zeros((0, 3, 2), jnp.float64)
    run = rj.unroll(params, xs, initial_state=s0, backward="fused")
    assert run.states.shape == (0, 3, 5)
    np.testing.assert_array_equal(run.final_state, s0)
    grads = jax.grad(lambda p: jnp.sum(rj.unroll(p, xs, initial_state=s0, backward="fused").final_state ** 2))(params)
    assert all(not np.any(g) for g in jax.tree.leaves(grads))


def test_a_planted_error_in_the_reverse_kernel_is_caught(monkeypatch):
    """A reverse step that multiplies by W_s where W_s^T belongs (the classic slip): the gradient checker must
    fail the fused path, and only it."""
    correct = fused._reverse_step

    def transposed(masked):
        return lambda at_t, carry, matrices: correct(masked)(at_t, carry, [w.T for w in matrices])

    monkeypatch.setattr(fused, "_reverse_step", transposed)
    config = GradcheckConfig(trials=1, seed=3, hidden=4, seq_len=5, activation="tanh")
    report = gradcheck.check_gradients(config)
    failed = {f"{c.method} vs {c.reference}" for c in report.comparisons if not c.passed}
    assert failed == {"fused_vjp vs autodiff"}


def test_fused_training_takes_the_same_first_step_as_the_fast_path():
    params, xs, s0, _ = _problem((10, 4, 3, 8, 2), jnp.float32)
    targets = jnp.sin(jnp.arange(10 * 4 * 2, dtype=jnp.float32)).reshape(10, 4, 2)

    def loss(p, backward):
        return jnp.mean((rj.unroll(p, xs, backward=backward).outputs - targets) ** 2)

    chex.assert_trees_all_close(
        jax.value_and_grad(loss)(params, "fused"), jax.value_and_grad(loss)(params, "fast"), rtol=1e-5, atol=1e-7
    )


class _NotACell:
    __name__ = "mgu"
    initial_state = staticmethod(rj.elman.initial_state)
    step = staticmethod(rj.elman.step)  # a cell of the user's own: the interface, not one of the three


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cell": _NotACell()}, "Elman, LSTM and GRU cells only, got cell mgu"),
        ({"projections": "in_step"}, "projections"),
        ({"projections": "hoisted_readout"}, "projections: the fused kernels .* got 'hoisted_readout'"),
        ({"remat": 2}, "cannot rematerialise"),
    ],
)
def test_what_the_fused_path_refuses_is_named(options, message):
    params = rj.elman.init(jax.random.key(0), 2, 4, 1)
    with pytest.raises(ValueError, match=message):
        rj.unroll(params, jnp.zeros((3, 2, 2)), backward="fused", **options)


def test_the_compiled_kernel_refuses_a_state_too_wide_for_the_chip(monkeypatch):
    monkeypatch.setattr(fused, "compiled", lambda: True)
    assert fused.supported(fused.MAX_HIDDEN) and fused.supported(100)
    assert not fused.supported(fused.MAX_HIDDEN + 1)
    params = rj.elman.init(jax.random.key(0), 2, 200, 1)
    with pytest.raises(ValueError, match="H <= 128 for this cell on a GPU, got H = 200"):
        rj.unroll(params, jnp.zeros((3, 2, 2)), backward="fused")
    assert fused.max_hidden(rj.lstm) == fused.max_hidden(rj.gru) == 64
    assert fused.supported(64, rj.lstm) and not fused.supported(65, rj.lstm) and not fused.supported(65, rj.gru)
    params = rj.lstm.init(jax.random.key(0), 2, 100, 1)
    with pytest.raises(ValueError, match="H <= 64 for this cell on a GPU, got H = 100"):
        rj.unroll(params, jnp.zeros((3, 2, 2)), backward="fused", cell=rj.lstm)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("cell", "carry_products"),
                         [(rj.elman, False), (rj.lstm, False), (rj.lstm, True), (rj.gru, False), (rj.gru, True)],
                         ids=["elman", "lstm", "lstm-carry-products", "gru", "gru-carry-products"])  # fmt: skip
def test_the_kernels_lower_to_triton_for_a_gpu(monkeypatch, masked, cell, carry_products):
    """Cross-platform lowering (no GPU needed): the train step's value and gradient lower for CUDA with both
    recursions as Triton kernels, so Pallas's Triton rules accept them (block shapes, loads, the loop, the
    product), the gated cells' forward kernels in both forms of `KernelOptions.carry_products`. Whether Triton then
    compiles them within the chip's limits is checked on a GPU only."""
    import jax._src.pallas.triton.pallas_call_registration  # noqa: F401  (registers the CUDA lowering of pallas_call)

    monkeypatch.setattr(fused, "compiled", lambda: True)
    params = cell.init(jax.random.key(0), 3, 20, 2)
    xs, targets = jnp.ones((9, 17, 3)), jnp.ones((9, 17, 2))
    lengths = jnp.arange(17) % 10 if masked else None

    def loss(p, xs):
        return jnp.mean((rj.unroll(p, xs, backward="fused", lengths=lengths, cell=cell).outputs - targets) ** 2)

    with fused.kernel_options(fused.KernelOptions(carry_products=carry_products)):
        traced = jax.jit(jax.value_and_grad(loss)).trace(params, xs)
    text = traced.lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("custom_call @__gpu$xla.gpu.triton") == 2


def test_padded_hidden_is_a_power_of_two_at_least_16():
    assert [fused.padded_hidden(h) for h in (1, 16, 17, 32, 100, 128)] == [16, 16, 32, 32, 128, 128]


@pytest.mark.parametrize("name", ["rnn-jax-fused", "rnn-jax-fused-per-step", "rnn-jax-fused-4warps",
                                  "rnn-jax-fused-carry"])  # fmt: skip
def test_the_harness_times_the_kernels_only_where_they_compile(name, standard_promotion):
    """On a GPU the harness compiles the fused train step (optax's Adam inside: hence standard promotion); elsewhere
    it skips the kernels, saying the interpreter is no measurement."""
    (impl,) = bench.named_implementations([name])
    problem = bench._problem(bench.Shape("elman", *bench.PRESETS["quick"][0]), seed=0)
    if fused.compiled():
        assert impl.prepare(problem).first_step is not None
    else:
        with pytest.raises(bench.Unavailable, match="interpreter"):
            impl.prepare(problem)


def test_a_run_whose_implementations_all_skip_reports_them_instead_of_failing(monkeypatch):
    """Asked to time only implementations that skip here (the kernels, faked uncompiled), the harness returns no
    records and says why, rather than failing on an empty set of timings."""
    monkeypatch.setattr(fused, "compiled", lambda: False)
    shape = bench.Shape("elman", *bench.PRESETS["quick"][0])
    result = bench.run([shape], repeats=1, implementations=bench.named_implementations(["rnn-jax-fused"]))
    assert result.records == [] and [name for _, name, _ in result.skipped] == ["rnn-jax-fused"]


def test_kernel_options_apply_to_what_is_traced_inside_the_context(monkeypatch):
    """`fused.kernel_options` sets the options of kernels traced within it (seen in the CUDA lowering's Triton
    warps), and only there."""
    import jax._src.pallas.triton.pallas_call_registration  # noqa: F401  (registers the CUDA lowering of pallas_call)

    monkeypatch.setattr(fused, "compiled", lambda: True)
    params = rj.elman.init(jax.random.key(0), 3, 20, 2)
    xs = jnp.ones((9, 17, 3))

    def lowered():
        grad = jax.jit(jax.grad(lambda p: jnp.sum(rj.unroll(p, xs, backward="fused").outputs)))
        return grad.trace(params).lower(lowering_platforms=("cuda",)).as_text()

    with fused.kernel_options(fused.KernelOptions(num_warps=4)):
        inside = lowered()
    assert inside.count("num_warps = 4 : i32") == 2 and "num_warps = 8" not in inside
    assert lowered().count("num_warps = 8 : i32") == 2  # the default again, after the context


def test_deep_models_refuse_the_fused_path():
    from rnn_jax import train
    from rnn_jax.config import ModelConfig

    with pytest.raises(ValueError, match="'fused' is derived for the single-layer network"):
        train.check_model(dataclasses.replace(ModelConfig(), layers=2, backward="fused"))


# ------------------------------------------------------------------ the LSTM


def _lstm_problem(size, dtype=jnp.float64, seed=0):
    t, b, d, h, o = size
    keys = jax.random.split(jax.random.key(seed), 6)
    params = rj.lstm.init(keys[0], d, h, o, dtype=dtype)
    params = params._replace(b_s=params.b_s + 0.1 * jax.random.normal(keys[1], (4 * h,), dtype))
    xs = jax.random.normal(keys[2], (t, b, d), dtype)
    s0 = rj.lstm.LSTMState(*(0.5 * jax.random.normal(k, (b, h), dtype) for k in keys[3:5]))
    lengths = jax.random.randint(keys[5], (b,), 0, t + 1)
    return params, xs, s0, lengths


def _gru_problem(size, dtype=jnp.float64, seed=0):
    t, b, d, h, o = size
    keys = jax.random.split(jax.random.key(seed), 6)
    params = rj.gru.init(keys[0], d, h, o, dtype=dtype)
    params = params._replace(
        b_x=0.1 * jax.random.normal(keys[1], (3 * h,), dtype), b_s=0.1 * jax.random.normal(keys[2], (3 * h,), dtype)
    )
    xs = jax.random.normal(keys[3], (t, b, d), dtype)
    s0 = 0.5 * jax.random.normal(keys[4], (b, h), dtype)
    lengths = jax.random.randint(keys[5], (b,), 0, t + 1)
    return params, xs, s0, lengths


def _forward_carries(cell, carry_products: bool) -> int:
    """How many [B, H] carries the gated cell's forward kernel starts from: (h, c) for the LSTM, h for the GRU, then
    h W_k for each gate block k where `fused.KernelOptions.carry_products`."""
    return (2 if cell is rj.lstm else 1) + (len(cell.GATES) if carry_products else 0)


def _spy_on_forward_carries(monkeypatch) -> list[int]:
    """The number of initial carries of every forward kernel traced from here on (which step form ran), as a list
    that fills as they are traced."""
    carries, real = [], fused.run_recursion

    def spy(step, sequences, matrices, initials, num_outputs, reverse, options):
        if not reverse:
            carries.append(len(initials))
        return real(step, sequences, matrices, initials, num_outputs, reverse, options)

    monkeypatch.setattr(fused, "run_recursion", spy)
    return carries


@pytest.mark.parametrize("carry_products", [False, True], ids=["carry_h", "carry_products"])
@pytest.mark.parametrize("size", slow_unless(SIZES[:1], SIZES))
@pytest.mark.parametrize("cell", [rj.lstm, rj.gru], ids=["lstm", "gru"])
def test_the_fused_gated_cells_equal_a_python_loop(x64, monkeypatch, size, cell, carry_products):
    """Both forms of the forward step (`fused.KernelOptions.carry_products`), with lengths, against the oracle; the
    spy shows the form asked for is the one that ran."""
    params, xs, s0, lengths = (_lstm_problem if cell is rj.lstm else _gru_problem)(size)
    carries = _spy_on_forward_carries(monkeypatch)
    run = jax.jit(lambda p, x, l: rj.unroll(p, x, initial_state=s0, lengths=l, cell=cell, backward="fused"))
    with fused.kernel_options(fused.KernelOptions(carry_products=carry_products)):
        got = run(params, xs, lengths)
    assert carries == [_forward_carries(cell, carry_products)]
    if cell is rj.lstm:
        outputs, (hs, cs), (h, c) = lstm_loop(params, xs, "tanh", s0.h, s0.c, np.asarray(lengths))
        want = (outputs, hs, cs, h, c)
    else:
        want = gru_loop(params, xs, "tanh", s0, np.asarray(lengths))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cell", [rj.lstm, rj.gru], ids=["lstm", "gru"])
def test_carried_products_equal_products_of_the_carried_state_under_a_mask_with_gaps(x64, cell):
    """Under a mask that freezes a sequence and later resumes it (which lengths cannot), carrying h_{t-1} W_s's gate
    blocks (`fused.KernelOptions.carry_products`) gives the states, final state and pre-activations of carrying
    h_{t-1}: a frozen step carries the products of the state it keeps, not of the one it discarded."""
    params, xs, s0, _ = (_lstm_problem if cell is rj.lstm else _gru_problem)(SIZES[-1])
    mask = jax.random.bernoulli(jax.random.key(1), 0.6, xs.shape[:2])
    assert np.any(~mask[:-1] & mask[1:])  # some sequence resumes after a frozen step
    if cell is rj.lstm:
        run = jax.jit(fused.lstm_recurrence, static_argnums=(4, 5))
        args = (xs @ params.w_x + params.b_s[None, None, :], params.w_s, s0, mask, "tanh")
    else:
        run = jax.jit(fused.gru_recurrence, static_argnums=(4, 5))
        args = (xs @ params.w_x + params.b_x[None, None, :], params, s0, mask, "tanh")
    chex.assert_trees_all_close(
        run(*args, fused.KernelOptions(carry_products=True)),
        run(*args, fused.KernelOptions(carry_products=False)),
        rtol=1e-12,
        atol=1e-14,
    )


def _lstm_loss(params, xs, s0, lengths, activation, backward):
    run = rj.unroll(
        params, xs, activation=activation, initial_state=s0, lengths=lengths, backward=backward, cell=rj.lstm
    )
    # outputs, both parts of every state and of the final state feed the loss: every cotangent reaches the VJP
    return (jnp.sum(run.outputs**2) + jnp.sum(jnp.cos(run.states.h)) + jnp.sum(jnp.sin(run.states.c))
            + jnp.sum(run.final_state.h**3) + jnp.sum(run.final_state.c**2))  # fmt: skip


def _lstm_value_and_gradients(params, xs, s0, lengths, activation, backward):
    f = jax.value_and_grad(_lstm_loss, argnums=(0, 1, 2))
    return jax.jit(f, static_argnums=(4, 5))(params, xs, s0, lengths, activation, backward)


def _gru_value_and_gradients(params, xs, s0, lengths, activation, backward):
    def loss(p, x, h_0):
        run = rj.unroll(p, x, activation=activation, initial_state=h_0, lengths=lengths, backward=backward, cell=rj.gru)
        return jnp.sum(run.outputs**2) + jnp.sum(jnp.cos(run.states)) + jnp.sum(run.final_state**3)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, xs, s0)


def test_a_planted_error_in_the_lstm_reverse_kernel_is_caught(monkeypatch, x64):
    """The LSTM's reverse step given the gate blocks W_k where their transposes belong: the comparison with
    autodiff must fail (so the float64 comparisons above can fail)."""
    params, xs, s0, lengths = _lstm_problem(SIZES[0])
    want = _lstm_value_and_gradients(params, xs, s0, lengths, "tanh", "autodiff")
    correct = fused._lstm_reverse_step

    def transposed(act, masked):
        return lambda at_t, carry, matrices: correct(act, masked)(at_t, carry, [w.T for w in matrices])

    monkeypatch.setattr(fused, "_lstm_reverse_step", transposed)
    _, got = _lstm_value_and_gradients(params, xs, s0, lengths, "tanh", "fused")
    assert float(jnp.max(jnp.abs(got[0].w_s - want[1][0].w_s))) > 1e-3 * float(jnp.max(jnp.abs(want[1][0].w_s)))


# ------------------------------------------------------------------ both cells against autodiff

PROBLEMS = {
    "elman": (_problem, _value_and_gradients),
    "lstm": (_lstm_problem, _lstm_value_and_gradients),
    "gru": (_gru_problem, _gru_value_and_gradients),
}
OTHER_ACTIVATIONS = (*sorted(set(activations.NAMED) - {"tanh"}), jnp.sin)


@pytest.mark.parametrize(
    ("cell", "size", "activation"),
    [
        pytest.param(cell, size, "tanh", marks=() if size == SIZES[0] else pytest.mark.slow)
        for cell in PROBLEMS
        for size in SIZES
    ]
    + [pytest.param(cell, SIZES[-1], a, marks=pytest.mark.slow) for cell in PROBLEMS for a in OTHER_ACTIVATIONS],
)
def test_fused_values_and_gradients_equal_autodiff_in_float64(x64, cell, size, activation):
    _assert_fused_equals_autodiff_in_float64(cell, size, activation)


def _assert_fused_equals_autodiff_in_float64(cell, size, activation):
    """The fused unroll's loss and gradients equal autodiff's, without lengths and with them."""
    make, value_and_gradients = PROBLEMS[cell]
    params, xs, s0, lengths = make(size)
    for lens in (None, lengths):
        chex.assert_trees_all_close(
            value_and_gradients(params, xs, s0, lens, activation, "fused"),
            value_and_gradients(params, xs, s0, lens, activation, "autodiff"),
            rtol=1e-10,
            atol=1e-13,
        )


@pytest.mark.parametrize("size", slow_unless(SIZES[:1], SIZES))
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_carrying_the_gated_products_keeps_fused_values_and_gradients_equal_to_autodiff(x64, monkeypatch, cell, size):
    """With `fused.KernelOptions.carry_products` the LSTM's and GRU's forward kernels carry h_{t-1} W_s's gate blocks
    (the spy: every forward kernel traced started from them), and the values and gradients still equal autodiff's."""
    carries = _spy_on_forward_carries(monkeypatch)
    with fused.kernel_options(fused.KernelOptions(carry_products=True)):
        _assert_fused_equals_autodiff_in_float64(cell, size, "tanh")
    assert carries and set(carries) == {_forward_carries(getattr(rj, cell), True)}


def test_the_elman_kernels_at_the_widest_state_the_fast_path_sends_them_equal_autodiff(x64):
    """backward="fast" takes the Elman kernels up to a padded H of 128 on a GPU (`unroll.FUSED_FAST_MAX_HIDDEN`):
    H = 100 pads to 128 there, so the padding of W_s's 28 extra rows and columns is checked at that width."""
    from rnn_jax.unroll import FUSED_FAST_MAX_HIDDEN

    hidden = 100
    assert fused.padded_hidden(hidden) == FUSED_FAST_MAX_HIDDEN[rj.elman] == fused.max_hidden(rj.elman)
    params, xs, s0, lengths = _problem((5, 3, 2, hidden, 2))
    chex.assert_trees_all_close(
        _value_and_gradients(params, xs, s0, lengths, "tanh", "fused"),
        _value_and_gradients(params, xs, s0, lengths, "tanh", "autodiff"),
        rtol=1e-10,
        atol=1e-13,
    )


@pytest.mark.parametrize("cell", slow_unless(["elman"], list(PROBLEMS)))
def test_fused_equals_autodiff_in_float32(standard_promotion, cell):
    make, value_and_gradients = PROBLEMS[cell]
    params, xs, s0, lengths = make((12, 5, 3, 24, 2), jnp.float32)
    got = value_and_gradients(params, xs, s0, lengths, "tanh", "fused")
    want = value_and_gradients(params, xs, s0, lengths, "tanh", "autodiff")
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):  # 1e-5 of each array's largest entry
        assert g.dtype == jnp.float32 and float(jnp.max(jnp.abs(g - w))) <= 1e-5 * float(jnp.max(jnp.abs(w)))


@pytest.mark.slow
def test_the_kernel_study_reports_a_variant_that_does_not_compile(monkeypatch):
    """`experiments.fused_kernels` on a GPU tries kernel options that Triton may reject (registers, shared
    memory): such a variant becomes a row with its error, and the other variants are still timed."""
    from experiments import fused_kernels

    real = fused.recurrence

    def picky(u, w_s, s0, mask, activation, options=None):
        if not options.weights_once:
            raise RuntimeError("out of resources: shared memory\nmore detail")
        return real(u, w_s, s0, mask, activation, options)

    monkeypatch.setattr(fused, "recurrence", picky)
    rows = fused_kernels.measure(4, 5, 16, fused_kernels.QUICK_VARIANTS, repeats=1)
    failed = [r for r in rows if "error" in r]
    assert [(r["recursion"], r["variant"], r["error"]) for r in failed] == [
        ("forward", "4warps-per-step", "RuntimeError: out of resources: shared memory")
    ]
    assert len(rows) == 6 and all(r["median_ms"] > 0 for r in rows if "error" not in r)
