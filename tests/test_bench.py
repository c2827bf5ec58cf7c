"""The benchmark harness (runs, validates, catches a wrong implementation) and the fast path's exactness.

No timing thresholds: speed is what the harness measures, not what a test asserts.
"""

from __future__ import annotations

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax import bench, cli

TINY = bench.Shape("elman", 3, 5, 2, 4, 2)


@pytest.fixture(scope="module")
def quick_result():
    with jax.numpy_dtype_promotion("standard"):  # optax's adam (see conftest)
        return bench.run(bench.shapes_for("quick", [], "elman"), repeats=2, min_sample_s=0.002)


def test_quick_preset_records_validate_against_the_schema(quick_result):
    bench.validate_records(quick_result.records)
    json.loads(json.dumps(quick_result.records))  # plain JSON
    impls = {bench._family(r["impl"]) for r in quick_result.records}
    expected = {"rnn-jax-autodiff", "rnn-jax-fast", "flax", "lower-bound"}
    assert expected <= impls
    assert {(r["mode"]) for r in quick_result.records} == set(bench.MODES)
    for r in quick_result.records:
        assert r["config"] == {"cell": "elman", "B": 4, "T": 8, "D": 2, "H": 8, "O": 2}
        assert r["median_ms"] > 0 and r["compile_s"] >= 0


def test_every_implementation_agrees_on_the_first_step(quick_result):
    names = {a.impl for a in quick_result.agreement}
    assert {"rnn-jax-autodiff", "rnn-jax-fast", "flax"} <= names
    assert all(a.agrees for a in quick_result.agreement), quick_result.agreement
    table = bench.format_table(quick_result)
    assert "DISAGREES" not in table and "fast/this" in table


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (optional)")
def test_torch_runs_under_its_better_thread_setting(quick_result):
    torch_records = [r for r in quick_result.records if bench._family(r["impl"]) == "torch"]
    assert len(torch_records) == 2 and all(r["impl"].startswith("torch-") for r in torch_records)
    assert any(a.impl == "torch" and a.agrees for a in quick_result.agreement)


def _wrong(problem):
    """rnn-jax's fast path with its W_s gradient perturbed by 1%: a plausible bug the check must catch."""
    prepared = bench.rnn_jax_implementation("fast", backward="bptt").prepare(problem)
    loss, grads = prepared.first_step
    return prepared._replace(first_step=(loss, grads._replace(w_s=grads.w_s * 1.01)))


def test_a_disagreeing_implementation_is_reported(standard_promotion, capsys):
    impls = [bench.rnn_jax_implementation("reference"), bench.Implementation("wrong", _wrong)]
    result = bench.run([TINY], repeats=1, implementations=impls, min_sample_s=0.0)
    verdict = {a.impl: a for a in result.agreement}
    assert verdict["reference"].agrees and not verdict["wrong"].agrees
    assert verdict["wrong"].grad_rel_err == pytest.approx(0.01, rel=1e-3)
    assert "DISAGREES" in bench.format_table(result)


def test_check_agreement_flags_a_different_loss():
    grads = rj.ElmanParams(*(np.ones(2, np.float32) for _ in range(5)))
    result = bench.check_agreement(TINY, {"a": (1.0, grads), "b": (1.001, grads)}, rtol=1e-4)
    assert [a.agrees for a in result] == [True, False]


def test_cli_bench_writes_json_and_exits_zero(tmp_path, capsys, standard_promotion):
    path = tmp_path / "bench.json"
    code = cli.main(["bench", "--config", "2,4,1,3,1", "--repeats", "1", "--json", str(path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "agreement of the first step" in printed and "lower-bound" in printed
    records = json.loads(path.read_text())
    bench.validate_records(records)
    assert {r["config"]["T"] for r in records} == {4}


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--config", "1,2,3"], "five positive integers"), (["--config", "1,2,0,3,4"], "five positive integers")],
)
def test_cli_bench_rejects_bad_configs(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_validate_records_rejects_a_missing_field():
    record = {
        "config": TINY.to_json(),
        "impl": "x",
        "mode": "train",
        "median_ms": 1.0,
        "p10_ms": 0.5,
        "p90_ms": 2.0,
        "compile_s": 0.1,
        "peak_mem_mb": 1.0,
    }
    bench.validate_records([record])
    with pytest.raises(ValueError, match="expected keys"):
        bench.validate_records([{k: v for k, v in record.items() if k != "peak_mem_mb"}])


# ------------------------------------------------------------------ the fast path equals the autodiff path


def _loss(params, xs, targets, lengths, activation, backward, unroll):
    run = rj.unroll(params, xs, activation=activation, lengths=lengths, backward=backward, unroll=unroll)
    return jnp.sum(jnp.square(run.outputs - targets)) + jnp.sum(jnp.square(run.final_state))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("unroll", [1, 4])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("activation", sorted(rj.activations.NAMED))
def test_fast_path_equals_autodiff(activation, with_lengths, unroll, dtype):
    """Outputs, final state and every gradient of the fast path equal jax.grad's (float64 1e-10, float32 1e-5)."""
    with jax.enable_x64(dtype == "float64"):
        k_p, k_x, k_d = jax.random.split(jax.random.key(7), 3)
        params = rj.elman.init(k_p, 3, 6, 2, dtype=jnp.dtype(dtype))
        xs = jax.random.normal(k_x, (9, 4, 3), dtype)
        targets = jax.random.normal(k_d, (9, 4, 2), dtype)
        lengths = jnp.array([9, 3, 0, 6]) if with_lengths else None
        args = (params, xs, targets, lengths, activation)
        value = {b: jax.value_and_grad(_loss, argnums=(0, 1))(*args, b, unroll) for b in ("autodiff", "bptt")}
        runs = {b: rj.unroll(params, xs, activation=activation, lengths=lengths, backward=b) for b in value}
        value, runs = jax.device_get((value, runs))
    rtol = 1e-10 if dtype == "float64" else 1e-5
    for got, want in zip(
        jax.tree.leaves((value["bptt"], runs["bptt"])),
        jax.tree.leaves((value["autodiff"], runs["autodiff"])),
        strict=True,
    ):
        scale = max(float(np.max(np.abs(want))), 1.0)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)
