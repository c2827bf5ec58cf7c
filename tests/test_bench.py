"""The benchmark harness (runs, validates, catches a wrong implementation) and the fast path's exactness.

No timing thresholds: speed is what the harness measures, not what a test asserts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax import bench, cli, plotting
from tests.stages import slow_unless

TINY = bench.Shape("elman", 3, 5, 2, 4, 2)


@pytest.fixture(scope="module")
def quick_result():
    with jax.numpy_dtype_promotion("standard"):  # optax's adam (see conftest)
        return bench.run(bench.shapes_for("quick", [], "elman"), repeats=2, min_sample_s=0.002)


def test_quick_preset_records_validate_against_the_schema(quick_result):
    bench.validate_records(quick_result.records)
    json.loads(json.dumps(quick_result.records))  # plain JSON
    impls = {bench._family(r["impl"]) for r in quick_result.records}
    expected = {"rnn-jax-autodiff", "rnn-jax-fast", "rnn-jax-bf16", "flax", "lower-bound"}
    assert expected <= impls
    assert {(r["mode"]) for r in quick_result.records} == set(bench.MODES)
    for r in quick_result.records:
        assert r["config"] == {"cell": "elman", "B": 4, "T": 8, "D": 2, "H": 8, "O": 2}
        assert r["median_ms"] > 0 and r["compile_s"] >= 0


def test_every_implementation_agrees_on_the_first_step(quick_result):
    names = {a.impl for a in quick_result.agreement}
    assert {"rnn-jax-autodiff", "rnn-jax-fast", "rnn-jax-bf16", "flax"} <= names
    assert all(a.agrees for a in quick_result.agreement), quick_result.agreement
    table = bench.format_table(quick_result)
    assert "DISAGREES" not in table and "fast/this" in table


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (optional)")
def test_torch_runs_under_its_better_thread_setting(quick_result):
    torch_records = [r for r in quick_result.records if bench._family(r["impl"]) == "torch"]
    assert len(torch_records) == 2 and all(r["impl"].startswith("torch-") for r in torch_records)
    assert any(a.impl == "torch" and a.agrees for a in quick_result.agreement)


def test_implementations_on_n_devices_are_named_by_pattern():
    names = [impl.name for impl in bench.named_implementations(["rnn-jax-fast-2dev", "lower-bound-16dev"])]
    assert names == ["rnn-jax-fast-2dev", "lower-bound-16dev"]
    assert [impl.devices for impl in bench.named_implementations(["lower-bound-4dev"])] == [4]
    for bad in ("lower-bound-1dev", "rnn-jax-fast-0dev", "rnn-jax-autodiff-2dev", "lower-bound-02dev"):
        with pytest.raises(ValueError, match="rnn-jax-fast-Ndev"):
            bench.named_implementations([bad])


def test_bound_column_divides_by_the_lowest_measured_bound():
    """A data-parallel floor below the one-device floor is the machine's floor: /bound uses the lower one."""

    def record(impl, ms, devices=1):
        return {"config": TINY.to_json(), "impl": impl, "mode": "train", "median_ms": ms, "p10_ms": ms,
                "p90_ms": ms, "compile_s": 0.0, "peak_mem_mb": 0.0, "devices": devices}  # fmt: skip

    records = [record("rnn-jax-fast", 30.0), record("lower-bound", 20.0), record("lower-bound-2dev", 10.0, 2)]
    notes = {"backend": "cpu", "device": "cpu", "cpu_count": "2", "jax": "x", "torch": "-"}

    def bound_column(records):  # impl -> its /bound entry
        table = bench.format_table(bench.BenchResult(records, [], [], notes)).splitlines()
        return {line.split()[3]: line.split()[-1] for line in table if line.startswith("elman ")}

    assert bound_column(records) == {"rnn-jax-fast": "3.00", "lower-bound": "2.00", "lower-bound-2dev": "1.00"}
    assert bound_column(records[:2]) == {"rnn-jax-fast": "1.50", "lower-bound": "1.00"}


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


