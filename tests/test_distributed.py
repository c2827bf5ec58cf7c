"""Data-parallel training: a run sharded over 4 forced CPU devices equals the 1-device run.

JAX fixes its device count when it starts, so the multi-device checks run once in a subprocess
with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` and report back as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from rnn_jax import distributed

_SCRIPT = textwrap.dedent(
    """
    import dataclasses, json
    import jax
    import numpy as np

    jax.config.update("jax_numpy_rank_promotion", "raise")
    from rnn_jax import distributed, tasks
    from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig
    from rnn_jax.train import train_and_evaluate

    def config(model, task, devices, **run):
        return Config(
            model=ModelConfig(model=model, hidden=8),
            task=TaskConfig(task=task, seq_len=12, batch_size=8),
            optim=OptimConfig(learning_rate=1e-2),
            run=RunConfig(steps=12, eval_every=6, log_every=3, eval_batches=2, progress=False, devices=devices, **run),
        )

    out = {"device_count": jax.device_count(), "runs": {}}
    for name, model, task, run in [
        ("elman-adding", "elman", "adding", {}),
        ("gru-adding", "gru", "adding", {}),
        ("lstm-xor-tbptt", "lstm", "xor", {"tbptt_k1": 4, "tbptt_k2": 6}),
    ]:
        results = {}
        for devices in (1, 4):
            summary = train_and_evaluate(config(model, task, devices, **run))
            results[devices] = {
                "losses": [r["loss"] for r in summary["records"]],
                "params": [np.asarray(p).tolist() for p in summary["params"]],
                "param_devices": len(summary["params"].w_s.sharding.device_set),
            }
        out["runs"][name] = results

    mesh = distributed.make_mesh(4)
    task = tasks.make(TaskConfig(task="adding", seq_len=5, batch_size=8))
    placed = distributed.shard_batch(task.batch(jax.random.key(0), 8), mesh)
    out["inputs_shard_shapes"] = sorted({s.data.shape for s in placed.inputs.addressable_shards})
    out["lengths_shard_shapes"] = sorted({s.data.shape for s in placed.lengths.addressable_shards})
    out["inputs_spec"] = list(placed.inputs.sharding.spec)
    out["inputs_devices"] = len(placed.inputs.sharding.device_set)

    errors = {}
    for label, call in [
        ("train", lambda: train_and_evaluate(dataclasses.replace(
            config("elman", "adding", 4), task=TaskConfig(task="adding", seq_len=12, batch_size=6)))),
        ("place", lambda: distributed.shard_batch(task.batch(jax.random.key(0), 6), mesh)),
        ("too_many", lambda: distributed.make_mesh(5)),
    ]:
        try:
            call()
            errors[label] = None
        except ValueError as error:
            errors[label] = str(error)
    out["errors"] = errors
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def four_devices() -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line.removeprefix("RESULT"))


@pytest.mark.slow  # one subprocess with 4 forced host devices trains 3 models twice (~20 s)
@pytest.mark.parametrize("run", ["elman-adding", "gru-adding", "lstm-xor-tbptt"])
def test_sharded_run_equals_one_device_run(four_devices, run):
    assert four_devices["device_count"] == 4
    one, four = four_devices["runs"][run]["1"], four_devices["runs"][run]["4"]
    assert one["param_devices"] == 1 and four["param_devices"] == 4  # replicated over all 4
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    assert len(one["params"]) == len(four["params"])
    for a, b in zip(one["params"], four["params"], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # one subprocess with 4 forced host devices trains 3 models twice (~20 s)
def test_placed_batch_is_split_along_the_batch_axis(four_devices):
    # B = 8 over 4 devices: each holds [T, 2, D] of the inputs and [2] of the lengths
    assert four_devices["inputs_devices"] == 4
    assert four_devices["inputs_spec"] == [None, "batch", None]
    assert four_devices["inputs_shard_shapes"] == [[5, 2, 2]]
    assert four_devices["lengths_shard_shapes"] == [[2]]


@pytest.mark.slow  # one subprocess with 4 forced host devices trains 3 models twice (~20 s)
@pytest.mark.parametrize("where", ["train", "place"])
def test_batch_that_does_not_divide_across_devices_is_a_clear_error(four_devices, where):
    message = four_devices["errors"][where]
    assert message is not None and "6" in message and "4 devices" in message


@pytest.mark.slow  # one subprocess with 4 forced host devices trains 3 models twice (~20 s)
def test_asking_for_more_devices_than_exist_is_a_clear_error(four_devices):
    message = four_devices["errors"]["too_many"]
    assert message is not None and "5 devices" in message and "sees 4" in message


def test_default_mesh_spans_every_device_and_checks_its_argument():
    assert distributed.make_mesh().size == jax.device_count()
    assert distributed.make_mesh(1).axis_names == ("batch",)
    with pytest.raises(ValueError, match="positive integer"):
        distributed.make_mesh(0)
