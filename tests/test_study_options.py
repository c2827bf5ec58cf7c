"""The studies' shared command line (`experiments._common.parse_args`) and the real-data studies' reruns, fast."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from experiments import _common, _real, sunspots


@pytest.mark.parametrize(
    ("out", "message"),
    [  # each was accepted, and the study failed (or wrote into the current directory) when it wrote its results
        ("/proc", "--out: cannot write into the directory '/proc'"),
        ("/proc/x", "--out: cannot make the directory '/proc/x'"),
        ("", "--out: expected a path, got an empty string"),
    ],
)
def test_an_out_that_cannot_be_written_is_refused_in_one_line_before_any_work(out, message, capsys):
    with pytest.raises(SystemExit) as info:
        _common.parse_args("vanishing_gradients", "A study.", argv=["--out", out])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit) as info:
        _common.parse_args("sunspots", "A study.", argv=["--out", str(tmp_path / "a-file")])
    assert info.value.code == 2 and "exists and is not a directory" in capsys.readouterr().err


def test_the_default_out_is_the_repositorys_results_folder_wherever_the_command_runs(tmp_path, monkeypatch):
    """seq2seq_numbers and the real-data studies wrote to experiments/results/NAME below the current directory."""
    monkeypatch.chdir(tmp_path)
    args = _common.parse_args("sunspots", "A study.", argv=[])
    assert args.out == str(_common.RESULTS / "sunspots") and os.path.isabs(args.out)


def test_a_quick_run_leaves_the_committed_full_results_alone():
    """--quick wrote into the study's committed folder by default, replacing a full run's results with a quick one's;
    it now writes into the folder's quick/ subfolder, which git ignores. An explicit --out is taken as given."""
    import subprocess

    args = _common.parse_args("sunspots", "A study.", argv=["--quick"])
    assert args.out == str(_common.RESULTS / "sunspots" / "quick")
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=_common.RESULTS, capture_output=True,
                            check=False)  # fmt: skip
    if inside.returncode != 0:
        pytest.skip("not a git checkout: which folders git ignores cannot be asked")
    ignored = subprocess.run(["git", "check-ignore", "-q", os.path.join(args.out, "results.json")],
                             cwd=_common.RESULTS, check=False)  # fmt: skip
    assert ignored.returncode == 0, "git does not ignore the quick runs' folder"
    committed = subprocess.run(["git", "check-ignore", "-q", str(_common.RESULTS / "sunspots" / "results.json")],
                               cwd=_common.RESULTS, check=False)  # fmt: skip
    assert committed.returncode == 1
    assert _common.parse_args("sunspots", "A study.", argv=["--quick", "--out", "elsewhere"]).out == "elsewhere"


def test_help_shows_the_defaults_and_the_docstrings_command_and_runtime(capsys):
    doc = "A study.\n\nReferences: none.\n\nCommand:\n  python -m experiments.sunspots --quick\n\nExpected runtime: 1 s"
    with pytest.raises(SystemExit):
        _common.parse_args("sunspots", doc, argv=["--help"])
    printed = capsys.readouterr().out
    assert f"(default: {_common.RESULTS / 'sunspots'}; with --quick {_common.RESULTS / 'sunspots' / 'quick'}," in (
        " ".join(printed.split())
    )
    assert "(default: None)" not in printed
    assert "Command:\n  python -m experiments.sunspots --quick\n\nExpected runtime: 1 s" in printed
    assert "References" not in printed


@pytest.mark.usefixtures("standard_promotion")
def test_a_real_data_study_run_twice_into_one_folder_replaces_its_earlier_run(tmp_path, capsys):
    """The README's command regenerates the committed results: the second run was refused ("already holds an
    earlier run: pass --resume", an option the studies do not have)."""
    tiny = dataclasses.replace(
        sunspots.CONFIG,
        model=dataclasses.replace(sunspots.CONFIG.model, hidden=3),
        task=dataclasses.replace(sunspots.CONFIG.task, seq_len=12, batch_size=4),
        run=dataclasses.replace(sunspots.CONFIG.run, steps=2, eval_every=2, eval_batches=1),
    )
    for seed in (0, 1):
        config = dataclasses.replace(tiny, run=dataclasses.replace(tiny.run, seed=seed))
        results = _real.main("sunspots", "A question.", config, config, ["--out", str(tmp_path)], ["rmse"])
        assert results["config"]["run"]["seed"] == seed
    assert "sunspots: replacing the earlier run in" in capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text())["config"]["run"]["seed"] == 1
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_ctrl_c_ends_a_study_in_one_line_with_status_130(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/repo/experiments/long_dependencies.py"])

    def study():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        _common.run(study)
    assert info.value.code == 130
    assert capsys.readouterr().err.strip() == (
        "long_dependencies: interrupted before its results were written (the long studies keep each finished "
        "training run in OUT/runs.jsonl)"
    )


def test_an_unexpected_divergence_ends_a_study_in_one_line_with_status_1(capsys, monkeypatch):
    from rnn_jax.train import TrainingDiverged

    monkeypatch.setattr("sys.argv", ["/repo/experiments/sunspots.py"])

    def study():
        raise TrainingDiverged(7, float("nan"), float("inf"))

    with pytest.raises(SystemExit) as info:
        _common.run(study)
    assert info.value.code == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("sunspots: training diverged at step 7: loss = nan, gradient norm = inf.")


@pytest.mark.parametrize("name", ["results.json", "summary.md", "runs.jsonl", "loss_curve.png", "sample.txt"])
def test_a_directory_where_a_study_writes_a_file_is_refused_before_any_work(tmp_path, capsys, name):
    """gate_input_product ran its 17 s, then failed in write_json with a traceback: OUT/results.json was a folder."""
    (tmp_path / name).mkdir()
    with pytest.raises(SystemExit) as info:
        _common.parse_args("gate_input_product", "A study.", argv=["--out", str(tmp_path)])
    assert info.value.code == 2
    assert f"--out: {str(tmp_path / name)!r} is a directory" in capsys.readouterr().err


def test_the_folders_a_study_keeps_in_its_out_are_accepted(tmp_path):
    """The real-data studies' checkpoints/ and the committed results' quick/ and xeon/ are folders by design."""
    for name in ("checkpoints", "quick", "xeon"):
        (tmp_path / name).mkdir()
    (tmp_path / "results.json").write_text("{}")  # an earlier run's results are replaced
    assert _common.parse_args("sunspots", "A study.", argv=["--out", str(tmp_path)]).out == str(tmp_path)


GPU_RUN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "gpu_run.sh")


@pytest.mark.parametrize("stages", ["fusde", "fused tset", " "])
def test_gpu_run_refuses_an_unknown_stage_before_anything_runs(tmp_path, stages):
    """A typo in STAGES wrote env.txt and exited 0: a GPU lease spent on nothing."""
    import subprocess
    import sys

    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "STAGES": stages, "PYTHON": sys.executable}
    done = subprocess.run(["bash", GPU_RUN], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "STAGES" in done.stderr and "fused fused-gru" in done.stderr  # names the setting and lists the stages
    assert not out.exists()


def test_gpu_run_lists_every_stage_it_runs():
    """The list that STAGES is checked against is the stages the script has."""
    import re

    with open(GPU_RUN) as f:
        script = f.read()
    listed = re.search(r'^KNOWN_STAGES="([^"]*)"', script, re.M)
    assert listed is not None
    assert set(listed.group(1).split()) == set(re.findall(r'\[\[ " \$STAGES " == \*" ([\w-]+) "\* \]\]', script))
