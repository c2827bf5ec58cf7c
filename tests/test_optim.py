"""The optimiser factory: clipping invariants, every rule and schedule, clip_fired, bad names."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnn_jax as rj
from rnn_jax.optim import learning_rate_schedule
from tests.stages import slow_unless


def _grads(key, scale):
    k1, k2 = jax.random.split(key)
    return {"a": scale * jax.random.normal(k1, (4, 3)), "b": scale * jax.random.normal(k2, (3,))}


def _clip_only(clip, threshold):
    """The chain with sgd(lr=1, no momentum) makes the update -clipped(g): the clip is visible directly."""
    config = rj.OptimConfig(
        optimizer="sgd", learning_rate=1.0, momentum=0.0, schedule="constant", clip=clip, clip_threshold=threshold
    )
    return rj.make_optimizer(config)


@pytest.mark.parametrize("scale", [0.01, 10.0])
def test_global_norm_clip_sets_the_norm_to_the_threshold_and_keeps_direction(key, scale):
    grads = _grads(key, scale)
    opt = _clip_only("global_norm", 1.0)
    updates, _ = opt.update(grads, opt.init(grads))
    clipped = jax.tree.map(lambda u: -u, updates)
    norm, new_norm = float(optax.tree.norm(grads)), float(optax.tree.norm(clipped))
    if norm > 1.0:
        np.testing.assert_allclose(new_norm, 1.0, rtol=1e-5)
    else:
        np.testing.assert_allclose(new_norm, norm, rtol=1e-6)
    flat = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
    flat_clipped = jnp.concatenate([g.ravel() for g in jax.tree.leaves(clipped)])
    cosine = float(flat @ flat_clipped / (jnp.linalg.norm(flat) * jnp.linalg.norm(flat_clipped)))
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-6)
    assert bool(rj.clip_fired(dataclasses.replace(rj.OptimConfig(), clip_threshold=1.0), grads)) == (norm > 1.0)


@pytest.mark.parametrize("clip", ["global_norm", "value"])
@pytest.mark.parametrize("factor", [0.5, 0.9, 1.1, 2.0])
def test_clip_fired_says_whether_the_clip_changes_the_gradients(key, clip, factor):
    """The oracle is the clip itself: `clip_fired` is True exactly when the clipped gradients differ from the
    gradients, at thresholds either side of the norm (or of the largest entry) that is not 1 (where a norm and its
    square, say, are on the same side)."""
    grads = _grads(key, 3.0)
    size = optax.tree.norm(grads) if clip == "global_norm" else max(jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grads))
    threshold = float(size) * factor
    opt = _clip_only(clip, threshold)
    updates, _ = opt.update(grads, opt.init(grads))
    pairs = zip(jax.tree.leaves(grads), jax.tree.leaves(updates), strict=True)
    changed = any(not np.allclose(-u, g, rtol=1e-6) for g, u in pairs)
    assert changed == (factor < 1)
    assert bool(rj.clip_fired(rj.OptimConfig(clip=clip, clip_threshold=threshold), grads)) == changed


def test_value_clip_bounds_every_element(key):
    grads = _grads(key, 10.0)
    opt = _clip_only("value", 5.0)
    updates, _ = opt.update(grads, opt.init(grads))
    for g, u in zip(jax.tree.leaves(grads), jax.tree.leaves(updates), strict=True):
        assert float(jnp.max(jnp.abs(u))) <= 5.0
        np.testing.assert_allclose(-u, jnp.clip(g, -5.0, 5.0))
    config = rj.OptimConfig(clip="value", clip_threshold=5.0)
    assert bool(rj.clip_fired(config, grads)) == bool(
        max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 5
    )
    assert not bool(rj.clip_fired(config, _grads(key, 0.01)))


def test_no_clip_passes_gradients_through(key):
    grads = _grads(key, 100.0)
    opt = _clip_only("none", 1.0)
    updates, _ = opt.update(grads, opt.init(grads))
    jax.tree.map(lambda g, u: np.testing.assert_allclose(-u, g), grads, updates)
    assert not bool(rj.clip_fired(rj.OptimConfig(clip="none"), grads))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adagrad", "rmsprop"])
@pytest.mark.parametrize(
    "schedule", slow_unless(["constant", "warmup_cosine"], ["constant", "cosine", "warmup_cosine", "exponential"])
)
def test_every_rule_and_schedule_descends_a_quadratic(standard_promotion, optimizer, schedule):
    config = rj.OptimConfig(optimizer=optimizer, learning_rate=0.05, schedule=schedule, warmup_steps=5)
    opt = rj.make_optimizer(config, total_steps=100)
    params = {"w": jnp.array([3.0, -2.0])}
    state = opt.init(params)
    loss = lambda p: jnp.sum(jnp.square(p["w"]))  # noqa: E731
    start = float(loss(params))
    for _ in range(100):
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert float(loss(params)) < 0.9 * start


def test_schedules_follow_optax():
    cosine = learning_rate_schedule(rj.OptimConfig(learning_rate=0.1, schedule="cosine"), 100)
    np.testing.assert_allclose([cosine(0), cosine(50), cosine(100)], [0.1, 0.05, 0.0], atol=1e-7)
    warm = learning_rate_schedule(rj.OptimConfig(learning_rate=0.1, schedule="warmup_cosine", warmup_steps=10), 100)
    np.testing.assert_allclose([warm(0), warm(5), warm(10)], [0.0, 0.05, 0.1], atol=1e-7)
    expo = learning_rate_schedule(rj.OptimConfig(learning_rate=0.1, schedule="exponential", decay_rate=0.1), 100)
    np.testing.assert_allclose(expo(100), 0.01, rtol=1e-5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimizer": "lbfgs"}, r"optimizer: expected 'sgd', 'adam', 'adagrad' or 'rmsprop', got 'lbfgs'"),
        ({"clip": "norm"}, r"clip: expected 'none', 'value' or 'global_norm', got 'norm'"),
        ({"schedule": "step"}, r"schedule: expected .* got 'step'"),
        ({"learning_rate": 0.0}, r"learning_rate: expected a finite value > 0, got 0.0"),
        ({"learning_rate": "1e-3"}, r"learning_rate: expected a finite value > 0, got '1e-3'"),  # YAML's 1e-3
        ({"learning_rate": float("inf")}, r"learning_rate: expected a finite value > 0, got inf"),
        ({"clip_threshold": -1.0}, r"clip_threshold: expected a finite value > 0, got -1.0"),
        # finite in Python, past float32's largest: NaN parameters, or numpy's "overflow encountered in cast"
        ({"learning_rate": 1e39}, r"learning_rate: expected at most 3.4e\+38 \(float32's largest\), got 1e\+39"),
        ({"learning_rate": 1e300}, r"learning_rate: expected at most 3.4e\+38 \(float32's largest\), got 1e\+300"),
        ({"clip_threshold": 1e300}, r"clip_threshold: expected at most 3.4e\+38 \(float32's largest\), got 1e\+300"),
        ({"optimizer": "sgd", "momentum": 1.5}, r"momentum: expected a value in \[0, 1\) \(0: plain SGD\), got 1.5"),
        ({"optimizer": "sgd", "momentum": float("nan")}, r"momentum: expected a value in \[0, 1\).*got nan"),
        ({"schedule": "cosine"}, r"total_steps: the 'cosine' schedule decays over the run and needs its length"),
        # a JAX scalar is not written to summary.json: the error says how to pass it (it said only "got Array(...)")
        ({"learning_rate": jnp.float32(1e-3)}, r"learning_rate: .*got Array\(0.001.*convert the array with float"),
    ],
)
def test_bad_optimiser_config_gets_a_clear_error(changes, message):
    with pytest.raises(ValueError, match=message):
        rj.make_optimizer(dataclasses.replace(rj.OptimConfig(), **changes))


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"clip": "norm"}, r"clip: expected 'none', 'value' or 'global_norm', got 'norm'"),
     ({"clip_threshold": float("nan")}, r"clip_threshold: expected a finite value > 0, got nan"),
     ({"clip": "value", "clip_threshold": -1.0}, r"clip_threshold: expected a finite value > 0, got -1.0"),
     ({"clip": "value", "clip_threshold": 1e39}, r"clip_threshold: expected at most 3.4e\+38 \(float32's largest\)")],
)  # fmt: skip
def test_clip_fired_refuses_the_clips_make_optimizer_refuses(key, changes, message):
    """clip_fired read clip="norm" and a NaN threshold as "not fired" and a negative one as "always fired"."""
    with pytest.raises(ValueError, match=message):
        rj.clip_fired(dataclasses.replace(rj.OptimConfig(), **changes), _grads(key, 1.0))


def test_a_config_that_is_no_optim_config_is_named_and_no_arrays_never_clip():
    for call in (lambda: rj.make_optimizer(None), lambda: rj.clip_fired({"clip": "value"}, {})):
        with pytest.raises(TypeError, match=r"config: expected an rnn_jax.OptimConfig, got (NoneType|dict)"):
            call()
    assert not bool(rj.clip_fired(rj.OptimConfig(clip="value", clip_threshold=1.0), {}))  # jnp.stack of nothing


@pytest.mark.parametrize(
    ("changes", "message"),
    [  # each once gave a NaN or constant learning rate, or a warm-up past the run's end, without a word
        ({"schedule": "exponential", "decay_rate": -0.5}, r"decay_rate: expected a finite factor > 0, got -0.5"),
        ({"schedule": "exponential", "decay_rate": 0.0}, r"decay_rate: expected a finite factor > 0, got 0.0"),
        ({"schedule": "exponential", "decay_rate": 1e42}, r"decay_rate: .* learning_rate x decay_rate = 1e\+39, past"),
        ({"schedule": "warmup_cosine", "warmup_steps": -1}, r"warmup_steps: expected an integer in \[0, .* got -1"),
        ({"schedule": "warmup_cosine", "warmup_steps": 10}, r"warmup_steps: expected an integer in \[0, .* got 10"),
    ],
)  # fmt: skip
def test_bad_schedule_options_get_a_clear_error(changes, message):
    with pytest.raises(ValueError, match=message):
        rj.make_optimizer(dataclasses.replace(rj.OptimConfig(), **changes), total_steps=10)


@pytest.mark.parametrize(
    ("learning_rate", "message"),
    [(float("nan"), r"learning_rate: expected a finite value > 0, got nan"),
     (1e39, r"learning_rate: expected at most 3.4e\+38 \(float32's largest\), got 1e\+39")],
)  # fmt: skip
def test_the_schedule_refuses_the_learning_rates_make_optimizer_refuses(learning_rate, message):
    """`learning_rate_schedule` (the learning rate the train loop logs) took a NaN or an overflowing rate."""
    with pytest.raises(ValueError, match=message):
        learning_rate_schedule(rj.OptimConfig(learning_rate=learning_rate))


def test_momentum_and_schedule_options_are_checked_only_where_they_apply():
    """An unused option's value is not refused: momentum with Adam, a decay rate with the constant schedule."""
    config = rj.OptimConfig(optimizer="adam", momentum=5.0, decay_rate=-1.0, warmup_steps=-3)
    rj.make_optimizer(config)


