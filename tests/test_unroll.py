"""The scan unroll against the Python-loop oracle; masking; the three sequence shapes; bad input."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from tests.oracle import elman_loop

ACTIVATIONS = ["tanh", "sigmoid", "relu", "identity"]
T, B, D, H, O = 7, 3, 4, 5, 2


def _setup(key, dtype=jnp.float32, scale=0.9):
    k_p, k_x = jax.random.split(key)
    params = rj.elman.init(k_p, D, H, O, recurrent_scale=scale, dtype=dtype)
    # non-zero biases so that a wrong bias path shows
    params = params._replace(b_s=jnp.linspace(-0.3, 0.3, H, dtype=dtype), b_y=jnp.linspace(0.1, 0.2, O, dtype=dtype))
    xs = jax.random.normal(k_x, (T, B, D), dtype)
    return params, xs


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("unroll_factor", [1, 3, T])
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


@pytest.mark.parametrize("activation", ACTIVATIONS)
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


@pytest.mark.parametrize("activation", ACTIVATIONS)
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
    # the final state is the state at the last valid step, so its read-out is the many-to-one output
    chex.assert_trees_all_close(last, run.final_state @ params.w_y + params.b_y[None, :], atol=1e-6)
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
    ],
)
def test_bad_input_gets_a_clear_error(key, kwargs, message):
    params, xs = _setup(key)
    kwargs = {"xs": xs, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        rj.unroll(params, **kwargs)


def test_nan_input_passes_unchecked_by_default(key):
    """check_finite is opt-in: without it NaN propagates (the train loop then stops on the NaN loss)."""
    params, xs = _setup(key)
    out = rj.unroll(params, xs.at[0, 0, 0].set(jnp.nan)).outputs
    assert bool(jnp.isnan(out[0, 0]).all()) and bool(jnp.isfinite(out[:, 1:]).all())
