"""Checkpoints and resume: a resumed run ends bit for bit where an uninterrupted one does, a kill at any
moment (during a save included) never damages the newest complete checkpoint, and damaged or
incompatible checkpoints are refused with an error that names the directory."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from rnn_jax import checkpoint, train
from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig
from tests.stages import slow_unless

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax's adam (see conftest)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**sections) -> Config:
    base = Config(
        model=ModelConfig(hidden=6),
        task=TaskConfig(task="adding", seq_len=6, batch_size=4),
        optim=OptimConfig(learning_rate=1e-2),
        run=RunConfig(steps=12, eval_every=6, log_every=3, eval_batches=1, progress=False, checkpoint_every=4),
    )
    return dataclasses.replace(base, **{k: dataclasses.replace(getattr(base, k), **v) for k, v in sections.items()})


BATCHES = {}
TBPTT = {"task": {"task": "xor", "seq_len": 6}, "run": {"tbptt_k1": 2, "tbptt_k2": 4}}


def _steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _lines(workdir) -> list[tuple[str, int]]:
    return [(r["kind"], r["step"]) for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]


def _restore_final(config: Config, workdir) -> checkpoint.Position:
    """The newest checkpoint of ``workdir``, read back as the run's own `Position`."""
    from rnn_jax import optim, tasks

    task = tasks.make(config.task)
    k_init, k_train, _ = train._keys(config.run.seed)
    params = train.init_params(config.model, task, k_init)
    optimizer = optim.make_optimizer(config.optim, config.run.steps)
    _, carried = train._make_advance(config, task, optimizer, params, k_train, train.DTYPES[config.model.dtype])
    state = train.TrainState(jax.numpy.zeros((), jax.numpy.int32), params, optimizer.init(params))
    template = checkpoint.Position(state, carried, jax.random.key_data(k_train))
    run = dataclasses.replace(config.run, resume=True)
    checkpoints = checkpoint.Checkpoints(
        checkpoint.directory_of(str(workdir)), dataclasses.replace(config, run=run), every=1, keep=1, resume=True
    )
    try:
        return checkpoints.restore_latest(template)
    finally:
        checkpoints.close()


def _assert_trees_equal(a, b) -> None:
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


@pytest.mark.parametrize("path", slow_unless([BATCHES], [BATCHES, TBPTT], ids=["random-batches", "tbptt"]))
def test_resumed_run_ends_bit_for_bit_where_an_uninterrupted_run_ends(tmp_path, path):
    """Run 12 steps with checkpoints at 4, 8, 12; keep only step 4 (as if killed just after it) and resume."""
    config = _config(**path)
    whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
    whole_lines = _lines(tmp_path / "whole")
    assert _steps(tmp_path / "whole") == [4, 8, 12]

    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    for step in (8, 12):
        shutil.rmtree(tmp_path / "cut" / "checkpoints" / str(step))
    resume = _config(**{**path, "run": {**path.get("run", {}), "resume": True}})
    resumed = train.train_and_evaluate(resume, str(tmp_path / "cut"))

    assert resumed["resumed_from_step"] == 4
    _assert_trees_equal(resumed["params"], whole["params"])
    _assert_trees_equal(_restore_final(config, tmp_path / "cut"), _restore_final(config, tmp_path / "whole"))
    assert _lines(tmp_path / "cut") == whole_lines  # lines after step 4 dropped, then written once again
    assert resumed["final_eval"] == whole["final_eval"] and resumed["final_train"] == whole["final_train"]


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    config = _config()
    whole = train.train_and_evaluate(config, str(tmp_path))
    again = train.train_and_evaluate(_config(run={"resume": True}), str(tmp_path))
    _assert_trees_equal(again["params"], whole["params"])
    assert again["final_eval"] == whole["final_eval"] and again["resumed_from_step"] == 12


