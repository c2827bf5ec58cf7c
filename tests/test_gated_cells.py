"""The LSTM and GRU cells: scan unroll against the Python-loop oracle, gradients against finite
differences, the forget-gate bias, shapes, errors, and learning the adding problem."""

from __future__ import annotations

import functools
import typing

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import rnn_jax as rj
from rnn_jax import cells, cli, deep, train
from rnn_jax.cells import gru, lstm
from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig
from tests.oracle import gru_loop, lstm_loop
from tests.stages import slow_unless

T, B, D, H, O = 6, 3, 4, 5, 2
GATED = {"lstm": lstm, "gru": gru}


def _setup(cell, key, dtype=jnp.float32):
    """Parameters with every bias non-zero (so that a wrong bias path shows) and inputs [T, B, D]."""
    k_p, k_x, k_b = jax.random.split(key, 3)
    params = cell.init(k_p, D, H, O, dtype=dtype)
    bias_keys = jax.random.split(k_b, len(params))
    params = params._replace(
        **{
            name: 0.3 * jax.random.normal(k, leaf.shape, dtype)
            for name, leaf, k in zip(params._fields, params, bias_keys, strict=True)
            if name.startswith("b_")
        }
    )
    xs = jax.random.normal(k_x, (T, B, D), dtype)
    return params, xs


def _oracle(name, params, xs, activation, lengths):
    lengths = None if lengths is None else np.asarray(lengths)
    if name == "lstm":
        y, (hs, cs), (h, c) = lstm_loop(params, xs, activation, lengths=lengths)
        return y, lstm.LSTMState(hs, cs), lstm.LSTMState(h, c)
    return gru_loop(params, xs, activation, lengths=lengths)


@pytest.mark.parametrize("name", GATED)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("jit", [False, True])
def test_scan_unroll_equals_python_loop(key, name, activation, with_lengths, jit):
    cell = GATED[name]
    params, xs = _setup(cell, key)
    lengths = jnp.array([T, 3, 0], jnp.int32) if with_lengths else None
    run = functools.partial(rj.unroll, activation=activation, cell=cell)
    if jit:
        run = jax.jit(run)
    got = run(params, xs, lengths=lengths)
    want_y, want_states, want_final = _oracle(name, params, xs, activation, lengths)
    # the states come back as the carry pytree, stacked over time
    assert jax.tree.structure(got.states) == jax.tree.structure(cell.initial_state(params, B))
    chex.assert_trees_all_close(
        (got.outputs, got.states, got.final_state), (want_y, want_states, want_final), atol=2e-5, rtol=2e-5
    )


@pytest.mark.parametrize(
    ("name", "batch"), [("lstm", 1), ("lstm", 3), ("gru", 1), pytest.param("gru", 3, marks=pytest.mark.slow)]
)
def test_a_single_input_takes_the_per_gate_product_and_its_gradients_are_the_single_products(x64, name, batch):
    """D = 1 (a time series): `_common.gate_input_product`'s per-gate form (a CPU forward pass; the LSTM's at B > 1)
    gives the oracle's outputs; gradients by autodiff and by the hand-derived backward pass equal those of the
    single product x W_x (float64, 1e-12), and the forward values are the same products (1e-13)."""
    cell = GATED[name]
    k_p, k_x = jax.random.split(jax.random.key(3))
    params = cell.init(k_p, 1, H, O, dtype=jnp.float64)
    params = jax.tree.map(lambda p: p + 0.1 * jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape), params)
    xs = jax.random.normal(k_x, (T, batch, 1), jnp.float64)
    lengths = jnp.array([T, 2, 0][:batch], jnp.int32)

    def loss(p, x, backward):
        run = rj.unroll(p, x, cell=cell, lengths=lengths, backward=backward)
        return jnp.sum(jnp.sin(run.outputs)) + sum(jnp.sum(f**2) for f in jax.tree.leaves(run.final_state))

    def everything():
        run = jax.jit(lambda p, x: rj.unroll(p, x, cell=cell, lengths=lengths))(params, xs)
        grads = {
            b: jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(params, xs, b) for b in ("autodiff", "bptt")
        }
        return run, grads

    per_gate, per_gate_grads = everything()
    want_y, _, _ = _oracle(name, params, xs, "tanh", lengths)
    np.testing.assert_allclose(per_gate.outputs, want_y, rtol=1e-12, atol=1e-12)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cells._common, "gate_input_product", lambda x, w, gates, per_gate: x @ w)
        whole, whole_grads = everything()
    chex.assert_trees_all_close(per_gate, whole, rtol=1e-13, atol=1e-13)
    chex.assert_trees_all_close(per_gate_grads, whole_grads, rtol=1e-12, atol=1e-12)