# the parameters {"a": [4, 3], "b": [3]} (15 elements), and gradients of another tree than theirs: same total size
# (optax.flatten updated with permuted gradients, silently) or not (a broadcast error deep inside the update rule)
OTHER_TREES = [
    pytest.param({"a": (3, 4), "b": (3,)}, "float32",
                 r"got float32\[3, 4\] at \['a'\] where params have float32\[4, 3\]", id="transposed"),
    pytest.param({"x": (12,), "y": (3,)}, "float32",
                 r"got a leaf at \['x'\] where params have one at \['a'\]", id="other-names"),
    pytest.param({"a": (4, 3)}, "float32", r"got no leaf where params have float32\[3\] at \['b'\]", id="fewer"),
    pytest.param({"a": (4, 3), "b": (3,), "c": (2,)}, "float32",
                 r"got an extra leaf float32\[2\] at \['c'\]", id="more"),
    pytest.param({"a": (4, 3), "b": (3,)}, "bfloat16",
                 r"got bfloat16\[4, 3\] at \['a'\] where params have float32\[4, 3\]", id="dtype"),
]  # fmt: skip


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(("shapes", "dtype", "message"), OTHER_TREES)
def test_gradients_of_another_tree_than_params_are_refused_by_path(key, shapes, dtype, message, jit):
    """optax.adam refuses them (its state has the parameters' tree); the flat optimiser state has not, so the
    update compares the gradients with ``params``: at trace time, so inside jit too."""
    opt = _clip_only("global_norm", 1.0)
    params = _grads(key, 1.0)
    grads = {name: jnp.ones(shape, dtype) for name, shape in shapes.items()}
    update = jax.jit(opt.update) if jit else opt.update
    with pytest.raises(
        ValueError, match=r"updates: expected the tree structure, shapes and dtypes of params; " + message
    ):
        update(grads, opt.init(params), params)