def _signal_during_step(monkeypatch, step: int, number: int) -> None:
    """The training loop's step ``step`` sends this process ``number`` (as Ctrl-C or `kill` would) after its update."""
    make_advance = train._make_advance

    def patched(*args, **kwargs):
        advance, carried = make_advance(*args, **kwargs)

        def advance_and_signal(state, carried, at):
            out = advance(state, carried, at)
            if at == step:
                signal.raise_signal(number)
            return out

        return advance_and_signal, carried

    monkeypatch.setattr(train, "_make_advance", patched)


@pytest.fixture
def sigint(request):
    """SIGINT handled as ``request.param`` says ("raises": Python's KeyboardInterrupt, as in an interactive shell;
    "ignored": as in a shell's background job), restored afterwards."""
    action = signal.default_int_handler if request.param == "raises" else signal.SIG_IGN
    previous = signal.signal(signal.SIGINT, action)
    yield action
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sigint", ["ignored"], indirect=True)
def test_an_ignored_ctrl_c_stays_ignored(tmp_path, monkeypatch, sigint):
    _signal_during_step(monkeypatch, 5, signal.SIGINT)
    assert train.train_and_evaluate(_config(), str(tmp_path))["status"] == "completed"
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize("sigint", ["raises"], indirect=True)
def test_ctrl_c_during_the_last_step_lets_the_run_complete(tmp_path, monkeypatch, sigint):
    _signal_during_step(monkeypatch, 12, signal.SIGINT)
    assert train.train_and_evaluate(_config(), str(tmp_path))["status"] == "completed"
    assert _steps(tmp_path) == [4, 8, 12]


@pytest.mark.parametrize("sigint", ["raises"], indirect=True)
def test_ctrl_c_saves_the_step_under_way_and_resume_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch, sigint):
    """SIGINT during step 5 (checkpoints every 4 steps): the loop finishes step 5, writes its lines, saves it and
    raises TrainingInterrupted; the resumed run ends bit for bit where a run never stopped ends. (A KeyboardInterrupt
    used to escape from wherever it struck, with up to checkpoint_every - 1 steps of work lost.)"""
    whole = train.train_and_evaluate(_config(), str(tmp_path / "whole"))
    with monkeypatch.context() as patch:
        _signal_during_step(patch, 5, signal.SIGINT)
        with pytest.raises(train.TrainingInterrupted, match=r"interrupted after step 5; saved a checkpoint") as info:
            train.train_and_evaluate(_config(), str(tmp_path / "cut"))
    assert (info.value.step, info.value.saved, info.value.signal_number) == (5, True, signal.SIGINT)
    assert _steps(tmp_path / "cut") == [4, 5]
    stored = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert stored["status"] == "interrupted" and stored["interrupted_at_step"] == 5
    assert _lines(tmp_path / "cut")[-1] == ("train", 5)
    assert signal.getsignal(signal.SIGINT) is sigint  # the handler is put back

    resumed = train.train_and_evaluate(_config(run={"resume": True}), str(tmp_path / "cut"))
    assert resumed["resumed_from_step"] == 5
    _assert_trees_equal(resumed["params"], whole["params"])
    assert resumed["final_eval"] == whole["final_eval"]
    # the same lines as the whole run's, and the one written at the stop
    assert sorted(_lines(tmp_path / "cut")) == sorted([*_lines(tmp_path / "whole"), ("train", 5)])


def test_sigterm_stops_the_cli_with_the_command_that_continues(tmp_path, monkeypatch, capsys):
    from rnn_jax.cli import main

    argv = _cli(tmp_path, steps=12, checkpoint_every=4, log_every=3, eval_every=6)
    _signal_during_step(monkeypatch, 6, signal.SIGTERM)
    assert main(argv) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "interrupted after step 6; saved a checkpoint of it" in err
    [command] = re.findall(r"continue with: rnn-jax train (.*)", err)
    assert command.endswith(f"--resume --out {tmp_path}") and command.count("--out") == 1
    monkeypatch.undo()
    assert main(["train", *shlex.split(command)]) == 0
    whole = train.train_and_evaluate(_config(), str(tmp_path / "whole"))
    _assert_trees_equal(_restore_final(_config(), tmp_path).state.params, whole["params"])