def test_the_per_gate_product_is_the_single_product_and_differentiates_as_one(x64):
    """`_per_gate_product` concatenates the gates' [B, 1] @ [1, H] products: exactly x W_x; its JVP (with a zero
    tangent on either argument, or none) and its gradient are those of x W_x."""
    x = jax.random.normal(jax.random.key(0), (4, 1), jnp.float64)
    w = jax.random.normal(jax.random.key(1), (1, 12), jnp.float64)
    dx, dw = jnp.ones_like(x), jnp.arange(12.0).reshape(1, 12)
    np.testing.assert_array_equal(cells._common._per_gate_product(x, w, 3), x @ w)
    for tangents in [(dx, dw), (dx, jnp.zeros_like(w)), (jnp.zeros_like(x), dw)]:
        got = jax.jvp(lambda a, b: cells._common._per_gate_product(a, b, 3), (x, w), tangents)
        want = jax.jvp(jnp.matmul, (x, w), tangents)
        chex.assert_trees_all_close(got, want, rtol=1e-15)
    got = jax.grad(lambda b: jnp.sum(jnp.sin(cells._common._per_gate_product(x, b, 3))))(w)
    np.testing.assert_allclose(got, jax.grad(lambda b: jnp.sum(jnp.sin(x @ b)))(w), rtol=1e-15)