def test_the_overall_gradient_scale_measures_errors_against_the_largest_entry_of_all():
    """bfloat16's check ("overall"): a 10% error on a parameter whose gradient is 1000x smaller than the largest is
    round-off of its cancelling terms, not a disagreement; the same 10% on the largest parameter still is one."""
    ref = (1.0, {"big": np.array([1.0, -0.5]), "small": np.array([1e-3])})
    small_off = (1.0, {"big": np.array([1.0, -0.5]), "small": np.array([1.1e-3])})
    big_off = (1.0, {"big": np.array([1.1, -0.5]), "small": np.array([1e-3])})
    steps = {"ref": ref, "small-off": small_off, "big-off": big_off}
    per_parameter = {a.impl: a for a in bench.check_agreement(TINY, steps, 0.05)}
    overall = {a.impl: a for a in bench.check_agreement(TINY, steps, 0.05, dict.fromkeys(steps, "overall"))}
    assert per_parameter["small-off"].grad_rel_err == pytest.approx(0.1) and not per_parameter["small-off"].agrees
    assert overall["small-off"].grad_rel_err == pytest.approx(1e-4) and overall["small-off"].agrees
    assert overall["big-off"].grad_rel_err == pytest.approx(0.1) and not overall["big-off"].agrees
    assert [i.grad_scale for i in bench.named_implementations(["rnn-jax-fast", "rnn-jax-bf16"])] == [
        "parameter",
        "overall",
    ]


def _broken(problem):
    raise RuntimeError("Triton: out of resources (shared memory)\nsecond line")


def test_an_implementation_that_fails_is_reported_and_the_others_are_timed(standard_promotion, capsys, monkeypatch):
    """A kernel that does not compile (say, on a GPU) must not cost the run the others' timings: it is listed as
    FAILED with its error, and the command exits 1."""
    impls = [bench.rnn_jax_implementation("reference"), bench.Implementation("broken", _broken)]
    result = bench.run([TINY], repeats=1, implementations=impls, min_sample_s=0.0)
    assert {r["impl"] for r in result.records} == {"reference"} and len(result.records) == 2
    assert result.failed == ((TINY, "broken", "RuntimeError: Triton: out of resources (shared memory)"),)
    assert "FAILED broken on elman" in bench.format_table(result)
    monkeypatch.setitem(bench.NAMED_IMPLEMENTATIONS, "broken", lambda: bench.Implementation("broken", _broken))
    argv = ["bench", "--config", "2,4,1,3,1", "--repeats", "1", "--impl", "rnn-jax-fast", "--impl", "broken"]
    assert cli.main(argv) == 1
    assert "error: these implementations failed (the others were timed): ['broken']" in capsys.readouterr().out


GRAPH_VARIANTS = ["rnn-jax-fast-graphs", "rnn-jax-fast-graphs-unrolled", "lower-bound-graphs"]


@pytest.mark.parametrize("name", GRAPH_VARIANTS)
def test_command_buffer_variants_run_only_on_a_gpu(name, standard_promotion):
    """The CUDA-graph variants compile on a GPU; elsewhere XLA would ignore their options, so the harness skips
    them, saying so, rather than time their plain twins under another name."""
    (impl,) = bench.named_implementations([name])
    problem = bench._problem(TINY, seed=0)
    if jax.default_backend() == "gpu":
        assert impl.prepare(problem) is not None
    else:
        with pytest.raises(bench.Unavailable, match="command buffers .* do nothing"):
            impl.prepare(problem)


