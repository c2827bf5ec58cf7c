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
    r"""
    import dataclasses, json, re
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_numpy_rank_promotion", "raise")
    from rnn_jax import distributed, tasks
    from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig
    from rnn_jax.train import train_and_evaluate

    def config(model, task, devices, layers=None, **run):
        return Config(
            model=ModelConfig(model=model, hidden=8, **(layers or {})),
            task=TaskConfig(task=task, seq_len=12, batch_size=8),
            optim=OptimConfig(learning_rate=1e-2),
            run=RunConfig(steps=12, eval_every=6, log_every=3, eval_batches=2, progress=False, devices=devices, **run),
        )

    def all_reduces(hlo):  # {"in_loops": all-reduces inside a while loop's body, "outside": the others}
        computations, name = {}, None
        for line in hlo.splitlines():
            if line and not line.startswith(" ") and line.rstrip().endswith("{"):
                name = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
            computations.setdefault(name, []).append(line)
        bodies = {b.lstrip("%") for line in hlo.splitlines() for b in re.findall(r"body=(%?[\w.\-]+)", line)}

        def count(names):
            return sum(" all-reduce(" in line for n in names for line in computations.get(n, []))

        return {"in_loops": count({"%" + b for b in bodies} | bodies), "outside": count(set(computations) - bodies)}

    out = {"device_count": jax.device_count(), "runs": {}}
    for name, model, task, run in [
        ("elman-adding", "elman", "adding", {}),
        ("gru-adding", "gru", "adding", {}),
        ("lstm-xor-tbptt", "lstm", "xor", {"tbptt_k1": 4, "tbptt_k2": 6}),
        ("lstm-deep-bidirectional", "lstm", "adding", {"layers": {"layers": 2, "bidirectional": True}}),
        ("elman-deep-dropout", "elman", "adding", {"layers": {"layers": 2, "dropout": 0.2}}),  # GSPMD's gradient
    ]:
        results = {}
        for devices in (1, 4):
            summary = train_and_evaluate(config(model, task, devices, **run))
            results[devices] = {
                "losses": [r["loss"] for r in summary["records"]],
                "params": [np.asarray(p).tolist() for p in jax.tree.leaves(summary["params"])],
                "param_devices": len(jax.tree.leaves(summary["params"])[0].sharding.device_set),
            }
        out["runs"][name] = results

    mesh = distributed.make_mesh(4)
    # where the hand-derived backward pass sums its weight gradients, for rows per device, in a split step and not
    from rnn_jax import bptt

    def sums_inside(rows):
        seen = []
        axis = jax.sharding.PartitionSpec(mesh.axis_names[0])
        local = lambda x: seen.append(bptt._sums_in_scan(rows)) or x  # noqa: E731
        split = jax.shard_map(local, mesh=mesh, in_specs=axis, out_specs=axis, check_vma=False)
        jax.eval_shape(split, jax.ShapeDtypeStruct((4,), jnp.float32))
        return {"split": seen[0], "one_device": bptt._sums_in_scan(rows)}

    out["sums_inside"] = {rows: sums_inside(rows) for rows in (16, 32, 64)}
    task = tasks.make(TaskConfig(task="adding", seq_len=5, batch_size=8))
    placed = distributed.shard_batch(task.batch(jax.random.key(0), 8), mesh)
    out["inputs_shard_shapes"] = sorted({s.data.shape for s in placed.inputs.addressable_shards})
    out["lengths_shard_shapes"] = sorted({s.data.shape for s in placed.lengths.addressable_shards})
    out["inputs_spec"] = list(placed.inputs.sharding.spec)
    out["inputs_devices"] = len(placed.inputs.sharding.device_set)

    # the data-parallel gradient equals the whole batch's, in float64, with shards holding 6, 1, 0 and 3 scored steps
    from rnn_jax import cells, unroll  # the function (rnn_jax.unroll.unroll)

    def loss_of(cell, backward):
        def loss_fn(params, batch):
            run = unroll(params, batch.inputs, lengths=batch.lengths, cell=cells.get(cell), backward=backward)
            return tasks.loss("squared_error", run.outputs, batch)
        return loss_fn

    gradients = {}
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(1), 4)
        t, b, d, o = 6, 8, 3, 2
        mask = np.zeros((t, b), bool)  # two sequences per device; scored steps per device: 6, 1, 0, 3
        mask[:3, 0:2] = True
        mask[2, 3] = True
        mask[1:4, 7] = True
        lengths = np.array([6, 6, 2, 3, 6, 1, 4, 5], np.int32)
        batch = tasks.Batch(jax.random.normal(keys[0], (t, b, d), jnp.float64),
                            jax.random.normal(keys[1], (t, b, o), jnp.float64), jnp.asarray(mask), jnp.asarray(lengths))
        placed = distributed.shard_batch(batch, mesh)
        counts = [int(mask[:, 2 * k:2 * k + 2].sum()) for k in range(4)]
        for cell, backward in [("elman", "bptt"), ("elman", "autodiff"), ("lstm", "bptt"), ("gru", "autodiff")]:
            params = cells.get(cell).init(keys[2], d, 5, o, dtype=jnp.float64)
            whole = jax.jit(jax.value_and_grad(loss_of(cell, backward)))(params, batch)
            split_fn = jax.jit(distributed.value_and_grad(loss_of(cell, backward), mesh))
            split = split_fn(distributed.replicate(params, mesh), placed)
            hlo = split_fn.lower(distributed.replicate(params, mesh), placed).compile().as_text()
            gradients[f"{cell}-{backward}"] = {
                "error": max(float(np.max(np.abs(np.asarray(a) - np.asarray(w))) / np.max(np.abs(np.asarray(w))))
                             for a, w in zip(jax.tree.leaves(split), jax.tree.leaves(whole))),
                "all_reduces": all_reduces(hlo),
            }
        from rnn_jax import bptt

        default_min_batch, bptt.CPU_SUM_IN_SCAN_MIN_BATCH = bptt.CPU_SUM_IN_SCAN_MIN_BATCH, 0  # sums inside the scan
        gspmd = jax.jit(jax.value_and_grad(loss_of("elman", "bptt")))
        gradients["gspmd-elman-bptt"] = {"all_reduces": all_reduces(
            gspmd.lower(distributed.replicate(cells.get("elman").init(keys[2], d, 5, o, dtype=jnp.float64), mesh),
                        placed).compile().as_text())}
        bptt.CPU_SUM_IN_SCAN_MIN_BATCH = default_min_batch
    out["gradients"] = gradients
    out["scored_per_shard"] = counts

    # the TBPTT update's all-reduces (an LSTM: its carried state is a pair)
    from rnn_jax import bptt, train

    tbptt = config("lstm", "xor", 4, tbptt_k1=4, tbptt_k2=6)
    xor = tasks.make(tbptt.task)
    optimizer = train.make_optimizer(tbptt.optim, tbptt.run.steps)
    params = train.init_params(tbptt.model, xor, jax.random.key(0))
    stream = xor.stream(jax.random.key(1), 8, 16, jnp.float32)
    padded = distributed.shard((bptt.pad_stream(stream.inputs, 4, 6), bptt.pad_stream(stream.targets, 4, 6)), mesh, 1)
    state = distributed.replicate(train.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params)), mesh)
    entering = distributed.shard(cells.get("lstm").initial_state(params, 8), mesh, 0)
    step = train.make_tbptt_step(tbptt, xor, optimizer, 4, 6, mesh)
    compiled = step.lower(state, entering, *padded, jnp.asarray(0, jnp.int32)).compile()
    out["tbptt_all_reduces"] = all_reduces(compiled.as_text())

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


@pytest.mark.slow  # one subprocess with 4 forced host devices trains 5 models twice (~30 s)
@pytest.mark.parametrize(
    "run", ["elman-adding", "gru-adding", "lstm-xor-tbptt", "lstm-deep-bidirectional", "elman-deep-dropout"]
)
def test_sharded_run_equals_one_device_run(four_devices, run):
    assert four_devices["device_count"] == 4
    one, four = four_devices["runs"][run]["1"], four_devices["runs"][run]["4"]
    assert one["param_devices"] == 1 and four["param_devices"] == 4  # replicated over all 4
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    assert len(one["params"]) == len(four["params"])
    for a, b in zip(one["params"], four["params"], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # one subprocess with 4 forced host devices trains 5 models twice (~30 s)
def test_placed_batch_is_split_along_the_batch_axis(four_devices):
    # B = 8 over 4 devices: each holds [T, 2, D] of the inputs and [2] of the lengths
    assert four_devices["inputs_devices"] == 4
    assert four_devices["inputs_spec"] == [None, "batch", None]
    assert four_devices["inputs_shard_shapes"] == [[5, 2, 2]]
    assert four_devices["lengths_shard_shapes"] == [[2]]


@pytest.mark.slow  # one subprocess with 4 forced host devices trains 5 models twice (~30 s)
@pytest.mark.parametrize("where", ["train", "place"])
def test_batch_that_does_not_divide_across_devices_is_a_clear_error(four_devices, where):
    message = four_devices["errors"][where]
    assert message is not None and "6" in message and "4 devices" in message


@pytest.mark.slow  # one subprocess with 4 forced host devices trains 5 models twice (~30 s)
def test_asking_for_more_devices_than_exist_is_a_clear_error(four_devices):
    message = four_devices["errors"]["too_many"]
    assert message is not None and "5 devices" in message and "sees 4" in message


def test_default_mesh_spans_every_device_and_checks_its_argument():
    assert distributed.make_mesh().size == jax.device_count()
    assert distributed.make_mesh(1).axis_names == ("batch",)
    with pytest.raises(ValueError, match="positive integer"):
        distributed.make_mesh(0)


@pytest.mark.slow  # one subprocess with 4 forced host devices trains 5 models twice (~30 s)
@pytest.mark.parametrize("case", ["elman-bptt", "elman-autodiff", "lstm-bptt", "gru-autodiff"])
def test_data_parallel_gradient_equals_the_whole_batch_gradient_in_float64(four_devices, case):
    """distributed.value_and_grad weights each device's mean by its scored steps (here 6, 1, 0 and 3)."""
    assert four_devices["scored_per_shard"] == [6, 1, 0, 3]
    assert four_devices["gradients"][case]["error"] < 1e-10


