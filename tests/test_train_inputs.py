"""Bad input to a training run is refused before any work, and nothing a refused run leaves blocks its rerun."""

from __future__ import annotations

import dataclasses
import json
import logging

import jax
import pytest

from rnn_jax import bptt, cli, train
from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax's adam (see conftest)

TINY = ["--steps", "2", "--hidden", "4", "--seq-len", "5", "--batch-size", "2", "--eval-every", "1",
        "--eval-batches", "1", "--log-every", "1", "--no-progress"]  # fmt: skip


def _config(**sections) -> Config:
    base = Config(
        model=ModelConfig(hidden=4),
        task=TaskConfig(task="adding", seq_len=5, batch_size=2),
        optim=OptimConfig(),
        run=RunConfig(steps=2, eval_every=1, log_every=1, eval_batches=1, progress=False),
    )
    return dataclasses.replace(base, **{k: dataclasses.replace(getattr(base, k), **v) for k, v in sections.items()})


# ------------------------------------------------------------------ 1. paths inside the output directory


@pytest.mark.parametrize("name", ["summary.json", "metrics.jsonl", "loss_curve.png", "sample.txt"])
def test_a_directory_where_the_run_writes_a_file_is_refused_before_training(tmp_path, name):
    (tmp_path / name).mkdir()
    with pytest.raises(ValueError, match=rf"^out: {tmp_path / name} is a directory"):
        train.train_and_evaluate(_config(), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written, no checkpoints/


def test_a_file_where_the_run_keeps_its_checkpoints_is_refused_before_training(tmp_path):
    (tmp_path / "checkpoints").touch()
    with pytest.raises(ValueError, match=rf"^out: {tmp_path / 'checkpoints'} is not a directory"):
        train.train_and_evaluate(_config(), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


def test_the_command_line_refuses_a_bad_output_path_with_status_2(tmp_path, capsys):
    (tmp_path / "loss_curve.png").mkdir()
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *TINY, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"--out: {tmp_path / 'loss_curve.png'} is a directory" in err, err
    assert "Traceback" not in err


# ------------------------------------------------------------------ 2. refused before the first step is traced


@pytest.mark.parametrize(
    "model, field",
    [
        ({"unroll": 0}, "unroll"),
        ({"unroll": -1}, "unroll"),
        ({"backward": "bptt", "remat": "2"}, "backward"),
        ({"backward": "fused", "remat": "2"}, "backward"),
        ({"backward": "bptt", "precision": "bfloat16"}, "backward"),
        ({"backward": "fused", "precision": "bfloat16"}, "backward"),
        ({"precision": "bfloat16", "dtype": "float64"}, "precision"),
        ({"model": "lstm", "backward": "bptt", "projections": "hoisted"}, "projections"),
        ({"backward": "fused", "projections": "in_step"}, "projections"),
    ],
)
def test_a_model_that_cannot_be_traced_is_refused_before_the_run_directory_is_touched(tmp_path, model, field):
    config = _config(model=model)
    with pytest.raises(ValueError, match=rf"^{field}: "):
        train.check_model(config.model, config.task.task)
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"^{field}: "):
        train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_an_empty_metrics_file_and_checkpoint_directory_are_not_an_earlier_run(tmp_path):
    """What a run that failed before its first step left (an empty metrics.jsonl, an empty checkpoints/) does not
    refuse the corrected rerun."""
    (tmp_path / "metrics.jsonl").touch()
    (tmp_path / "checkpoints").mkdir()
    assert train.train_and_evaluate(_config(), str(tmp_path))["status"] == "completed"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["train", "eval", "train", "eval"]


class _FailsWhenRun:
    """A jitted step that compiles (for the memory check) but fails when called, as a first step can."""

    def __init__(self, step):
        self.lower = step.lower

    def __call__(self, *args):
        raise RuntimeError("failed in the first step")


def test_a_run_that_fails_in_its_first_step_leaves_no_metrics_file(tmp_path, monkeypatch):
    make_train_step = train.make_train_step
    monkeypatch.setattr(train, "make_train_step", lambda *a, **k: _FailsWhenRun(make_train_step(*a, **k)))
    with pytest.raises(RuntimeError, match="failed in the first step"):
        train.train_and_evaluate(_config(), str(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists()
    monkeypatch.undo()
    assert train.train_and_evaluate(_config(), str(tmp_path))["status"] == "completed"


# ------------------------------------------------------------------ 3. TBPTT and the unroll options


@pytest.mark.parametrize("model", [{"unroll": 2}, {"projections": "in_step"}, {"unroll": 3, "projections": "hoisted"}])
def test_truncated_bptt_unrolls_its_windows_with_the_configured_options(tmp_path, monkeypatch, model):
    """`make_tbptt_step` passes --unroll and --projections on to every window's unroll (it ignored them)."""
    seen, real = [], bptt.unroll

    def recording(*args, **options):
        seen.append((options["unroll"], options["projections"]))
        return real(*args, **options)

    monkeypatch.setattr(bptt, "unroll", recording)
    config = _config(model=model, task={"task": "xor", "seq_len": 6}, run={"tbptt_k1": 3})
    train.train_and_evaluate(config, str(tmp_path / "run"))
    expected = (model.get("unroll", 1), model.get("projections", "auto"))
    assert seen and set(seen) == {expected}


# ------------------------------------------------------------------ 4. a damaged summary.json


@pytest.mark.parametrize("text", ["[]", '{"status": "x"}', "{", '{"config": 3}', '{"config": {"model": 3}}'])
def test_a_damaged_summary_is_a_value_error_naming_the_file(tmp_path, text):
    path = tmp_path / "summary.json"
    path.write_text(text)
    for read in (train.load_trained, train.stored_summary):
        with pytest.raises(ValueError, match=rf"^{path}: "):
            read(str(tmp_path))


def test_sampling_a_run_with_a_damaged_summary_exits_2_naming_the_file(tmp_path, capsys):
    (tmp_path / "summary.json").write_text("[]")
    with pytest.raises(SystemExit) as info:
        cli.main(["sample", "--checkpoint", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"{tmp_path / 'summary.json'}: expected an rnn-jax train summary" in err, err


def _interrupted_dump(obj, f, **kwargs):
    """json.dump stopped halfway (Ctrl-C, a full disk)."""
    f.write('{"status": "comp')
    raise KeyboardInterrupt


def test_an_interrupted_summary_write_leaves_the_old_summary(tmp_path, monkeypatch):
    train.write_summary(str(tmp_path), {"status": "running", "config": {}})
    real_dump = json.dump
    monkeypatch.setattr(json, "dump", _interrupted_dump)
    with pytest.raises(KeyboardInterrupt):
        train.write_summary(str(tmp_path), {"status": "completed", "config": {}})
    monkeypatch.setattr(json, "dump", real_dump)
    assert train.stored_summary(str(tmp_path)) == {"status": "running", "config": {}}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_the_reports_addition_to_the_summary_is_written_through_a_rename_too(tmp_path, monkeypatch):
    """`report.finish` rewrote summary.json in place: interrupted there, it left half a file, which `sample` then
    refused."""
    from rnn_jax import plotting, report

    config = _config()
    train.write_summary(str(tmp_path), {"status": "completed", "config": {}})
    monkeypatch.setattr(plotting, "loss_curve", lambda *a, **k: None)
    monkeypatch.setattr(report, "write", lambda *a: {"sample": "abc"})
    real_dump = json.dump
    monkeypatch.setattr(json, "dump", _interrupted_dump)
    with pytest.raises(KeyboardInterrupt):
        report.finish(config, {"records": [], "baseline": {"loss": 1.0}, "params": None}, str(tmp_path))
    monkeypatch.setattr(json, "dump", real_dump)
    assert train.stored_summary(str(tmp_path)) == {"status": "completed", "config": {}}
    summary = report.finish(config, {"records": [], "baseline": {"loss": 1.0}, "params": None}, str(tmp_path))
    assert train.stored_summary(str(tmp_path)) == {"status": "completed", "config": {}, "sample": "abc"}
    assert summary["sample"] == "abc"


# ------------------------------------------------------------------ 5. a train step or held-out set past the memory


def test_a_held_out_set_larger_than_the_memory_is_refused_before_it_is_built(tmp_path):
    """10**9 x 2 sequences need hundreds of GB; the check compiles for their shapes only, so it allocates nothing
    (the run itself got the process killed by the kernel)."""
    with pytest.raises(ValueError, match=r"^eval_batches: .*1000000000 x batch_size 2 = 2000000000 sequences"):
        train.train_and_evaluate(_config(run={"eval_batches": 10**9}), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    assert 0 < train._memory_limit() < 2**50


def test_the_held_out_set_is_compared_with_the_memory(monkeypatch, tmp_path):
    """The held-out set alone, 1000 x 2 sequences of 5 steps, is 1000 x 2 x 5 x (D 2 + O 1) float32s and the
    mask and lengths (138 kB): a limit below that is refused, ten times it is enough for the whole run."""
    monkeypatch.setattr(train, "_memory_limit", lambda: 130_000)
    with pytest.raises(ValueError, match=r"^eval_batches: .*1000 x batch_size 2"):
        train.train_and_evaluate(_config(run={"eval_batches": 1000}), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(train, "_memory_limit", lambda: 1_380_000)
    assert train.train_and_evaluate(_config(run={"eval_batches": 1000}))["status"] == "completed"


def test_a_train_step_larger_than_the_memory_is_refused_before_it_runs(tmp_path):
    """A training batch of 10**7 Shakespeare windows (whose held-out set is its own fixed split, so the held-out
    check passes) needs about a terabyte; it was killed by the kernel. Refused, naming the batch, before the run's
    directory is made."""
    config = _config(task={"task": "shakespeare", "seq_len": 50, "batch_size": 10**7})
    with pytest.raises(ValueError, match=r"^batch_size: one train step on a batch of 10000000 sequences needs .* GB"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_the_train_step_is_compared_with_the_memory_and_compiled_once(monkeypatch, caplog):
    """The step keeps at least its batch, 64 sequences x 200 steps x (D 2 + O 1) float32s and the mask (167 kB), and
    the [T, B, H] states of the unroll for its backward pass (410 kB): refused under 500 kB (the held-out set's
    check left out); with the memory to spare the step is compiled once (the check's compilation is the one the
    first step uses)."""
    config = _config(task={"seq_len": 200, "batch_size": 64}, model={"hidden": 8})
    monkeypatch.setattr(train, "_check_held_out_memory", lambda *args: None)
    monkeypatch.setattr(train, "_memory_limit", lambda: 500_000)
    with pytest.raises(ValueError, match=r"^batch_size: one train step on a batch of 64 sequences"):
        train.train_and_evaluate(config)
    monkeypatch.setattr(train, "_memory_limit", lambda: 2**40)
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        assert train.train_and_evaluate(config)["status"] == "completed"
    compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling jit(train_step)")]
    assert len(compiled) == 1, compiled


def test_truncated_bptt_streams_larger_than_the_memory_are_refused(monkeypatch):
    """With --tbptt-k1 the streams of steps x k1 steps are held whole: 2 streams of 100000 x 100 steps (160 MB of
    float32 inputs and int32 targets) against a 10 MB limit."""
    monkeypatch.setattr(train, "_memory_limit", lambda: 10_000_000)
    config = _config(task={"task": "xor", "seq_len": 6, "batch_size": 2}, run={"tbptt_k1": 100, "steps": 100_000})
    with pytest.raises(ValueError, match=r"^batch_size: truncated BPTT on 2 streams of steps x tbptt_k1 = 10000000"):
        train.train_and_evaluate(config)


# ------------------------------------------------------------------ 6. divergence at the first step


def test_divergence_at_the_first_step_points_at_the_initialisation(tmp_path):
    config = _config(model={"activation": "identity", "recurrent_init": "identity", "recurrent_scale": 1000.0},
                     task={"seq_len": 50})  # fmt: skip
    with pytest.raises(train.TrainingDiverged) as info:
        train.train_and_evaluate(config, str(tmp_path))
    message = str(info.value)
    assert info.value.step == 1 and "initial parameters already give a non-finite loss or gradient" in message
    assert "--recurrent-scale" in message and "--seq-len" in message
    assert "--learning-rate" not in message and "--clip global_norm" not in message


@pytest.mark.parametrize("clip", ["global_norm", "value"])
def test_divergence_with_clipping_on_does_not_suggest_turning_it_on(clip):
    message = str(train.TrainingDiverged(5, float("nan"), float("inf"), clip=clip))
    assert "--learning-rate" in message and "--clip global_norm" not in message and "--clip-threshold" in message


def test_divergence_without_clipping_suggests_it():
    message = str(train.TrainingDiverged(5, float("nan"), float("inf"), clip="none"))
    assert "--learning-rate" in message and "(--clip global_norm)" in message