@pytest.mark.parametrize("options", [bench.GPU_COMMAND_BUFFERS, bench.GPU_COMMAND_BUFFERS_UNROLLED])
def test_command_buffer_options_are_ones_this_xla_knows(options):
    """XLA checks option names and values when it compiles, on every backend: these compile a scan here, and a
    misspelt command type is refused (so the options are not silently dropped)."""
    scan = jax.jit(lambda s: jax.lax.scan(lambda c, _: (jnp.tanh(c @ c.T @ c), None), s, None, length=3)[0])
    x = jnp.eye(2, dtype=jnp.float32)
    np.testing.assert_array_equal(scan.lower(x).compile(dict(options))(x), scan(x))
    with pytest.raises(Exception, match="not a valid enum value"):
        scan.lower(x).compile({**options, "xla_gpu_enable_command_buffer": "FUSION,WHILE_LOOPS"})


def test_command_buffer_variants_pass_their_options_to_every_compilation(standard_promotion, monkeypatch):
    """With the GPU check lifted on this backend (where XLA ignores them), each variant compiles its forward pass
    and its train step (the bound: its two chains) with its options, and computes what its plain twin does."""
    seen = []
    compile_lowered = jax.stages.Lowered.compile

    def recording(self, compiler_options=None, **kwargs):
        seen.append(compiler_options)
        return compile_lowered(self, compiler_options, **kwargs)

    monkeypatch.setattr(jax.stages.Lowered, "compile", recording)
    monkeypatch.setattr(bench, "_check_command_buffers", lambda options: None)
    problem = bench._problem(TINY, seed=0)
    for name, options in zip(GRAPH_VARIANTS, [bench.GPU_COMMAND_BUFFERS, bench.GPU_COMMAND_BUFFERS_UNROLLED,
                                              bench.GPU_COMMAND_BUFFERS], strict=True):  # fmt: skip
        seen.clear()
        (impl,) = bench.named_implementations([name])
        prepared = impl.prepare(problem)
        assert [o for o in seen if o is not None] == [options, options], name
        if prepared.first_step is not None:
            (plain,) = bench.named_implementations(["rnn-jax-fast"])
            assert prepared.first_step[0] == plain.prepare(problem).first_step[0]


def test_the_harness_times_full_float32_products_whatever_the_callers_precision(standard_promotion):
    seen = []

    def probe(problem):
        seen.append(jax.config.jax_default_matmul_precision)
        return bench.rnn_jax_implementation("reference").prepare(problem)

    impls = [bench.Implementation("probe", probe)]
    with jax.default_matmul_precision("bfloat16"):  # a caller's setting (on GPUs the default is TensorFloat-32)
        bench.run([TINY], repeats=1, implementations=impls, min_sample_s=0.0)
        assert jax.config.jax_default_matmul_precision == "bfloat16"  # restored afterwards
    assert seen == [bench.MATMUL_PRECISION] == ["highest"]


def test_every_timed_sample_starts_after_a_pause(standard_promotion, monkeypatch):
    """Each implementation's sample starts `SETTLE_S` after the previous one ended (torch's spinning threads would
    otherwise slow whichever sample follows its own): one pause per sample, and none inside a sample."""
    events = []
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: events.append(("pause", seconds)))

    def counting(name):
        def prepare(problem):
            prepared = bench.rnn_jax_implementation(name).prepare(problem)
            run = {mode: (lambda fn=fn: events.append(("call", name)) or fn()) for mode, fn in prepared.run.items()}
            return prepared._replace(run=run)

        return bench.Implementation(name, prepare)

    bench.run([TINY], repeats=3, implementations=[counting("a"), counting("b")], min_sample_s=0.0)
    warm_up = [("call", "a")] * 2 + [("call", "b")] * 2  # two calls each: compile and size the samples
    pause = ("pause", bench.SETTLE_S)
    assert events == (warm_up + [pause, ("call", "a"), pause, ("call", "b")] * 3) * 2  # forward, then train
    assert bench.SETTLE_S >= 0.005


