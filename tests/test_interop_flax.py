"""The Elman cell in flax.linen.RNN and flax.nnx.RNN computes what rnn_jax.unroll does; parameters convert both ways."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rnn_jax as rj
from rnn_jax.interop import flax as rj_flax

T, B, D, H, O = 7, 3, 4, 5, 2


def _flax_run(api, xs, activation, key):
    """(final state, outputs, the cell's ElmanParams) of a fresh cell in ``flax.linen.RNN`` or ``flax.nnx.RNN``."""
    if api == "linen":
        rnn = nn.RNN(rj_flax.ElmanCell(hidden_size=H, output_size=O, activation=activation), return_carry=True)
        variables = rnn.init(key, xs)
        return (*rnn.apply(variables, xs), rj_flax.from_flax(variables, path=("cell",)))
    cell = rj_flax.NnxElmanCell(D, H, O, activation=activation, rngs=nnx.Rngs(key))
    return (*nnx.RNN(cell, return_carry=True)(xs), cell.to_params())


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_flax_rnn_of_elman_cell_equals_unroll(key, activation, api):
    k_x, k_init = jax.random.split(key)
    xs = jax.random.normal(k_x, (B, T, D))  # flax's RNN is batch-first
    final, ys, params = _flax_run(api, xs, activation, k_init)
    run = rj.unroll(params, xs, activation=activation, time_major=False)
    np.testing.assert_allclose(ys, run.outputs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(final, run.final_state, rtol=1e-6, atol=1e-6)


def test_rnn_jax_params_run_in_flax_with_lengths(key):
    """The other direction: parameters drawn by rnn_jax, run by flax with per-sequence lengths."""
    k_p, k_x = jax.random.split(key)
    params = rj.elman.init(k_p, D, H, O)
    xs = jax.random.normal(k_x, (B, T, D))
    lengths = jnp.array([7, 3, 5], jnp.int32)
    rnn = nn.RNN(rj_flax.ElmanCell(hidden_size=H, output_size=O), return_carry=True)
    final, ys = rnn.apply(rj_flax.to_flax(params, path=("cell",)), xs, seq_lengths=lengths)
    _assert_equals_unroll_within_lengths(final, ys, params, xs, lengths)


def _assert_equals_unroll_within_lengths(final, ys, params, xs, lengths):
    """A batch-first flax run with ``seq_lengths`` against `rj.unroll` with ``lengths``."""
    run = rj.unroll(params, xs, lengths=lengths, time_major=False)
    np.testing.assert_allclose(final, run.final_state, rtol=1e-6, atol=1e-6)
    valid = np.asarray(rj.sequence_mask(lengths, T)).T  # [B, T]; flax leaves the outputs past the end unmasked
    np.testing.assert_allclose(np.asarray(ys)[valid], np.asarray(run.outputs)[valid], rtol=1e-6, atol=1e-6)


def test_round_trips_are_exact(key):
    params = rj.elman.init(key, D, H, O)
    back = rj_flax.from_flax(rj_flax.to_flax(params))
    for name, a, b in zip(params._fields, params, back, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    variables = nn.RNN(rj_flax.ElmanCell(hidden_size=H, output_size=O)).init(key, jnp.zeros((B, T, D)))
    again = rj_flax.to_flax(rj_flax.from_flax(variables, path=("cell",)), path=("cell",))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, dict(variables)), again)


def test_elman_cell_equals_flax_simple_cell_where_the_layouts_match(key):
    """SimpleCell is Elman without a read-out: W_x = i.kernel, b_s = i.bias, W_s = h.kernel, W_y = I."""
    k_x, k_init = jax.random.split(key)
    xs = jax.random.normal(k_x, (B, T, D))
    simple = nn.RNN(nn.SimpleCell(features=H))
    variables = simple.init(k_init, xs)
    cell = variables["params"]["cell"]
    params = rj.ElmanParams(
        w_x=cell["i"]["kernel"], w_s=cell["h"]["kernel"], b_s=cell["i"]["bias"], w_y=jnp.eye(H), b_y=jnp.zeros(H)
    )
    expected = simple.apply(variables, xs)
    ours = nn.RNN(rj_flax.ElmanCell(hidden_size=H, output_size=H)).apply(rj_flax.to_flax(params, ("cell",)), xs)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


def test_cell_accepts_several_batch_axes_and_zero_carry(key):
    cell = rj_flax.ElmanCell(hidden_size=H, output_size=O)
    x = jax.random.normal(key, (2, 3, D))
    carry = cell.initialize_carry(key, x.shape)
    assert carry.shape == (2, 3, H) and not carry.any() and cell.num_feature_axes == 1
    variables = cell.init(key, carry, x)
    s, y = cell.apply(variables, carry, x)
    s_flat, y_flat = rj.elman.step(rj_flax.from_flax(variables), carry.reshape(6, H), x.reshape(6, D))
    np.testing.assert_array_equal(s, s_flat.reshape(2, 3, H))
    np.testing.assert_array_equal(y, y_flat.reshape(2, 3, O))


def test_from_flax_names_what_is_missing():
    with pytest.raises(ValueError, match="missing"):
        rj_flax.from_flax({"params": {"i": {}, "h": {}}})


# ------------------------------------------------------------------ flax.nnx


def test_rnn_jax_params_run_in_nnx_with_lengths_and_give_the_same_gradients(key):
    k_p, k_x = jax.random.split(key)
    params = rj.elman.init(k_p, D, H, O)
    xs = jax.random.normal(k_x, (B, T, D))
    lengths = jnp.array([7, 3, 5], jnp.int32)
    rnn = nnx.RNN(rj_flax.NnxElmanCell.from_params(params), return_carry=True)
    final, ys = rnn(xs, seq_lengths=lengths)
    _assert_equals_unroll_within_lengths(final, ys, params, xs, lengths)

    grads = nnx.grad(lambda model: jnp.sum(jnp.square(model(xs)[1])))(rnn)
    expected = jax.grad(lambda p: jnp.sum(jnp.square(rj.unroll(p, xs, time_major=False).outputs)))(params)
    for name in rj.ElmanParams._fields:
        np.testing.assert_allclose(grads["cell"][name][...], getattr(expected, name), rtol=1e-5, atol=1e-6)


def test_nnx_cell_round_trip_is_exact_and_equals_the_linen_cell(key):
    params = rj.elman.init(key, D, H, O)
    back = rj_flax.NnxElmanCell.from_params(params).to_params()
    for name, a, b in zip(params._fields, params, back, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    x = jax.random.normal(key, (2, 3, D))
    cell = rj_flax.NnxElmanCell.from_params(params)  # built abstractly, then given params: nothing left abstract
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(nnx.state(cell)))
    carry = cell.initialize_carry(x.shape)
    assert carry.shape == (2, 3, H) and not carry.any() and cell.num_feature_axes == 1
    linen = rj_flax.ElmanCell(hidden_size=H, output_size=O).apply(rj_flax.to_flax(params), carry, x)
    jax.tree.map(np.testing.assert_array_equal, cell(carry, x), linen)


# ------------------------------------------------------------------ bad input


def test_a_str_path_is_refused_and_a_missing_path_names_itself_and_what_is_there(key):
    """A str path was iterated ("cell" -> c/e/l/l) by to_flax and failed as KeyError 'c' in from_flax."""
    params = rj.elman.init(key, D, H, O)
    with pytest.raises(TypeError, match=r"path: expected a tuple of module names .*write \('cell',\)"):
        rj_flax.to_flax(params, path="cell")
    with pytest.raises(TypeError, match=r"path: expected a tuple of module names"):
        rj_flax.from_flax(rj_flax.to_flax(params, path=("cell",)), path="cell")
    with pytest.raises(KeyError, match=r"path=\('cell',\) not found: no 'cell' .*keys there: \['b_s', 'b_y'"):
        rj_flax.from_flax(rj_flax.to_flax(params), path=("cell",))
    with pytest.raises(KeyError, match=r"no 'inner' under \('cell',\); keys there: \['b_s'"):
        rj_flax.from_flax(rj_flax.to_flax(params, path=("cell",)), path=("cell", "inner"))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_params_of_a_gated_cell_are_refused_not_read_as_elman(key, cell):
    """from_flax(to_flax(lstm)) was ElmanParams with w_s [3, 12]; NnxElmanCell.from_params took them too."""
    params = rj.cells.get(cell).init(key, D, H, O)
    expected = f"params: expected ElmanParams, got {type(params).__name__}"
    with pytest.raises(TypeError, match=expected):
        rj_flax.to_flax(params)
    with pytest.raises(TypeError, match=expected):
        rj_flax.NnxElmanCell.from_params(params)
    with pytest.raises(ValueError, match=r"params.w_x: expected shape \[D, H\].*an LSTM's or GRU's"):
        rj_flax.from_flax({"params": dict(params._asdict())})


def test_elman_params_of_inconsistent_shapes_are_refused_by_field(key):
    params = rj.elman.init(key, D, H, O)._replace(b_s=jnp.zeros((1, H)))
    with pytest.raises(ValueError, match=r"params.b_s: expected rank 1"):
        rj_flax.to_flax(params)
    with pytest.raises(ValueError, match=r"params.b_s: expected rank 1"):
        rj_flax.NnxElmanCell.from_params(params)


BAD_OPTIONS = [
    ({"hidden": 0}, r"HIDDEN: expected a positive integer, got 0"),
    ({"out": 2.5}, r"OUT: expected a positive integer, got 2.5"),
    ({"activation": "tahn"}, r"activation: expected one of .*got 'tahn'"),
    ({"recurrent_init": "eye"}, r"recurrent_init: expected one of .*got 'eye'"),
    ({"param_dtype": jnp.int32}, r"param_dtype: expected a floating dtype, got int32"),
]


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_bad_cell_options_are_refused_at_construction(api, options, message):
    """ElmanCell(0, O) was a ZeroDivisionError at init; activation="tahn" constructed and failed at the first call;
    each error names the argument of the cell's own signature."""
    names = {"linen": ("hidden_size", "output_size"), "nnx": ("hidden_features", "out_features")}[api]
    message = message.replace("HIDDEN", names[0]).replace("OUT", names[1])
    options = dict(options)  # the parameters are shared by both apis
    hidden, out = options.pop("hidden", H), options.pop("out", O)
    with pytest.raises((ValueError, TypeError), match=message):
        if api == "linen":
            rj_flax.ElmanCell(hidden_size=hidden, output_size=out, **options)
        else:
            rj_flax.NnxElmanCell(D, hidden, out, rngs=nnx.Rngs(0), **options)


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize(
    ("carry_shape", "x_shape", "message"),
    [
        ((2, H + 1), (2, D), rf"carry: expected shape \[..., H\] = \(2, {H}\) .*got \(2, {H + 1}\)"),
        ((3, H), (2, D), rf"carry: expected shape \[..., H\] = \(2, {H}\) .*got \(3, {H}\)"),
        ((2, H), (2, D + 1), rf"(x|inputs): expected shape \[..., D\] with D = {D}, got \(2, {D + 1}\)"),
    ],
)
def test_carry_and_inputs_of_another_shape_are_named(key, api, carry_shape, x_shape, message):
    """A carry of width H + 1 was a reshape error, another batch a broadcast error, deep in the step."""
    params = rj.elman.init(key, D, H, O)
    carry, x = jnp.zeros(carry_shape), jnp.zeros(x_shape)
    with pytest.raises(ValueError, match=message):
        if api == "linen":
            rj_flax.ElmanCell(hidden_size=H, output_size=O).apply(rj_flax.to_flax(params), carry, x)
        else:
            rj_flax.NnxElmanCell.from_params(params)(carry, x)
