"""The jitted train step and the train loop."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnn_jax as rj
from rnn_jax import tasks, train
from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax's adam (see conftest)


def _config(**sections) -> Config:
    base = Config(
        model=ModelConfig(hidden=8),
        task=TaskConfig(task="adding", seq_len=10, batch_size=16),
        optim=OptimConfig(learning_rate=1e-2, schedule="constant"),
        run=RunConfig(steps=20, eval_every=10, log_every=5, eval_batches=2, progress=False),
    )
    return dataclasses.replace(base, **{k: dataclasses.replace(getattr(base, k), **v) for k, v in sections.items()})


def _state_and_step(config):
    task = tasks.make(config.task)
    params = train.init_params(config.model, task, jax.random.key(0))
    optimizer = rj.make_optimizer(config.optim, config.run.steps)
    state = train.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    return task, state, train.make_train_step(config, task, optimizer)


def test_one_step_changes_every_parameter_and_reports_the_unclipped_norm():
    config = _config(optim={"clip": "global_norm", "clip_threshold": 1e-3})
    task, state, step = _state_and_step(config)
    before = jax.device_get(state.params)
    batch = task.batch(jax.random.key(1), 16)
    grads = jax.grad(train.make_loss_fn(config.model, task))(state.params, batch)
    state, metrics = step(state, batch)
    for name, old, new in zip(before._fields, before, state.params, strict=True):
        assert not np.allclose(old, new), f"{name} did not change"
    np.testing.assert_allclose(metrics.grad_norm, optax.tree.norm(grads), rtol=1e-5)
    assert bool(metrics.clipped) and bool(metrics.finite) and int(state.step) == 1


def test_train_step_is_traced_once():
    config = _config()
    task, state, step = _state_and_step(config)
    for i in range(4):
        state, _ = step(state, task.batch(jax.random.key(i), 16))
    assert step._cache_size() == 1


def test_a_non_finite_step_is_not_applied():
    config = _config()
    task, state, step = _state_and_step(config)
    batch = task.batch(jax.random.key(1), 16)
    poisoned = batch._replace(inputs=batch.inputs.at[0, 0, 0].set(jnp.nan))
    before = jax.device_get(state)
    state, metrics = step(state, poisoned)
    assert not bool(metrics.finite)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), before)


def test_divergence_stops_the_run_with_the_step_and_keeps_what_was_written(tmp_path):
    # a linear recurrence with spectral radius 3 over 90 steps overflows float32 (3**90 ~ 1e43) at once
    config = _config(
        model={"activation": "identity", "recurrent_init": "glorot_normal", "spectral_radius": 3.0},
        task={"seq_len": 90},
        optim={"clip": "none"},
    )
    with pytest.raises(train.TrainingDiverged, match=r"training diverged at step 1: loss = (inf|nan)") as info:
        train.train_and_evaluate(config, str(tmp_path))
    assert info.value.step == 1 and info.value.params is not None
    assert all(bool(jnp.isfinite(p).all()) for p in info.value.params)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 1
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["kind"] == "diverged" and lines[-1]["step"] == 1


def test_runs_are_deterministic_for_a_seed():
    config = _config()
    a, b = train.train_and_evaluate(config), train.train_and_evaluate(config)
    jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
    assert a["final_eval"] == b["final_eval"]
    c = train.train_and_evaluate(_config(run={"seed": 1}))
    assert c["final_eval"] != a["final_eval"]


def test_files_and_records(tmp_path):
    config = _config()
    summary = train.train_and_evaluate(config, str(tmp_path))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [5, 10, 15, 20]
    assert [r["step"] for r in lines if r["kind"] == "eval"] == [10, 20]
    assert {"loss", "grad_norm", "clip_fraction", "learning_rate"} <= set(lines[0])
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["status"] == "completed" and written["config"] == config.to_dict()
    assert written["final_eval"] == summary["final_eval"] and written["steps_per_second"] > 0


def test_temporal_xor_learns_the_predictable_bits():
    """Chance is 1/2 on every bit; a net that learned XOR is near-perfect on every third bit and
    stays at chance on the coin flips (which no model can predict). 0.9 and [0.4, 0.6] leave room
    for the 2048 held-out sequences' sampling noise (+-0.01) while a non-learner cannot pass."""
    config = _config(
        model={"hidden": 8},
        task={"task": "xor", "seq_len": 30, "batch_size": 32},
        run={"steps": 1500, "eval_every": 1500, "log_every": 100, "eval_batches": 64},
    )
    result = train.train_and_evaluate(config)["final_eval"]
    assert result["accuracy_xor_bits"] >= 0.9
    assert 0.4 <= result["accuracy_other_bits"] <= 0.6
    assert result["loss"] < 0.55  # chance is ln 2 = 0.693; the best possible is (2/3) ln 2 = 0.462