def test_each_call_fills_its_own_sample(monkeypatch):
    """A call 32x slower than the fastest is still timed over ``min_sample_s`` of back-to-back calls, not as one
    call just after the pause (which runs slow: `interleaved_samples`); each sample is the mean call time."""
    clock = [0.0]
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    made = {"fast": 0, "slow": 0}
    cost = {"fast": 2.0**-10, "slow": 2.0**-5}  # seconds, binary fractions: the fake clock adds them exactly

    def call(name):
        def run():
            made[name] += 1
            clock[0] += cost[name]

        return run

    samples = bench.interleaved_samples({name: call(name) for name in cost}, repeats=2, min_sample_s=0.125)
    assert made == {"fast": 2 + 2 * 128, "slow": 2 + 2 * 4}  # two warm-up calls, then min_sample_s / cost a sample
    for name in cost:
        np.testing.assert_allclose(samples[name], [cost[name]] * 2)


def test_the_studies_time_with_the_harness_sampler_and_its_pauses(monkeypatch):
    """experiments._common.interleaved (the projections studies) takes its samples as the harness does, a pause
    before each, so a study that adds torch is not biased the way the harness was before `SETTLE_S`."""
    from experiments import _common

    events = []
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: events.append("pause"))
    calls = {name: (lambda name=name: events.append(name) or jnp.zeros(())) for name in ("a", "b")}
    timings = _common.interleaved(calls, repeats=2)
    assert events == ["a", "a", "b", "b"] + ["pause", "a", "pause", "b"] * 2
    assert set(timings) == {"a", "b"} and all(len(t) == 3 and t[1] <= t[0] <= t[2] for t in timings.values())


def test_each_finished_shape_is_reported_with_the_records_so_far(standard_promotion):
    seen = []
    impls = [bench.rnn_jax_implementation("reference")]
    other = TINY._replace(T=3)
    on_shape = lambda finished, partial: seen.append((finished, partial))  # noqa: E731
    result = bench.run([TINY, other], repeats=1, implementations=impls, min_sample_s=0.0, on_shape=on_shape)
    assert [(finished, len(partial.records)) for finished, partial in seen] == [(1, 2), (2, 4)]  # forward + train
    assert seen[-1][1].records == result.records and seen[0][1].records == result.records[:2]


def test_check_agreement_flags_a_different_loss():
    grads = rj.ElmanParams(*(np.ones(2, np.float32) for _ in range(5)))
    result = bench.check_agreement(TINY, {"a": (1.0, grads), "b": (1.001, grads)}, rtol=1e-4)
    assert [a.agrees for a in result] == [True, False]


@pytest.mark.slow
def test_cli_bench_writes_json_and_exits_zero(tmp_path, capsys, standard_promotion):
    path = tmp_path / "bench.json"
    figure = tmp_path / "bench.png"
    argv = ["bench", "--cell", "gru", "--config", "2,4,1,3,1", "--repeats", "1", "--json", str(path)]
    code = cli.main([*argv, "--plot", str(figure)])
    assert code == 0 and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "agreement of the first step" in printed and "lower-bound" in printed
    assert "speed goals" in printed and "gru never slower than flax or torch" in printed
    records = json.loads(path.read_text())
    bench.validate_records(records)
    assert {r["config"]["T"] for r in records} == {4} and {r["config"]["cell"] for r in records} == {"gru"}
    assert {"rnn-jax-bf16", "flax"} <= {r["impl"] for r in records}


def _record(cell, size, mode, impl, ms, compile_s=0.1):
    config = dict(zip(bench.CONFIG_KEYS, (cell, *size), strict=True))
    return {"config": config, "impl": impl, "mode": mode, "median_ms": ms, "compile_s": compile_s}


