"""The temporal-order task of Pascanu et al. (2013): its generator, metrics, registration and learnability."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import tasks, train
from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig


@pytest.mark.parametrize("seq_len", [10, 37, 100])
def test_batch_follows_the_generator(key, seq_len):
    task = tasks.TemporalOrder(seq_len=seq_len)
    batch = task.batch(key, 256)
    assert batch.inputs.shape == (seq_len, 256, 6) and batch.targets.shape == (seq_len, 256)
    symbols = np.argmax(np.asarray(batch.inputs), axis=-1)  # [T, B]
    np.testing.assert_array_equal(np.asarray(batch.inputs).sum(-1), 1.0)  # one-hot
    (low1, high1), (low2, high2) = task.windows()
    for b in range(256):
        relevant = np.flatnonzero(symbols[:, b] < 2)
        assert relevant.size == 2, "exactly two A/B symbols"
        assert low1 <= relevant[0] < high1 and low2 <= relevant[1] < high2
        want = 2 * symbols[relevant[0], b] + symbols[relevant[1], b]
        assert int(batch.targets[-1, b]) == want
    assert np.asarray(batch.mask).sum(axis=0).tolist() == [1] * 256 and bool(batch.mask[-1].all())
    counts = np.bincount(np.asarray(batch.targets[-1]), minlength=4)
    assert counts.min() > 256 / 4 * 0.6  # the four classes all occur, roughly equally


def test_windows_are_those_of_the_paper():
    assert tasks.TemporalOrder(seq_len=100).windows() == ((10, 20), (50, 60))


def test_metrics_and_baseline(key):
    task = tasks.TemporalOrder(seq_len=20)
    batch = task.batch(key, 64)
    perfect = 10.0 * jax.nn.one_hot(batch.targets, 4)
    assert float(task.metrics(perfect, batch)["accuracy"]) == 1.0
    uniform = jnp.zeros((20, 64, 4))
    np.testing.assert_allclose(tasks.loss("cross_entropy", uniform, batch), task.baseline()["loss"], rtol=1e-6)


def test_registered_and_rejects_min_len():
    assert isinstance(tasks.make(TaskConfig(task="temporal_order", seq_len=20)), tasks.TemporalOrder)
    with pytest.raises(ValueError, match=r"min_len: only the adding task draws lengths; temporal_order has its own"):
        tasks.make(TaskConfig(task="temporal_order", seq_len=20, min_len=12))
    with pytest.raises(ValueError, match=r"seq_len: the temporal-order task needs at least 10 steps, got 5"):
        tasks.TemporalOrder(seq_len=5)


@pytest.mark.slow
@pytest.mark.usefixtures("standard_promotion")  # optax's adam
def test_lstm_learns_the_task_at_small_length():
    config = Config(
        model=ModelConfig(model="lstm", hidden=16),
        task=TaskConfig(task="temporal_order", seq_len=20, batch_size=64),
        optim=OptimConfig(learning_rate=1e-2),
        run=RunConfig(steps=600, eval_every=600, log_every=100, eval_batches=16, progress=False),
    )
    result = train.train_and_evaluate(config)["final_eval"]
    assert result["accuracy"] > 0.9  # chance is 0.25
