"""The built-in tasks generate what their docstrings say."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import tasks
from rnn_jax.config import TaskConfig


def test_temporal_xor_every_third_bit_is_the_xor_of_the_two_before(key):
    task = tasks.TemporalXOR(seq_len=31)
    batch = task.batch(key, 16)
    assert batch.inputs.shape == (31, 16, 1) and batch.targets.shape == (31, 16)
    stream = np.concatenate([np.asarray(batch.inputs[:1, :, 0], np.int32), np.asarray(batch.targets)])  # [T + 1, B]
    np.testing.assert_array_equal(stream[2::3], stream[0::3][: len(stream[2::3])] ^ stream[1::3][: len(stream[2::3])])
    # the targets flagged predictable are exactly those XOR bits: target t is stream bit t + 1
    assert [t for t in range(31) if task.predictable()[t]] == [t for t in range(31) if (t + 1) % 3 == 2]
    # inputs are the stream shifted by one step
    np.testing.assert_array_equal(np.asarray(batch.inputs[1:, :, 0], np.int32), np.asarray(batch.targets[:-1]))


def test_temporal_xor_free_bits_are_fair_coins(key):
    batch = tasks.TemporalXOR(seq_len=60).batch(key, 500)
    free = np.asarray(batch.targets)[~tasks.TemporalXOR(seq_len=60).predictable()]
    assert abs(free.mean() - 0.5) < 0.02


@pytest.mark.parametrize("min_len", [None, 6])
def test_adding_has_two_markers_one_per_half_and_the_sum_as_target(key, min_len):
    task = tasks.Adding(seq_len=12, min_len=min_len)
    batch = task.batch(key, 200)
    inputs, targets, mask, lengths = (np.asarray(a) for a in batch)
    assert inputs.shape == (12, 200, 2) and targets.shape == (12, 200, 1)
    for b in range(200):
        length = lengths[b]
        markers = np.flatnonzero(inputs[:, b, 1])
        assert len(markers) == 2 and markers[0] < length // 2 <= markers[1] < length
        np.testing.assert_allclose(targets[length - 1, b, 0], inputs[markers, b, 0].sum(), rtol=1e-6)
        assert mask[:, b].sum() == 1 and mask[length - 1, b]
        assert not inputs[length:, b].any()  # padding is zero
    if min_len is not None:
        assert lengths.min() >= 6 and lengths.max() <= 12 and len(set(lengths.tolist())) > 1


def test_adding_constant_baseline_is_one_sixth(key):
    batch = tasks.Adding(seq_len=10).batch(key, 20000)
    constant = jnp.ones_like(batch.targets)
    mse = float(tasks.loss("squared_error", constant, batch))
    np.testing.assert_allclose(mse, tasks.Adding().baseline()["mse"], rtol=0.03)


def test_batches_are_a_pure_function_of_the_key(key):
    task = tasks.Adding(seq_len=8, min_len=4)
    a, b = task.batch(key, 4), task.batch(key, 4)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    c = task.batch(jax.random.key(1), 4)
    assert not np.array_equal(a.inputs, c.inputs)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            TaskConfig(task="copy"),
            r"task: expected one of \['adding', 'xor', 'temporal_order', .*'japanese-vowels'\], got 'copy'",
        ),
        (TaskConfig(task="xor", min_len=3), r"min_len: the xor task has fixed-length streams"),
        (TaskConfig(task="adding", seq_len=10, min_len=11), r"min_len: expected a value in \[2, seq_len=10\], got 11"),
        (TaskConfig(task="adding", seq_len=0), r"seq_len: expected a positive integer, got 0"),
        # with T = 1 no target is an XOR bit: accuracy_xor_bits was a mean of nothing, NaN in metrics.jsonl
        (
            TaskConfig(task="xor", seq_len=1),
            r"seq_len: the xor task needs at least 2 steps \(a bit to predict\), got 1$",
        ),
        # these two tasks set their own lengths: --seq-len was ignored without a word
        (TaskConfig(task="numbers", seq_len=10), r"seq_len: the numbers task's sequences have their own lengths"),
        (TaskConfig(task="japanese-vowels", seq_len=10), r"seq_len: the japanese-vowels task's sequences have their"),
    ],
)
def test_bad_task_config_gets_a_clear_error(config, message):
    with pytest.raises(ValueError, match=message):
        tasks.make(config)


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"task": "adding"}, "T=50, B=64"),
        ({"task": "adding", "min_len": 10}, "T=10..50, B=64"),
        ({"task": "numbers", "max_value": 99, "reverse_source": True}, "numbers 0..99, source reversed, B=64"),
        ({"task": "japanese-vowels", "batch_size": 16}, "the recorded lengths, B=16"),
    ],
)
def test_run_headers_describe_the_sequences_each_task_really_has(options, text):
    """The numbers and Japanese-vowels tasks ignore seq_len, so the headers do not print it as their T."""
    assert tasks.describe(TaskConfig(**options)) == text


TASK_OPTIONS = [{"task": "adding", "seq_len": 8}, {"task": "xor", "seq_len": 8}, {"task": "temporal_order"},
                {"task": "numbers"}, {"task": "shakespeare", "seq_len": 8}, {"task": "sunspots", "seq_len": 8},
                {"task": "japanese-vowels"}]  # fmt: skip


@pytest.mark.parametrize("options", TASK_OPTIONS, ids=[o["task"] for o in TASK_OPTIONS])
def test_every_tasks_batch_names_a_bad_key_or_batch_size(key, options):
    """``task.batch(3, 4)`` failed inside JAX ("invalid PRNG key data ... Got 3"), a batch size of -1 or 2.5 in a
    shape error, and 0 made an empty batch (whose mean loss is NaN); each now names its argument."""
    task = tasks.make(TaskConfig(**options))
    with pytest.raises(TypeError, match=r"key: expected a JAX PRNG key .*, got int 3"):
        task.batch(3, 4)
    with pytest.raises(TypeError, match=r"key: expected a JAX PRNG key .*, got key<fry> array of shape \(2,\)"):
        task.batch(jax.random.split(key), 4)
    for size in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=rf"batch_size: expected a positive integer, got {size!r}"):
            task.batch(key, size)
    if hasattr(task, "stream"):
        with pytest.raises(ValueError, match="length: expected a positive integer, got 0"):
            task.stream(key, 2, 0)
        assert task.stream(key, 2, 5).inputs.shape[:2] == (5, 2)
    batch = jax.jit(task.batch, static_argnums=1)(key, 2)  # a traced key passes
    assert {leaf.shape[-1] if leaf.ndim == 1 else leaf.shape[1] for leaf in jax.tree.leaves(batch)} == {2}


SHORTEST = [{"task": "adding", "seq_len": 2}, {"task": "adding", "seq_len": 2, "min_len": 2},
            {"task": "xor", "seq_len": 2}, {"task": "temporal_order", "seq_len": 10},
            {"task": "shakespeare", "seq_len": 1}, {"task": "sunspots", "seq_len": 1},
            {"task": "japanese-vowels"}]  # fmt: skip


@pytest.mark.parametrize("options", SHORTEST, ids=[str(list(o.values())) for o in SHORTEST])
def test_every_tasks_metrics_are_finite_at_its_shortest_legal_length(key, options):
    """A metric that averages over no step is NaN (the xor task's at T = 1 was, in metrics.jsonl and summary.json):
    at each task's shortest accepted ``seq_len`` every metric of a training batch and of the held-out splits is
    finite, for any outputs."""
    task = tasks.make(TaskConfig(**options))
    splits = ("validation", "test") if hasattr(task, "eval_batch") else ()
    batches = [task.batch(key, 2), *(task.eval_batch(split) for split in splits)]
    for batch in batches:
        outputs = jax.random.normal(key, batch.targets.shape[:2] + (task.output_size,))
        for name, value in task.metrics(outputs, batch).items():
            assert np.isfinite(float(value)), (name, float(value))


def test_an_xor_stream_may_be_one_step_long(key):
    """Truncated BPTT draws a stream of steps * k1 bits, 1 with --steps 1 --tbptt-k1 1: the length check of the
    task's ``seq_len`` (>= 2) does not apply to it."""
    stream = tasks.TemporalXOR().stream(key, 3, 1)
    assert stream.inputs.shape == (1, 3, 1) and stream.targets.shape == (1, 3)
    np.testing.assert_array_equal(stream.targets, tasks.TemporalXOR(seq_len=2).batch(key, 3).targets[:1])