def test_speed_goals_read_the_best_of_each_family():
    """The goals take rnn-jax's better of one and N devices, PyTorch's better thread count and the lowest bound,
    list every size and mode where rnn-jax is slower, and say n/a for what a run did not measure."""
    mid, big, single = (64, 256, 32, 128, 32), (256, 64, 128, 512, 128), (1, 1000, 1, 32, 1)
    records = [
        _record("elman", mid, "train", "rnn-jax-fast", 10.0, compile_s=0.5),
        _record("elman", mid, "train", "rnn-jax-fast-2dev", 8.0, compile_s=2.5),
        _record("elman", mid, "train", "flax", 20.0),
        _record("elman", mid, "train", "torch-2threads", 17.0),
        _record("elman", mid, "train", "lower-bound", 7.0),
        _record("elman", mid, "train", "lower-bound-2dev", 6.0),
        _record("elman", big, "forward", "rnn-jax-fast", 5.0),
        _record("elman", big, "forward", "torch-1thread", 4.0),
        _record("gru", single, "forward", "rnn-jax-fast", 1.0),
        _record("gru", single, "forward", "flax", 2.0),
    ]
    goals = {g.goal: g for g in bench.speed_goals(records)}
    assert goals["elman train at (64,256,32,128,32) <= 0.5x torch"] == (mock.ANY, "0.47x", True)
    assert goals["elman train at (64,256,32,128,32) <= 0.7x flax"].measured == "0.40x"
    assert goals["elman train at (64,256,32,128,32) <= 1.3x the lower bound"][1:] == ("1.33x", False)
    assert goals["elman train at (1,1000,1,32,1) <= 1.3x the lower bound"][1:] == ("not measured", None)
    assert goals["elman forward at (64,256,32,128,32) <= 1.3x the lower bound"][1:] == ("not measured", None)
    assert goals["elman never slower than flax or torch"][1:] == ("forward (256,64,128,512,128) torch 1.25x", False)
    assert goals["elman rnn-jax-fast compile < 2 s"][1:] == ("at most 2.50 s", False)
    assert goals["gru never slower than flax or torch"][1:] == ("nowhere slower", True)
    assert not any(g.startswith("gru train") for g in goals)  # the ratio and bound goals are the Elman network's
    text = bench.format_goals(list(goals.values()))
    assert "NOT MET elman rnn-jax-fast compile < 2 s: at most 2.50 s" in text and "n/a     elman train at (1" in text


def test_cli_bench_times_the_implementations_named_by_impl(tmp_path, capsys, standard_promotion):
    """--impl picks implementations (here the projections inside the scan step against hoisted out of it, for
    both backward passes), in the order given; they agree on the first step and nothing else is timed."""
    path = tmp_path / "bench.json"
    names = ["rnn-jax-autodiff-in-step", "rnn-jax-autodiff-hoisted", "rnn-jax-fast-in-step", "rnn-jax-fast-hoisted"]
    argv = ["bench", "--config", "2,4,1,3,1", "--repeats", "1", "--json", str(path)]
    assert cli.main([*argv, *(a for name in names for a in ("--impl", name))]) == 0
    assert "DISAGREES" not in capsys.readouterr().out
    records = json.loads(path.read_text())
    assert [r["impl"] for r in records if r["mode"] == "train"] == names