@pytest.mark.parametrize("name", GATED)
def test_given_initial_state_is_used(key, name):
    cell = GATED[name]
    params, xs = _setup(cell, key)
    s0 = jax.tree.map(lambda a: 0.5 * jnp.ones_like(a), cell.initial_state(params, B))
    got = rj.unroll(params, xs, cell=cell, initial_state=s0)
    if name == "lstm":
        want_y, _, _ = lstm_loop(params, xs, h0=s0.h, c0=s0.c)
    else:
        want_y, _, _ = gru_loop(params, xs, h0=s0)
    np.testing.assert_allclose(got.outputs, want_y, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", GATED)
@pytest.mark.parametrize("activation", slow_unless(["tanh"], ["tanh", "sigmoid"]))
def test_grad_equals_central_finite_differences_float64(key, x64, name, activation):
    """Every entry of every parameter leaf: jax.grad through the scan agrees with central differences."""
    cell = GATED[name]
    params, xs = _setup(cell, key, jnp.float64)
    lengths = jnp.array([T, 4, 2], jnp.int32)
    targets = jax.random.normal(jax.random.key(2), (T, B, O), jnp.float64)
    mask = rj.sequence_mask(lengths, T)

    def loss(p):
        outputs = rj.unroll(p, xs, activation=activation, lengths=lengths, cell=cell).outputs
        return rj.squared_error(outputs, targets, mask, "sum")

    flat, unravel = ravel_pytree(params)
    eps = 1e-6
    steps = eps * jnp.eye(flat.size, dtype=jnp.float64)
    flat_loss = jax.jit(jax.vmap(lambda v: loss(unravel(v))))
    numeric = unravel((flat_loss(flat[None, :] + steps) - flat_loss(flat[None, :] - steps)) / (2 * eps))
    analytic = jax.grad(loss)(params)
    for field, num, ana in zip(params._fields, numeric, analytic, strict=True):
        num, ana = np.asarray(num), np.asarray(ana)
        assert np.abs(ana).max() > 0, f"{field}: zero gradient, so the comparison would prove nothing"
        rel = np.abs(num - ana).max() / (np.maximum(np.abs(num), np.abs(ana)).max() + 1e-12)
        assert rel <= 1e-6, f"{field}: max relative error {rel:.2e} vs finite differences"


def test_lstm_step_is_the_lstm_equation_with_gates_in_pytorch_order(key):
    """Setting one gate block's bias to +-large saturates exactly that gate, which pins the (i, f, g, o) order."""
    params = lstm.init(key, D, H, O)
    params = params._replace(w_x=jnp.zeros_like(params.w_x), w_s=jnp.zeros_like(params.w_s))
    c_prev = jnp.full((1, H), 0.7)
    carry = lstm.LSTMState(h=jnp.zeros((1, H)), c=c_prev)
    x = jnp.zeros((1, D))
    big = 30.0
    # i open, f shut, g = tanh(0.5), o open  ->  c = tanh(0.5), h = tanh(tanh(0.5))
    b_s = jnp.concatenate([jnp.full((H,), big), jnp.full((H,), -big), jnp.full((H,), 0.5), jnp.full((H,), big)])
    new, _ = lstm.step(params._replace(b_s=b_s), carry, x)
    np.testing.assert_allclose(new.c, np.full((1, H), np.tanh(0.5)), rtol=1e-5)
    np.testing.assert_allclose(new.h, np.tanh(np.tanh(0.5)) * np.ones((1, H)), rtol=1e-5)
    # i shut, f open, o shut  ->  c kept, h = 0
    b_s = jnp.concatenate([jnp.full((H,), -big), jnp.full((H,), big), jnp.full((H,), 0.5), jnp.full((H,), -big)])
    new, _ = lstm.step(params._replace(b_s=b_s), carry, x)
    np.testing.assert_allclose(new.c, c_prev, rtol=1e-5)
    np.testing.assert_allclose(new.h, np.zeros((1, H)), atol=1e-6)


def test_gru_update_gate_open_keeps_the_state(key):
    """z -> 1 (the z block of b_x large) gives h_t = h_{t-1}; z -> 0 gives h_t = n_t."""
    params = gru.init(key, D, H, O)
    h_prev = jax.random.normal(jax.random.key(3), (2, H))
    x = jax.random.normal(jax.random.key(4), (2, D))
    keep = params._replace(b_x=jnp.zeros((3 * H,)).at[H : 2 * H].set(30.0))
    np.testing.assert_allclose(gru.step(keep, h_prev, x)[0], h_prev, rtol=1e-6)
    replace = params._replace(b_x=jnp.zeros((3 * H,)).at[H : 2 * H].set(-30.0))
    w_x, w_s = np.asarray(params.w_x), np.asarray(params.w_s)
    r = 1 / (1 + np.exp(-(np.asarray(x) @ w_x[:, :H] + np.asarray(h_prev) @ w_s[:, :H])))
    n = np.tanh(np.asarray(x) @ w_x[:, 2 * H :] + r * (np.asarray(h_prev) @ w_s[:, 2 * H :]))
    np.testing.assert_allclose(gru.step(replace, h_prev, x)[0], n, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("forget_bias", [1.0, 2.5, 0.0])
def test_forget_bias_lands_in_the_f_block(key, forget_bias):
    b_s = np.asarray(lstm.init(key, D, H, O, forget_bias=forget_bias).b_s)
    np.testing.assert_array_equal(b_s[H : 2 * H], forget_bias)
    np.testing.assert_array_equal(np.delete(b_s, np.s_[H : 2 * H]), 0.0)


def test_forget_bias_defaults_to_one(key):
    np.testing.assert_array_equal(lstm.init(key, D, H, O).b_s[H : 2 * H], 1.0)


@pytest.mark.parametrize(
    ("name", "shapes"),
    [
        ("lstm", {"w_x": (D, 4 * H), "w_s": (H, 4 * H), "b_s": (4 * H,), "w_y": (H, O), "b_y": (O,)}),
        (
            "gru",
            {"w_x": (D, 3 * H), "w_s": (H, 3 * H), "b_x": (3 * H,), "b_s": (3 * H,), "w_y": (H, O), "b_y": (O,)},
        ),
    ],
)
def test_parameter_and_output_shapes(key, name, shapes):
    cell = cells.get(name)
    params = cell.init(key, D, H, O)
    assert params._fields[0] == "w_x" and params.sizes == (D, H, O)
    assert {field: leaf.shape for field, leaf in zip(params._fields, params, strict=True)} == shapes
    run = rj.unroll(params, jnp.ones((T, B, D)), cell=cell)
    assert run.outputs.shape == (T, B, O)
    assert jax.tree.map(jnp.shape, run.final_state) == jax.tree.map(jnp.shape, cell.initial_state(params, B))
    assert all(leaf.shape == (T, B, H) for leaf in jax.tree.leaves(run.states))


@pytest.mark.parametrize("name", GATED)
def test_each_gate_block_is_orthogonal_and_rescaled_per_block(key, name):
    cell = GATED[name]
    w_s = np.asarray(cell.init(key, D, 8, O).w_s)
    for block in np.split(w_s, w_s.shape[1] // 8, axis=1):
        np.testing.assert_allclose(block.T @ block, np.eye(8), atol=1e-5)
    w_s = np.asarray(cell.init(key, D, 8, O, recurrent_init="glorot_normal", spectral_radius=0.7).w_s)
    for block in np.split(w_s, w_s.shape[1] // 8, axis=1):
        np.testing.assert_allclose(np.abs(np.linalg.eigvals(block.astype(np.float64))).max(), 0.7, rtol=1e-5)


@pytest.mark.parametrize("name", GATED)
def test_initialisation_is_a_pure_function_of_the_key_with_a_key_per_block(key, name):
    cell = GATED[name]
    a, b = cell.init(key, D, H, O), cell.init(key, D, H, O)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    blocks = np.split(np.asarray(a.w_x), a.w_x.shape[1] // H, axis=1)
    assert not np.allclose(blocks[0], blocks[1])


@pytest.mark.parametrize("name", GATED)
def test_dtypes(key, x64, name):
    cell = GATED[name]
    for dtype in (jnp.float64, jnp.bfloat16):
        params = cell.init(key, D, H, O, dtype=dtype)
        assert all(leaf.dtype == dtype for leaf in params)
        out = rj.unroll(params, jnp.ones((T, B, D), dtype), cell=cell).outputs
        assert out.dtype == dtype and bool(jnp.isfinite(out).all())


@pytest.mark.parametrize("name", GATED)
@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, 5, 2), {}, r"input_size: expected a positive integer, got 0"),
        ((3, 5, 2), {"input_init": "identity"}, r"input_init: 'identity' applies only to the recurrent matrix"),
        ((3, 5, 2), {"spectral_radius": -1.0}, r"spectral_radius: expected a value >= 0"),
        ((3, 5, 2), {"dtype": jnp.int32}, r"dtype: expected a floating dtype"),
    ],
)
def test_bad_arguments_get_clear_errors(key, name, args, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        GATED[name].init(key, *args, **kwargs)


@pytest.mark.parametrize(
    ("forget_bias", "message"),
    [
        (float("nan"), r"forget_bias: expected a finite number, got nan"),
        (float("inf"), r"forget_bias: expected a finite number, got inf"),
        (-np.inf, r"forget_bias: expected a finite number, got -inf"),
        ("1", r"forget_bias: expected a finite number, got '1'"),
    ],
    ids=["nan", "inf", "-inf", "str"],
)
def test_non_finite_forget_bias_is_refused_by_name(key, forget_bias, message):
    """A NaN or infinite forget bias made NaN (or saturated) parameters silently."""
    with pytest.raises(ValueError, match=message):
        lstm.init(key, D, H, O, forget_bias=forget_bias)
    with pytest.raises(ValueError, match=message):  # through a deep network's cell options
        deep.init(key, "lstm", D, H, O, forget_bias=forget_bias)


def test_registry_config_and_command_line_know_the_gated_cells():
    assert cells.get("lstm") is lstm and cells.get("gru") is gru
    assert set(typing.get_args(typing.get_type_hints(ModelConfig)["model"])) == set(cells.CELLS)
    for name in GATED:
        args = cli.build_parser().parse_args(["train", "--model", name])
        assert cli.config_from_args(args).model.model == name


@pytest.mark.usefixtures("standard_promotion")  # optax's adam (see conftest)
@pytest.mark.slow  # learning the adding problem: the default stage has the Elman network's (test_train.py)
@pytest.mark.parametrize("name", list(GATED))
def test_train_and_evaluate_learns_the_adding_problem(name):
    """The constant predictor scores MSE 1/6; below 0.3 x 1/6 the net must be using the marked values."""
    config = Config(
        model=ModelConfig(model=name, hidden=16),
        task=TaskConfig(task="adding", seq_len=10, batch_size=64),
        optim=OptimConfig(learning_rate=1e-2, schedule="constant"),
        run=RunConfig(steps=800, eval_every=800, log_every=100, eval_batches=16, progress=False),
    )
    result = train.train_and_evaluate(config)
    assert isinstance(result["params"], cells.get(name).Params)
    assert result["final_eval"]["mse"] < 0.3 * result["baseline"]["mse"]