def test_a_one_step_run_and_a_finished_run_resumed_write_no_nan_speed(tmp_path):
    """steps_per_second is null (JSON) when no step after the compiled first one ran, and resuming a finished run
    keeps the timing of the run that trained it (it became NaN, and summary.json then held a bare NaN)."""
    one = train.train_and_evaluate(_config(run={"steps": 1}), str(tmp_path / "one"))
    assert one["steps_per_second"] is None and one["compile_s"] > 0
    json.loads((tmp_path / "one" / "summary.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    train.train_and_evaluate(_config(), str(tmp_path / "two"))
    first = json.loads((tmp_path / "two" / "summary.json").read_text())
    again = train.train_and_evaluate(_config(run={"resume": True}), str(tmp_path / "two"))
    timing = ("compile_s", "steps_per_second")
    assert [again[k] for k in timing] == [first[k] for k in timing]


def test_a_finished_run_resumed_with_more_steps_ends_where_a_run_of_that_many_ends(tmp_path):
    """With the constant learning rate the updates do not depend on the run's length: a finished 8-step run resumed
    with --steps 12 ends bit for bit where a 12-step run does, its metrics the short run's lines and then the long
    run's lines after step 8."""
    train.train_and_evaluate(_config(run={"steps": 8}), str(tmp_path / "extended"))
    short_lines = _lines(tmp_path / "extended")
    extended = train.train_and_evaluate(_config(run={"resume": True}), str(tmp_path / "extended"))
    whole = train.train_and_evaluate(_config(), str(tmp_path / "whole"))

    assert extended["resumed_from_step"] == 8 and extended["steps"] == whole["steps"] == 12
    _assert_trees_equal(extended["params"], whole["params"])
    _assert_trees_equal(_restore_final(_config(), tmp_path / "extended"), _restore_final(_config(), tmp_path / "whole"))
    assert _lines(tmp_path / "extended") == short_lines + [line for line in _lines(tmp_path / "whole") if line[1] > 8]
    assert extended["final_eval"] == whole["final_eval"] and extended["final_train"] == whole["final_train"]


@pytest.mark.parametrize(
    "sections, steps, reason",
    [
        ({"optim": {"schedule": "cosine"}}, 16, r"the 'cosine' learning-rate schedule spans the run's length"),
        (TBPTT, 16, r"truncated BPTT's stream is drawn for the run's length"),
        ({}, 8, r"the checkpoint is of step 12, past the new --steps"),
    ],
    ids=["decaying-schedule", "tbptt", "fewer-steps-than-the-checkpoint"],
)
def test_a_change_of_steps_is_refused_where_it_would_change_the_run(tmp_path, sections, steps, reason):
    train.train_and_evaluate(_config(**sections), str(tmp_path))
    resume = _config(**{**sections, "run": {**sections.get("run", {}), "resume": True, "steps": steps}})
    message = rf"incompatible config.*run\.steps: checkpoint 12, now {steps} \({reason}"
    with pytest.raises(checkpoint.CheckpointError, match=message):
        train.train_and_evaluate(resume, str(tmp_path))


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    train.train_and_evaluate(_config(run={"checkpoint_every": 2, "keep_checkpoints": 2}), str(tmp_path))
    assert _steps(tmp_path) == [10, 12]


def test_a_new_run_refuses_a_directory_that_holds_checkpoints(tmp_path):
    train.train_and_evaluate(_config(), str(tmp_path))
    with pytest.raises(checkpoint.CheckpointError, match=r"already holds checkpoints \(latest step 12\).*--resume"):
        train.train_and_evaluate(_config(), str(tmp_path))


def test_a_new_run_refuses_a_directory_that_holds_an_earlier_runs_metrics(tmp_path):
    """A run that diverged (or was stopped) before its first checkpoint leaves metrics but no checkpoint: a new run
    there overwrote them without a word."""
    with pytest.raises(train.TrainingDiverged):
        train.train_and_evaluate(_config(optim={"learning_rate": 1e30, "clip": "none"}), str(tmp_path))
    assert not _steps(tmp_path) and (tmp_path / "metrics.jsonl").exists()
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(checkpoint.CheckpointError, match=r"already holds an earlier run \(metrics.jsonl, summary.js"):
        train.train_and_evaluate(_config(), str(tmp_path))
    assert (tmp_path / "metrics.jsonl").read_text() == before
    assert train.train_and_evaluate(_config(run={"resume": True}), str(tmp_path))["status"] == "completed"


def test_an_incompatible_config_is_refused(tmp_path):
    train.train_and_evaluate(_config(), str(tmp_path))
    resume = _config(model={"hidden": 7}, optim={"learning_rate": 0.1}, run={"resume": True, "log_every": 1})
    message = (
        r"incompatible config.*model\.hidden: checkpoint 6, now 7; optim\.learning_rate: checkpoint 0\.01, now 0\.1"
    )
    with pytest.raises(checkpoint.CheckpointError, match=message) as info:
        train.train_and_evaluate(resume, str(tmp_path))
    assert str(tmp_path / "checkpoints" / "12") in str(info.value)
    assert "log_every" not in str(info.value)  # a reporting option may change


def test_another_format_version_is_refused(tmp_path, monkeypatch):
    train.train_and_evaluate(_config(), str(tmp_path))
    written = checkpoint.FORMAT_VERSION
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", written + 1)
    with pytest.raises(
        checkpoint.CheckpointError,
        match=rf"checkpoints/12: checkpoint format version {written}, .* reads version {written + 1}",
    ):
        train.train_and_evaluate(_config(run={"resume": True}), str(tmp_path))


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m rnn_jax ARGS`` in a subprocess (orbax's stray reader threads after a failed read stay there)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "rnn_jax", *args], env=env, cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize(
    "damage",
    [
        "truncate",
        pytest.param("flip-bytes", marks=pytest.mark.slow),
        pytest.param("delete-metadata", marks=pytest.mark.slow),
    ],
)
def test_a_damaged_checkpoint_is_reported_not_loaded(tmp_path, damage):
    train.train_and_evaluate(_config(), str(tmp_path))
    step_dir = tmp_path / "checkpoints" / "12"
    data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    for path in data_files:  # tensorstore's OCDBT files that hold the arrays
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            del data[len(data) // 2 :]
        elif damage == "flip-bytes":
            data[len(data) // 2 : len(data) // 2 + 8] = bytes(
                b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 8]
            )
        path.write_bytes(bytes(data))
    if damage == "delete-metadata":
        (step_dir / "meta" / "metadata").unlink()
    result = _run_cli(*_cli(tmp_path, "--resume", steps=12, checkpoint_every=4, log_every=3, eval_every=6))
    assert result.returncode == 2, result.stderr
    # one line: no TensorStore spec in it, no traceback after it (orbax's abandoned reads printed theirs at exit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    message = lines[0]
    assert message.startswith(f"rnn-jax train: error: {step_dir}: "), result.stderr
    assert "cannot read the checkpoint" in message or "do not match the digest" in message


def test_sampling_a_run_without_checkpoints_is_one_line_and_a_read_leaves_a_save_under_way_alone(tmp_path):
    """`load_trained` (what `rnn-jax sample` reads with) opens the checkpoints without writing: it neither makes the
    directory nor deletes an unfinished save (a run still training beside it would lose that save), and a run
    without a checkpoint is one line of error, not the traceback of orbax's cleanup thread at interpreter exit."""
    train.train_and_evaluate(_config(), str(tmp_path))
    under_way = tmp_path / "checkpoints" / "16.orbax-checkpoint-tmp-1234"
    under_way.mkdir()
    train.load_trained(str(tmp_path))
    assert under_way.is_dir()
    shutil.rmtree(tmp_path / "checkpoints")
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint to load"):
        train.load_trained(str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()
    result = _run_cli("sample", "--checkpoint", str(tmp_path), "--length", "5")
    assert result.returncode == 2
    expected = f"rnn-jax sample: error: {tmp_path / 'checkpoints'}: no checkpoint to load"
    assert result.stderr.strip().splitlines() == [expected], result.stderr


def _cli(workdir, *extra: str, steps=400, checkpoint_every=20, log_every=20, eval_every=200) -> list[str]:
    """The command line of `_config`'s run (with these run options)."""
    return [
        "train", "--task", "adding", "--seq-len", "6", "--batch-size", "4", "--hidden", "6",
        "--learning-rate", "0.01", "--steps", str(steps), "--log-every", str(log_every), "--eval-every",
        str(eval_every), "--eval-batches", "1", "--checkpoint-every", str(checkpoint_every),
        "--keep-checkpoints", "2", "--no-progress", "--out", str(workdir), *extra,
    ]  # fmt: skip


def _cli_config(**run) -> Config:
    return _config(run={"steps": 400, "log_every": 20, "eval_every": 200, "checkpoint_every": 20, **run})


def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, cwd=ROOT)


@pytest.mark.slow  # subprocesses, ~12 s each: in the second test stage
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    workdir = tmp_path / "run"
    child = _python("import sys; from rnn_jax.cli import main; sys.exit(main(sys.argv[1:]))", *_cli(workdir))
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline:
        if (workdir / "checkpoints").is_dir() and any(s >= 60 for s in _steps(workdir)):
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert child.wait() == -signal.SIGKILL, "the run ended before it could be killed; give it more steps"
    killed_at = max(_steps(workdir))
    assert killed_at < 400

    from rnn_jax.cli import main

    assert main(_cli(workdir, "--resume")) == 0
    whole = train.train_and_evaluate(_cli_config(), str(tmp_path / "whole"))
    _assert_trees_equal(_restore_final(_cli_config(), workdir).state.params, whole["params"])
    assert _lines(workdir) == _lines(tmp_path / "whole")
    assert json.loads((workdir / "summary.json").read_text())["resumed_from_step"] >= killed_at


@pytest.mark.slow  # subprocesses, ~12 s each: in the second test stage
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_good(tmp_path):
    """SIGKILL just before orbax renames the finished temporary directory of step 60 into place: the
    newest complete checkpoint (40) is untouched, the leftover is ignored, and resuming ends as if never stopped."""
    workdir = tmp_path / "run"
    child = _python(
        """
        import os, signal, sys
        from orbax.checkpoint._src.path import atomicity
        rename = atomicity.async_path.rename

        async def rename_or_die(src, dst, *args, **kwargs):
            if os.path.basename(str(dst)) == "60":  # step 60's data is all written, not yet in place
                os.kill(os.getpid(), signal.SIGKILL)
            return await rename(src, dst, *args, **kwargs)

        atomicity.async_path.rename = rename_or_die
        from rnn_jax.cli import main
        sys.exit(main(sys.argv[1:]))
        """,
        *_cli(workdir),
    )
    assert child.wait(timeout=120) == -signal.SIGKILL
    leftovers = [p.name for p in (workdir / "checkpoints").iterdir() if not p.name.isdigit()]
    assert any(name.startswith("60.orbax-checkpoint-tmp") for name in leftovers), leftovers
    assert _steps(workdir) == [20, 40]

    from rnn_jax.cli import main

    assert main(_cli(workdir, "--resume")) == 0
    whole = train.train_and_evaluate(_cli_config(), str(tmp_path / "whole"))
    _assert_trees_equal(_restore_final(_cli_config(), workdir).state.params, whole["params"])
    assert json.loads((workdir / "summary.json").read_text())["resumed_from_step"] == 40
    assert not any("tmp" in p.name for p in (workdir / "checkpoints").iterdir())


def test_resume_needs_a_directory_and_tensorboard_says_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"resume: needs the output directory"):
        train.train_and_evaluate(_config(run={"resume": True}))
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    with pytest.raises(ImportError, match=r"tensorboard: .*needs tensorboardX.*pip install"):
        train.train_and_evaluate(_config(run={"tensorboard": True}), str(tmp_path))


def _scalars(workdir) -> dict[str, list[int]]:
    """The steps of every scalar in ``workdir``'s event files (TFRecord framing: length, crc, event, crc),
    and under "purge" the steps of session starts (from which TensorBoard drops the older events)."""
    import struct

    from tensorboardX.proto import event_pb2

    steps: dict[str, list[int]] = {"purge": []}
    for path in sorted(pathlib.Path(workdir).glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                steps["purge"].append(event.step)
    return steps


def test_tensorboard_scalars_are_written_beside_the_metrics_and_a_resume_purges_the_later_ones(tmp_path):
    pytest.importorskip("tensorboardX")
    train.train_and_evaluate(_config(run={"tensorboard": True}), str(tmp_path))
    scalars = _scalars(tmp_path)
    assert scalars["train/loss"] == [3, 4, 6, 8, 9, 12] == [s for k, s in _lines(tmp_path) if k == "train"]
    assert scalars["eval/loss"] == [6, 12] and scalars["train/grad_norm"] == scalars["train/loss"]
    for step in (8, 12):
        shutil.rmtree(tmp_path / "checkpoints" / str(step))
    train.train_and_evaluate(_config(run={"tensorboard": True, "resume": True}), str(tmp_path))
    assert _scalars(tmp_path)["purge"] == [5]  # TensorBoard hides the first run's events from step 5 on


def test_a_field_missing_from_an_older_checkpoint_counts_as_its_default():
    current = Config().to_dict()
    older = {section: dict(fields) for section, fields in current.items()}
    del older["model"]["layers"]  # written before stacked networks existed
    assert checkpoint.config_differences(older, current) == []
    changed = {**current, "model": {**current["model"], "layers": 2}}
    assert checkpoint.config_differences(older, changed) == ["model.layers: checkpoint 1, now 2"]


def _position(step=3, width=4, dtype=np.float32, fill=1.0, bias=True) -> checkpoint.Position:
    """A small `Position` of parameters ``w_x [2, width]`` and ``b [width]`` (None without ``bias``)."""
    params = {"w_x": np.full((2, width), fill, dtype), "b": np.zeros((width,), dtype) if bias else None}
    state = train.TrainState(jax.numpy.asarray(step, jax.numpy.int32), params, ())
    return checkpoint.Position(state, (), jax.random.key_data(jax.random.key(0)))


def _checkpoints(tmp_path, **options) -> checkpoint.Checkpoints:
    return checkpoint.Checkpoints(
        str(tmp_path / "checkpoints"), Config(), **{"every": 1, "keep": 3, "resume": True, **options}
    )


@pytest.mark.parametrize(
    "template, difference",
    [
        ({"width": 8}, r"template: state\.params\.w_x has shape \(2, 8\), the checkpoint stores \(2, 4\)"),
        (
            {"dtype": jax.numpy.bfloat16},
            r"template: state\.params\.w_x has dtype bfloat16, the checkpoint stores float32",
        ),
        ({"bias": False}, r"the checkpoint stores state\.params\.b \(shape \(4,\), float32\), the template has"),
    ],
    ids=["width", "dtype", "missing-array"],
)
def test_a_template_of_another_model_is_a_mismatch_not_damage(tmp_path, template, difference):
    """The same run with a model of another width (or dtype, or without an array) was reported as a damaged
    checkpoint to delete, or as one that does not match its digest; the checkpoint is fine."""
    checkpoints = _checkpoints(tmp_path)
    try:
        checkpoints.save(_position())
        with pytest.raises(checkpoint.CheckpointError, match=difference) as info:
            checkpoints.restore_latest(_position(**template))
        message = str(info.value)
        assert message.startswith(f"{tmp_path / 'checkpoints' / '3'}: the template does not match the checkpoint")
        assert "not damage" in message and "damaged" not in message and "Delete" not in message
        assert "digest" not in message
        _assert_trees_equal(checkpoints.restore_latest(_position()), _position())  # intact
    finally:
        checkpoints.close()


def test_a_step_is_saved_once_never_silently_kept_from_its_first_save(tmp_path):
    """orbax skips a step that is not after the newest one without a word: a second save of step 3 was lost, and a
    restore gave back the first."""
    checkpoints = _checkpoints(tmp_path)
    try:
        checkpoints.save(_position(step=3, fill=1.0))
        with pytest.raises(checkpoint.CheckpointError, match=r"checkpoints/3: a checkpoint of step 3 already exists"):
            checkpoints.save(_position(step=3, fill=5.0))
        with pytest.raises(checkpoint.CheckpointError, match=r"step 2 is before the newest checkpoint .* step 3"):
            checkpoints.save(_position(step=2))
        _assert_trees_equal(checkpoints.restore_latest(_position()), _position(fill=1.0))
        assert checkpoints.latest_step() == 3
    finally:
        checkpoints.close()
    reader = _checkpoints(tmp_path, read_only=True)
    try:
        with pytest.raises(checkpoint.CheckpointError, match=r"checkpoints/4: cannot save, .* opened read_only"):
            reader.save(_position(step=4))
    finally:
        reader.close()
    assert _steps(tmp_path) == [3]


@pytest.mark.parametrize(
    "step", [-1, np.float32(2.5), np.array([1, 2], np.int32), True], ids=["negative", "float", "vector", "bool"]
)
def test_a_step_that_is_not_a_non_negative_integer_is_refused_naming_it(tmp_path, step):
    checkpoints = _checkpoints(tmp_path)
    position = _position()
    try:
        with pytest.raises(ValueError, match=r"position\.state\.step: expected a non-negative integer scalar"):
            checkpoints.save(position._replace(state=position.state._replace(step=step)))
    finally:
        checkpoints.close()
    assert _steps(tmp_path) == []


@pytest.mark.parametrize(
    "options, name",
    [({"every": True}, "checkpoint_every"), ({"every": -1}, "checkpoint_every"), ({"keep": True}, "keep_checkpoints")],
    ids=["every-true", "every-negative", "keep-true"],
)
def test_a_bool_or_negative_checkpoint_option_is_refused_naming_it(tmp_path, options, name):
    with pytest.raises(ValueError, match=rf"{name}: expected a (non-negative|positive) integer, got"):
        _checkpoints(tmp_path, **options)


def test_only_abandoned_reads_of_a_damaged_file_are_dropped_from_asyncios_log():
    """The future of a read abandoned beside the failed one was logged by asyncio at collection ("Future exception
    was never retrieved", once in a fresh-clone run of the flipped-bytes case above); the CLI's filter drops those
    and keeps every other asyncio record."""
    import logging

    from rnn_jax import cli

    def record(message, error):
        exc_info = (type(error), error, None) if error is not None else None
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, exc_info)

    damaged = ValueError('DATA_LOSS: Error opening "zarr" driver: Error reading "key/.zarray"')
    assert not cli._drop_abandoned_read_futures(record("Future exception was never retrieved\nfuture: <F>", damaged))
    assert cli._drop_abandoned_read_futures(record("Future exception was never retrieved", ValueError("other")))
    assert cli._drop_abandoned_read_futures(record("Task was destroyed but it is pending!", damaged))
    assert cli._drop_abandoned_read_futures(record("Future exception was never retrieved", None))