@pytest.mark.parametrize("cell", slow_unless(["elman"], ["elman", "lstm", "gru"]))
def test_impl_rnn_jax_bptt_times_every_cells_hand_derived_backward_pass(cell, monkeypatch, standard_promotion):
    """``--impl rnn-jax-bptt`` trains through the cell's hand-derived custom VJP (`bptt.elman_scan`, `lstm_scan`,
    `gru_scan`: the call is watched), which agrees with the autodiff path on the first step."""
    from rnn_jax import bptt

    calls = []
    name = {"elman": "elman_scan", "lstm": "lstm_scan", "gru": "gru_scan"}[cell]
    original = getattr(bptt, name)
    monkeypatch.setattr(bptt, name, lambda *args: calls.append(args) or original(*args))
    impls = bench.named_implementations(["rnn-jax-autodiff", "rnn-jax-bptt"])
    result = bench.run([bench.Shape(cell, 3, 5, 2, 4, 2)], repeats=1, implementations=impls, min_sample_s=0.0)
    assert calls, f"rnn-jax-bptt did not call bptt.{name}"
    assert [a.impl for a in result.agreement] == ["rnn-jax-autodiff", "rnn-jax-bptt"]
    assert all(a.agrees for a in result.agreement), result.agreement


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "1,2,3"], "five positive integers"),
        (["--config", "1,2,0,3,4"], "five positive integers"),
        (["--config", "1,2,1,3,1", "--impl", "cudnn"], r"impl: expected distinct names among .*'flax'.*\['cudnn'\]"),
        (["--config", "1,2,1,3,1", "--impl", "flax", "--impl", "flax"], "impl: expected distinct names"),
    ],
)
def test_cli_bench_rejects_bad_configs(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", *argv])
    assert info.value.code == 2 and re.search(message, capsys.readouterr().err)


def test_cli_bench_refuses_a_json_path_it_could_not_write_before_timing_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--config", "1,2,1,3,1", "--impl", "rnn-jax-fast", "--json", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"--json: {str(tmp_path)!r} is a directory" in err
    assert "bench: 1/1" not in err  # refused before the first shape was timed


@pytest.mark.parametrize(
    ("plot", "message"),
    [("bench.jpg", "--plot: expected a file name ending in .png, .pdf, .svg, got"), ("", "--plot: expected a path")],
)
def test_cli_bench_refuses_a_figure_it_could_not_write_before_timing_anything(tmp_path, capsys, plot, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--config", "1,2,1,3,1", "--impl", "rnn-jax-fast", "--plot", plot and str(tmp_path / plot)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "bench: 1/1" not in err


def _timed(cell, size, mode, impl, median, spread=0.1):
    """One record as the harness writes it (p10 and p90 ``spread`` below and above the median)."""
    config = dict(zip(bench.CONFIG_KEYS, (cell, *size), strict=True))
    return {"config": config, "impl": impl, "mode": mode, "median_ms": float(median), "p10_ms": median - spread,
            "p90_ms": median + spread, "compile_s": 0.5, "peak_mem_mb": 1.0, "devices": 1}  # fmt: skip


def _drawn_figure(monkeypatch, records, path, **options):
    """The matplotlib figure `plotting.benchmark` saves to ``path`` (the file is written too)."""
    import matplotlib.figure

    drawn, save = [], matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), save(fig, *a, **k))
    )
    plotting.benchmark(records, str(path), **options)
    return drawn[0]


def _bars(ax):
    """{label: [bar heights]} of an axes' bar series."""
    from matplotlib.container import BarContainer

    return {c.get_label(): [round(p.get_height(), 9) for p in c] for c in ax.containers if isinstance(c, BarContainer)}


