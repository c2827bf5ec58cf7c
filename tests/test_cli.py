"""The command line: options generated from the configs, files written, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import pytest

from rnn_jax import cli
from rnn_jax.config import Config

pytestmark = pytest.mark.usefixtures("standard_promotion")  # optax's adam (see conftest)


def test_every_config_field_is_an_option_with_help():
    parser = cli.build_parser()
    args = parser.parse_args(["train"])
    assert cli.config_from_args(args) == Config()  # the defaults are the dataclasses' defaults
    text = subprocess.run(
        [sys.executable, "-m", "rnn_jax", "train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in (
        "--task",
        "--hidden",
        "--activation",
        "--clip",
        "--optimizer",
        "--steps",
        "--seed",
        "--dtype",
        "--out",
        "--min-len",
        "--spectral-radius",
        "--no-progress",
    ):
        assert option in text
    assert "Elman's temporal XOR" in text  # the help texts come through


def test_train_writes_metrics_summary_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--task",
            "xor",
            "--seq-len",
            "12",
            "--hidden",
            "4",
            "--steps",
            "30",
            "--eval-every",
            "15",
            "--log-every",
            "10",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "eval accuracy_xor_bits" in printed and "steps/s" in printed
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [10, 20, 30]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["task"]["task"] == "xor" and summary["status"] == "completed"
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_divergence_exits_non_zero_with_the_step(tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--activation",
            "identity",
            "--recurrent-init",
            "glorot_normal",
            "--spectral-radius",
            "3",
            "--seq-len",
            "90",
            "--clip",
            "none",
            "--steps",
            "5",
            "--no-progress",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 1
    assert "training diverged at step 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "copy"], "argument --task: invalid choice: 'copy'"),
        (["--hidden", "0"], "error: --hidden: expected a positive integer, got 0"),
        (["--hidden", "many"], "argument --hidden: invalid int value: 'many'"),
        (["--task", "xor", "--min-len", "3"], "error: --min-len: the xor task has fixed-length streams"),
        (["--learning-rate", "-1"], "error: --learning-rate: expected a finite value > 0, got -1.0"),
        (["--steps", "0"], "error: --steps: expected a positive integer, got 0"),
        (["--seed", str(10**20)], "error: --seed: expected an integer in [0, 2**63), got 100000000000000000000"),
        # the library names config fields; the command line says which options to type instead
        (["--clip", "none", "--clip-threshold", "2"], "got --clip 'none'; drop --clip-threshold or change --clip"),
        (["--task", "xor", "--tbptt-k1", "4", "--tbptt-k2", "2"], "error: --tbptt-k1, --tbptt-k2: TBPTT(k1, k2)"),
        (["--variational-dropout"], "input and output masks once per sequence; needs --dropout > 0"),
        (["--task", "numbers", "--seq-len", "5"], "--seq-len: the numbers task's sequences have their own lengths"),
        (["--layers", "2", "--backward", "bptt"], "deep options (--layers, --bidirectional, --residual, --dropout,"),
        (["--out", ""], "--out: expected a path, got an empty string"),  # trained into runs/adding-DATE instead
        (["--out", "/proc"], "--out: cannot write into the directory '/proc'"),  # failed making /proc/checkpoints
    ],
)
def test_bad_options_exit_2_with_a_clear_message(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--no-progress", "--out", str(tmp_path), *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_refused_run_leaves_no_empty_directory_behind(tmp_path, capsys):
    """The --out directory is made (to check that it can be written) before the config's own checks: a refused
    config left it behind, empty, one more runs/TASK-DATE per mistaken command. One that existed stays."""
    new = tmp_path / "new"
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--no-progress", "--momentum", "0.5", "--out", str(new)])
    assert info.value.code == 2 and "--momentum: read only with --optimizer 'sgd'" in capsys.readouterr().err
    assert not new.exists()
    with pytest.raises(SystemExit):
        cli.main(["train", "--no-progress", "--momentum", "0.5", "--out", str(tmp_path)])
    assert tmp_path.is_dir()


def test_output_paths_that_cannot_be_written_are_refused_before_any_work(tmp_path, capsys):
    taken = tmp_path / "a-file"
    taken.write_text("")
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--no-progress", "--steps", "2", "--out", str(taken)])
    assert info.value.code == 2
    assert f"--out: {str(taken)!r} exists and is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["gradcheck", "--trials", "1", "--json", str(taken / "report.json")])
    assert info.value.code == 2 and "--json: " in capsys.readouterr().err and not taken.is_dir()


@pytest.mark.parametrize(
    ("argv", "message"),
    [  # each once crashed (with a traceback after the work, or in JAX) or fell back silently
        (["gradcheck", "--json", "/proc/report.json"], "--json: cannot write into the directory '/proc'"),
        (["gradcheck", "--json", ""], "--json: expected a path, got an empty string"),
        (["gradcheck", "--seed", str(2**63)], "--seed: expected an integer in [0, 2**63)"),
        (["gradcheck", "--loss", "cross_entropy", "--output-size", "1"], "cross_entropy needs --output-size >= 2"),
        (["bench", "--config", "2,3,1,2,1", "--json", "/proc/bench.json"], "--json: cannot write into the directory"),
        (["bench", "--config", "2,3,1,2,1", "--seed", str(2**64)], "--seed: expected an integer in [0, 2**63)"),
        (["bench", "--config", "2,3,1,2,1", "--cpu-devices", "-1"], "--cpu-devices: expected a positive integer"),
        (["bench", "--config", "2,3,1,2,1", "--cpu-devices", "0"], "--cpu-devices: expected a positive integer"),
        (["sample", "--checkpoint", "missing", "--length", "0"], "--length: expected a positive integer, got 0"),
        (["sample", "--checkpoint", "missing", "--temperature", "inf"], "--temperature: expected a finite value > 0"),
        (["sample", "--checkpoint", "missing", "--prime", "ab\\"], "--prime: cannot read the escape in 'ab\\\\'"),
    ],
)
def test_bad_gradcheck_bench_and_sample_options_exit_2_before_any_work(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_primed_sample_keeps_non_ascii_characters_and_reads_escapes():
    """The prime went through str.encode().decode("unicode_escape"), which read UTF-8 bytes as Latin-1 ('—' became
    'â\x80\x94', "not in the vocabulary")."""
    assert cli._unescape("--prime", "Ay—é\\nthe") == "Ay—é\nthe"


def test_out_of_memory_is_one_line_naming_the_sizes(monkeypatch, capsys):
    def exhausted(args):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 40001600004 bytes.\nmore")

    monkeypatch.setattr(cli, "_gradcheck", exhausted)
    with pytest.raises(SystemExit) as info:
        cli.main(["gradcheck", "--hidden", "200000"])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err
    assert "rnn-jax gradcheck: error: out of memory on cpu (RESOURCE_EXHAUSTED: Out of memory allocating" in err
    assert "try smaller sizes (--hidden, --batch-size, --seq-len)" in err


def test_errors_name_options_but_leave_paths_values_and_plain_words_alone():
    train = cli.build_parser().parse_args(["train"]).command_parser
    assert cli._as_flags("--out: cannot write into '/tmp/log_every/x' (denied)", train) == (
        "--out: cannot write into '/tmp/log_every/x' (denied)"
    )
    assert cli._as_flags("schedule: expected one of ['constant', 'warmup_cosine'], got 'cos'", train) == (
        "--schedule: expected one of ['constant', 'warmup_cosine'], got 'cos'"
    )
    assert cli._as_flags("seq_len: the numbers task's steps are its own", train) == (
        "--seq-len: the numbers task's steps are its own"
    )