@pytest.mark.parametrize("min_len", [None, 6])
def test_adding_problem_beats_the_constant_baseline(min_len):
    """The constant predictor scores MSE 1/6; below 0.3 x 1/6 = 0.05 the net must be using the marked values."""
    config = _config(
        model={"hidden": 32},
        task={"seq_len": 10, "min_len": min_len, "batch_size": 64},
        run={"steps": 1500, "eval_every": 1500, "log_every": 100, "eval_batches": 16},
    )
    result = train.train_and_evaluate(config)
    assert result["final_eval"]["mse"] < 0.3 * result["baseline"]["mse"]


@pytest.mark.parametrize("dtype", ["bfloat16", pytest.param("float64", marks=pytest.mark.slow)])
def test_other_dtypes_train(dtype):
    with jax.enable_x64(dtype == "float64"):
        result = train.train_and_evaluate(_config(model={"dtype": dtype}, run={"steps": 200, "eval_every": 200}))
        assert all(leaf.dtype == train.DTYPES[dtype] for leaf in result["params"])
    assert result["final_eval"]["loss"] < result["baseline"]["loss"]


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"run": {"steps": 0}}, r"steps: expected a positive integer, got 0"),
        ({"task": {"batch_size": -2}}, r"batch_size: expected a positive integer, got -2"),
        ({"model": {"hidden": 0}}, r"hidden: expected a positive integer, got 0"),
        ({"model": {"model": "transformer"}}, r"model: expected one of \[.elman., .lstm., .gru.\], got .transformer."),
        ({"model": {"precision": "float16"}}, r"precision: expected one of \['float32', 'bfloat16'\], got 'float16'"),
        ({"optim": {"optimizer": "lion"}}, r"optimizer: expected .*got 'lion'"),
        # options that nothing would read, which a run ignored without a word
        ({"optim": {"momentum": 0.5}}, r"momentum: read only with optimizer 'sgd', got optimizer 'adam'"),
        ({"optim": {"decay_rate": 0.5}}, r"decay_rate: read only with schedule 'exponential', got schedule 'constant'"),
        ({"optim": {"warmup_steps": 3}}, r"warmup_steps: read only with schedule 'warmup_cosine'"),
        ({"optim": {"clip": "none", "clip_threshold": 5.0}}, r"clip_threshold: read only with clip 'value' or 'glob"),
        ({"run": {"tbptt_reset_every": 2}}, r"tbptt_reset_every: resets the state carried by truncated BPTT; needs"),
        ({"run": {"tbptt_reset_every": 0}}, r"tbptt_reset_every: expected a positive integer, got 0"),
    ],
)
def test_bad_config_gets_a_clear_error(sections, message):
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(_config(**sections))