@pytest.mark.slow  # one subprocess with 4 forced host devices trains 5 models twice (~30 s)
@pytest.mark.parametrize("case", ["elman-bptt", "elman-autodiff", "lstm-bptt", "gru-autodiff"])
def test_data_parallel_gradient_is_one_all_reduce_after_the_backward_pass(four_devices, case):
    assert four_devices["gradients"][case]["all_reduces"] == {"in_loops": 0, "outside": 1}


@pytest.mark.slow  # one subprocess with 4 forced host devices trains 5 models twice (~30 s)
def test_weight_sums_go_inside_the_scan_from_fewer_rows_in_a_split_step(four_devices):
    """On a CPU the custom VJPs sum their weight gradients inside the reverse scan from
    `bptt.CPU_SUM_IN_SCAN_MIN_BATCH` (64) rows on one device, but from `CPU_SUM_IN_SCAN_MIN_BATCH_SPLIT` (32) rows per
    device inside a `jax.shard_map` over several (each device a core: the products after the scan lose the other)."""
    assert four_devices["sums_inside"] == {
        "16": {"split": False, "one_device": False},
        "32": {"split": True, "one_device": False},
        "64": {"split": True, "one_device": True},
    }


@pytest.mark.slow  # one subprocess with 4 forced host devices trains 5 models twice (~30 s)
def test_data_parallel_tbptt_update_is_one_all_reduce(four_devices):
    assert four_devices["tbptt_all_reduces"] == {"in_loops": 0, "outside": 1}