def test_without_params_gradients_of_another_size_than_the_state_are_refused(key):
    """Without ``params`` the update checks what the flat state records: the parameters' total size."""
    opt = rj.make_optimizer(rj.OptimConfig(optimizer="sgd", momentum=0.9))
    state = opt.init(_grads(key, 1.0))
    with pytest.raises(ValueError, match=r"updates: expected 15 elements in all .* got 14"):
        opt.update({"a": jnp.ones((14,))}, state)
    with pytest.raises(ValueError, match=r"updates: expected 15 elements in all .* got 16"):
        opt.update({"a": jnp.ones((16,))}, state, {"a": jnp.ones((16,))})  # a state of other parameters


def test_the_checked_optimiser_keeps_optax_flattens_state_and_arithmetic(standard_promotion, key):
    """The check adds no state (checkpoints of the flat state still resume) and changes no update."""
    config = rj.OptimConfig(optimizer="adam", clip="global_norm", clip_threshold=0.5)
    params, grads = _grads(key, 1.0), _grads(jax.random.fold_in(key, 1), 3.0)
    flat = optax.flatten(optax.chain(optax.clip_by_global_norm(0.5), optax.adam(learning_rate_schedule(config))))
    opt = rj.make_optimizer(config)
    assert jax.tree.structure(opt.init(params)) == jax.tree.structure(flat.init(params))
    ours, theirs = opt.update(grads, opt.init(params), params), flat.update(grads, flat.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