@pytest.mark.parametrize(
    ("sections", "message"),
    [({"model": {"bidirectional": "no"}}, r"bidirectional: expected True or False, got 'no'"),
     ({"task": {"task": "numbers", "reverse_source": "false"}}, r"reverse_source: expected True or False, got 'fa"),
     ({"run": {"progress": 1}}, r"progress: expected True or False, got 1")],
)  # fmt: skip
def test_a_bool_option_given_anything_else_is_a_type_error(sections, message):
    """A string is truthy: bidirectional="no" (a config file's "no", quoted) built a bidirectional network."""
    with pytest.raises(TypeError, match=message):
        train.train_and_evaluate(_config(**sections))


def test_tbptt_over_the_xor_stream_learns():
    """TBPTT(3, 6) over one long stream per sequence: the XOR bits are learned (chance 0.5), the state is carried."""
    config = _config(
        task={"task": "xor", "seq_len": 30, "batch_size": 32},
        optim={"learning_rate": 1e-2},
        run={"steps": 1000, "eval_every": 1000, "log_every": 100, "eval_batches": 32, "tbptt_k1": 3, "tbptt_k2": 6},
    )
    result = train.train_and_evaluate(config)
    assert result["final_eval"]["accuracy_xor_bits"] >= 0.9
    assert result["config"]["run"]["tbptt_k1"] == 3


def test_tbptt_updates_equal_the_library_truncated_gradients():
    """The train loop's first TBPTT update applies exactly bptt.tbptt_gradients' first window gradient (SGD, lr 1)."""
    from rnn_jax import bptt

    config = _config(
        task={"task": "xor", "seq_len": 12, "batch_size": 4},
        optim={"optimizer": "sgd", "momentum": 0.0, "learning_rate": 1.0, "clip": "none"},
        run={"steps": 1, "eval_every": 1, "log_every": 1, "tbptt_k1": 2, "tbptt_k2": 4},
    )
    task = tasks.make(config.task)
    k_init, k_train, _ = train._keys(config.run.seed)
    params = train.init_params(config.model, task, k_init)
    stream = task.stream(k_train, 4, 2, jnp.float32)
    _, grads, _ = bptt.tbptt_gradients(params, stream.inputs, stream.targets, 2, 4, loss="cross_entropy")
    after = train.train_and_evaluate(config)["params"]
    want = jax.tree.map(lambda p, g: p - g[0], params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), after, want)


@pytest.mark.parametrize(
    ("run", "task", "message"),
    [
        ({"tbptt_k1": 2}, {"task": "adding"}, r"tbptt_k1: the 'adding' task has no stream to truncate"),
        ({"tbptt_k2": 2}, {"task": "xor"}, r"tbptt_k2: needs tbptt_k1 as well"),
        ({"tbptt_k1": 3, "tbptt_k2": 2}, {"task": "xor"}, r"k1 <= k2"),
    ],
)
def test_bad_tbptt_options_get_clear_errors(run, task, message):
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(_config(run=run, task=task))


def test_tbptt_reset_every_starts_windows_from_s0():
    """With --tbptt-reset-every 3, updates 1, 4, 7, ... start from s_0 whatever state is carried in; others do not."""
    config = _config(
        task={"task": "xor", "seq_len": 12, "batch_size": 2},
        run={"steps": 6, "tbptt_k1": 2, "tbptt_reset_every": 3},
    )
    task = tasks.make(config.task)
    params = train.init_params(config.model, task, jax.random.key(0))
    optimizer = rj.make_optimizer(config.optim, config.run.steps)
    advance, zero = train._make_advance(config, task, optimizer, params, jax.random.key(1), jnp.float32)
    state = train.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    other = jnp.full_like(zero, 0.5)

    def after(step, carried):
        new_state, new_carried, metrics = advance(jax.tree.map(jnp.copy, state), carried, step)
        return jax.device_get((new_state.params, new_carried, metrics.loss))

    jax.tree.map(np.testing.assert_array_equal, after(4, other), after(4, zero))  # reset: the carry is ignored
    assert float(after(5, other)[2]) != float(after(5, zero)[2])  # no reset: the carry matters