@pytest.mark.slow  # one subprocess with 4 forced host devices trains 5 models twice (~30 s)
def test_gspmd_alone_would_all_reduce_inside_the_backward_scan(four_devices):
    """Why `distributed.value_and_grad` exists, and proof that the count above can see a loop's all-reduce:
    left to GSPMD, the hand-derived backward scan's weight-gradient sums (summed inside the scan, as on a CPU from
    `bptt.CPU_SUM_IN_SCAN_MIN_BATCH` rows per device) are all-reduced at every step."""
    assert four_devices["gradients"]["gspmd-elman-bptt"]["all_reduces"]["in_loops"] >= 1


_PRESENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    from rnn_jax import distributed

    took = distributed.present_cpu_devices(3)
    count = jax.device_count()
    print(json.dumps({"took": took, "count": count, "again": distributed.present_cpu_devices(2),
                      "count_after": jax.device_count()}))
    """
)


@pytest.mark.slow  # two subprocesses that start JAX (~10 s)
@pytest.mark.parametrize("flags", ["", "--xla_force_host_platform_device_count=4"])
def test_present_cpu_devices_sets_the_count_before_jax_starts_and_never_after(flags):
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", _PRESENT_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if flags:  # the user's XLA_FLAGS count stands
        assert out == {"took": False, "count": 4, "again": False, "count_after": 4}
    else:
        assert out == {"took": True, "count": 3, "again": False, "count_after": 3}


@pytest.mark.slow  # a short training run in a subprocess (~10 s)
def test_cli_train_with_devices_makes_that_many_cpu_devices(tmp_path):
    """Without `present_cpu_devices`, --devices 2 on a one-device CPU would stop at make_mesh's error."""
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    argv = ["train", "--devices", "2", "--steps", "4", "--eval-every", "2", "--log-every", "2", "--hidden", "8",
            "--seq-len", "10", "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "rnn_jax", *argv], env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "run" / "summary.json") as f:
        summary = json.load(f)
    assert summary["config"]["run"]["devices"] == 2 and summary["status"] == "completed"


def test_present_cpu_devices_checks_its_argument():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="positive integer"):
            distributed.present_cpu_devices(bad)