def test_the_benchmark_figure_draws_each_time_over_the_references(tmp_path, monkeypatch):
    """Each bar is the record's median over the reference's at its size and mode (torch's thread counts one
    series), its whiskers p10 and p90 over the same; a size the reference missed is left out of its mode."""
    small, large = (2, 10, 1, 4, 1), (8, 20, 3, 16, 3)
    records = [
        _timed("elman", small, "train", "rnn-jax-fast", 2.0), _timed("elman", small, "train", "flax", 3.0),
        _timed("elman", small, "train", "torch-1thread", 5.0), _timed("elman", small, "train", "lower-bound", 1.0),
        _timed("elman", large, "train", "rnn-jax-fast", 8.0), _timed("elman", large, "train", "torch-2threads", 4.0),
        _timed("elman", small, "forward", "rnn-jax-fast", 1.0), _timed("elman", small, "forward", "flax", 0.5),
        _timed("elman", large, "forward", "flax", 9.0),  # no reference here: not drawn
    ]  # fmt: skip
    path = tmp_path / "bench.png"
    fig = _drawn_figure(monkeypatch, records, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    train, forward = fig.axes
    torch = "torch (the better of 1thread, 2threads)"
    assert _bars(train) == {"rnn-jax-fast": [1.0, 1.0], "flax": [1.5], torch: [2.5, 0.5], "lower-bound": [0.5]}
    assert _bars(forward) == {"rnn-jax-fast": [1.0], "flax": [0.5]}
    assert [t.get_text() for t in forward.get_xticklabels()] == ["(2,10,1,4,1)\nrnn-jax-fast: 1 ms"]
    flax_train = next(c for c in train.containers if c.get_label() == "flax" and hasattr(c, "errorbar"))
    low, high = flax_train.errorbar.lines[2][0].get_segments()[0][:, 1]
    assert (round(low, 9), round(high, 9)) == (1.45, 1.55)  # (3.0 -+ 0.1) / 2.0


def test_the_benchmark_figure_takes_another_reference_and_refuses_one_never_timed(tmp_path, monkeypatch):
    size = (2, 3, 1, 2, 1)
    records = [_timed("gru", size, "train", "flax", 4.0), _timed("gru", size, "train", "torch-1thread", 2.0)]
    fig = _drawn_figure(monkeypatch, records, tmp_path / "f.svg")  # no rnn-jax-fast: the first is the reference
    assert _bars(fig.axes[0]) == {"flax": [1.0], "torch (1thread)": [0.5]}
    fig = _drawn_figure(monkeypatch, records, tmp_path / "g.pdf", reference="torch")
    assert _bars(fig.axes[0]) == {"flax": [2.0], "torch (1thread)": [1.0]}
    never = r"reference: expected one of the records' implementations \['flax', 'torch'\], got 'rnn-jax-fast'"
    with pytest.raises(ValueError, match=never):
        plotting.benchmark(records, str(tmp_path / "h.png"), reference="rnn-jax-fast")
    with pytest.raises(ValueError, match="path: expected a file name ending in .png, .pdf, .svg, got 'x.jpg'"):
        plotting.benchmark(records, "x.jpg")
    with pytest.raises(ValueError, match="records: expected at least one record, got none"):
        plotting.benchmark([], str(tmp_path / "i.png"))
    with pytest.raises(ValueError, match="record: expected keys"):
        plotting.benchmark([{"impl": "flax"}], str(tmp_path / "j.png"))


def _with_random_biases(problem):
    """The problem with every bias drawn away from zero (the cells' init leaves most at zero), so that a bias put
    in the wrong gate block, or on the wrong side of the GRU's reset gate, changes the loss."""
    rng = np.random.default_rng(1)
    params = problem.params._replace(
        **{name: rng.normal(size=np.shape(v)).astype(np.float32) for name, v in problem.params._asdict().items()
           if name.startswith("b_")}
    )  # fmt: skip
    return problem._replace(params=params)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_cells_agree_across_rnn_jax_flax_and_torch(cell, standard_promotion):
    """flax.linen.RNN (OptimizedLSTMCell / GRUCell) and torch nn.LSTM / nn.GRU, with the parameters converted, give
    rnn-jax's loss and gradients (relative 1e-4), with non-zero biases; the bfloat16 variant within BF16_RTOL."""
    problem = _with_random_biases(bench._problem(bench.Shape(cell, 3, 6, 2, 4, 2), seed=0))
    impls = [bench.rnn_jax_implementation("ref", backward="autodiff"), bench.flax_implementation()]
    if importlib.util.find_spec("torch") is not None:
        impls.append(bench.torch_implementation())
    first = {impl.name: impl.prepare(problem).first_step for impl in impls}
    agreement = bench.check_agreement(problem.shape, first, rtol=1e-4)
    assert len(agreement) == len(impls) and all(a.agrees for a in agreement), agreement
    bf16 = bench.rnn_jax_implementation("bf16", rtol=bench.BF16_RTOL, precision="bfloat16").prepare(problem)
    verdict = bench.check_agreement(problem.shape, {"ref": first["ref"], "bf16": bf16.first_step}, bench.BF16_RTOL)
    # per parameter, the stricter scale, at this size
    assert verdict[1].agrees and verdict[1].grad_rel_err > 0, verdict  # close, and really computed in bfloat16


@pytest.mark.slow
def test_long_preset_times_remat_beside_the_plain_paths(standard_promotion):
    """The long preset's implementations (remat every 100 steps and every sqrt(T)) run and agree, here at T = 30
    (their memory saving is tested in test_unroll.py, where it is not drowned by the optimizer's buffers)."""
    assert [s.T for s in bench.shapes_for("long", [], "elman")] == [1000, 10000, 100000]
    result = bench.run([bench.Shape("elman", 2, 30, 1, 4, 1)], repeats=1, min_sample_s=0.0,
                       implementations=bench.long_implementations())  # fmt: skip
    bench.validate_records(result.records)
    assert all(a.agrees for a in result.agreement), result.agreement
    train = {r["impl"]: r for r in result.records if r["mode"] == "train"}
    assert set(train) == {"rnn-jax-autodiff", "rnn-jax-fast", "rnn-jax-remat-100", "rnn-jax-remat-sqrt", "lower-bound"}


_SCALING_SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    from rnn_jax import bench

    impls = [bench.rnn_jax_implementation("rnn-jax-fast", backward="fast"), *bench.scaling_implementations(),
             *bench.named_implementations(["lower-bound-2dev", "lower-bound-4dev"])]
    with jax.numpy_dtype_promotion("standard"):
        result = bench.run([bench.Shape("elman", 4, 5, 2, 4, 2), bench.Shape("elman", 2, 5, 2, 4, 2)],
                           repeats=1, min_sample_s=0.0, implementations=impls)
    print(json.dumps({"devices": jax.device_count(), "records": result.records,
                      "agrees": [a.agrees for a in result.agreement],
                      "skipped": [(s.B, impl, reason) for s, impl, reason in result.skipped]}))
    """
)


@pytest.mark.slow
def test_bench_reports_data_parallel_scaling_over_forced_devices():
    """With 4 (forced CPU) devices the harness times the fast path on 1, 2 and 4 devices, the records carry the
    count, the sharded first steps agree with the one-device one, and a batch that does not split is skipped."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", _SCALING_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    bench.validate_records(out["records"])
    by_b = {}
    for r in out["records"]:
        by_b.setdefault(r["config"]["B"], set()).add((r["impl"], r["devices"]))
    assert {("rnn-jax-fast", 1), ("rnn-jax-fast-2dev", 2), ("rnn-jax-fast-4dev", 4)} <= by_b[4]
    assert {("lower-bound-2dev", 2), ("lower-bound-4dev", 4)} <= by_b[4]
    assert ("rnn-jax-fast-4dev", 4) not in by_b[2] and ("rnn-jax-fast-2dev", 2) in by_b[2]
    assert ("lower-bound-4dev", 4) not in by_b[2] and ("lower-bound-2dev", 2) in by_b[2]
    assert sorted(impl for b, impl, _ in out["skipped"]) == ["lower-bound-4dev", "rnn-jax-fast-4dev"]
    assert {b for b, _, _ in out["skipped"]} == {2} and all("does not divide" in r for _, _, r in out["skipped"])
    assert all(out["agrees"]), out


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
    bench.validate_records([record])  # written before "devices" existed
    bench.validate_records([{**record, "devices": 2}])
    with pytest.raises(ValueError, match="expected keys"):
        bench.validate_records([{k: v for k, v in record.items() if k != "peak_mem_mb"}])
    with pytest.raises(ValueError, match="devices must be a positive integer"):
        bench.validate_records([{**record, "devices": 0}])


# ------------------------------------------------------------------ the fast path equals the autodiff path


def _loss(params, xs, targets, lengths, activation, backward, unroll):
    run = rj.unroll(params, xs, activation=activation, lengths=lengths, backward=backward, unroll=unroll)
    return jnp.sum(jnp.square(run.outputs - targets)) + jnp.sum(jnp.square(run.final_state))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("unroll", [1, 4])
@pytest.mark.parametrize("with_lengths", slow_unless([True], [False, True]))
@pytest.mark.parametrize("activation", slow_unless(["tanh"], sorted(rj.activations.NAMED)))
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
