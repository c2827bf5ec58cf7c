"""The gradient checker passes on correct code and, above all, fails on planted bugs."""

from __future__ import annotations

import dataclasses
import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import bptt, cli, gradcheck
from rnn_jax.config import GradcheckConfig

QUICK = GradcheckConfig(trials=2, seed=3, hidden=4, seq_len=5)
PAIRS = {
    "bptt vs autodiff",
    "custom_vjp vs autodiff",
    "fused_vjp vs autodiff",
    "remat vs autodiff",
    "forward vs autodiff",
    "autodiff vs finite_diff",
}


def test_every_path_agrees_and_the_report_says_so():
    report = gradcheck.check_gradients(dataclasses.replace(QUICK, tbptt_k1=2, tbptt_k2=3))
    assert report.passed, gradcheck.format_table(report)
    worst = report.worst()
    assert PAIRS | {
        "tbptt custom_vjp vs tbptt autodiff",
        "tbptt fused_vjp vs tbptt autodiff",
        "tbptt autodiff vs finite_diff of truncated objective",
    } == set(worst)
    for pair, c in worst.items():
        assert c.max_rel <= c.tolerance, pair
    # the analytic paths agree to round-off, far inside their tolerance
    assert worst["bptt vs autodiff"].max_rel < 1e-13
    text = gradcheck.format_table(report)
    assert "PASSED" in text and "w_s" in text


def test_a_dropped_activation_derivative_is_caught(monkeypatch):
    """Plant a bug in the hand-derived BPTT (phi' replaced by 1): the checker must fail exactly those paths."""
    monkeypatch.setattr(bptt, "activation_derivative", lambda act, pre, s: jnp.ones_like(s))
    config = dataclasses.replace(QUICK, activation="tanh")
    report = gradcheck.check_gradients(config)
    assert not report.passed
    failed = {f"{c.method} vs {c.reference}" for c in report.comparisons if not c.passed}
    assert failed == {"bptt vs autodiff", "custom_vjp vs autodiff", "fused_vjp vs autodiff"}
    assert report.worst()["bptt vs autodiff"].max_rel > 1e-3
    assert "largest disagreement: " in gradcheck.explain(report)


def test_a_finite_difference_disagreement_of_a_thousandth_is_caught(monkeypatch):
    """The planted bugs above are large; this one is small: central differences scaled by 1 + 1e-3 (as an autodiff
    gradient wrong by a thousandth would look) must fail the autodiff-vs-finite-difference comparison, and only it
    (its tolerance is 1e-6 relative; at 1e-1 every planted bug above still failed)."""
    central_differences = gradcheck._central_differences
    monkeypatch.setattr(gradcheck, "_central_differences", lambda *a: central_differences(*a) * (1 + 1e-3))
    report = gradcheck.check_gradients(QUICK)
    failed = {f"{c.method} vs {c.reference}" for c in report.comparisons if not c.passed}
    assert failed == {"autodiff vs finite_diff"}
    assert 5e-4 < report.worst()["autodiff vs finite_diff"].max_rel < 2e-3


def test_agreement_is_judged_relative_to_the_gradients_size():
    """`Tolerance`: pass when max |a - b| <= rtol * max(max |a|, max |b|, floor). A gradient of size 1e8 that agrees
    to 1e-12 relative passes (its absolute error, 1e-4, is far above rtol); one of size 1e-8 that is wrong by 100%
    fails (its absolute error, 1e-8, is far below rtol); below the floor, errors are judged against the floor."""
    tolerance = gradcheck.Tolerance(rtol=1e-6, floor=1e-12)

    def passes(got, want):
        [comparison] = gradcheck._compare(0, "m", "r", ["w"], [np.asarray(got)], [np.asarray(want)], tolerance)
        return comparison.passed

    assert passes([1e8, 1.0], [1e8 + 1e-4, 1.0])
    assert not passes([1e-8, 2e-8], [2e-8, 2e-8])
    assert passes([1e-19, 0.0], [0.0, 0.0])  # 1e-19 against the floor 1e-12: within 1e-6 of it
    assert not passes([1e-17, 0.0], [0.0, 0.0])


@pytest.mark.slow
def test_a_rematerialisation_bug_is_caught(monkeypatch):
    """Plant a bug in the checkpointed scan (each chunk recomputed from a state detached from the chunk before):
    the checker must fail exactly the remat path."""
    unroll_module = importlib.import_module("rnn_jax.unroll")  # `from rnn_jax import unroll` is the function

    remat_scan = unroll_module._remat_scan

    def detached_chunks(cell_step, initial_state, xs, mask, unroll, chunk):
        outputs, states, carry = [], [], initial_state
        for start in range(0, xs.shape[0], chunk):  # each chunk's entering state cut from the gradient
            piece = slice(start, start + chunk)
            out, st, carry = remat_scan(cell_step, jax.lax.stop_gradient(carry), xs[piece],
                                        None if mask is None else mask[piece], unroll, chunk)  # fmt: skip
            outputs.append(out)
            states.append(st)
        return jnp.concatenate(outputs), jnp.concatenate(states), carry

    monkeypatch.setattr(unroll_module, "_remat_scan", detached_chunks)
    report = gradcheck.check_gradients(dataclasses.replace(QUICK, trials=1, seq_len=5, activation="tanh"))
    failed = {f"{c.method} vs {c.reference}" for c in report.comparisons if not c.passed}
    assert failed == {"remat vs autodiff"}


@pytest.mark.slow
def test_a_truncation_bug_is_caught(monkeypatch):
    """Plant a bug in TBPTT (a window's front padding run as real steps): the truncated check must fail."""

    def all_valid(index, k1, k2, batch):
        valid, scored = window_masks(index, k1, k2, batch)
        return jnp.ones_like(valid), scored

    window_masks = bptt.window_masks
    monkeypatch.setattr(bptt, "window_masks", all_valid)
    report = gradcheck.check_gradients(dataclasses.replace(QUICK, tbptt_k1=1, tbptt_k2=3, activation="tanh"))
    failed = {f"{c.method} vs {c.reference}" for c in report.comparisons if not c.passed}
    assert "tbptt autodiff vs finite_diff of truncated objective" in failed
    assert "autodiff vs finite_diff" not in failed  # the untruncated paths are unaffected


@pytest.mark.slow
def test_cli_writes_json_and_exits_by_the_verdict(tmp_path, capsys, monkeypatch):
    path = tmp_path / "out.json"
    assert cli.main(["gradcheck", "--trials", "2", "--seq-len", "4", "--json", str(path), "--explain"]) == 0
    printed = capsys.readouterr().out
    assert "PASSED" in printed and "largest disagreement" in printed
    data = json.loads(path.read_text())
    assert data["passed"] is True and len(data["trials"]) == 2
    assert set(data["worst"]) == PAIRS
    assert all(set(c) >= {"param", "max_abs", "max_rel", "tolerance", "passed"} for c in data["comparisons"])
    monkeypatch.setattr(bptt, "activation_derivative", lambda act, pre, s: jnp.ones_like(s))
    assert cli.main(["gradcheck", "--activation", "sigmoid", "--seq-len", "4"]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trials": 0}, r"trials: expected a positive integer, got 0"),
        ({"tbptt_k1": 3, "tbptt_k2": 2}, r"k1 <= k2"),
        ({"tbptt_k1": 3}, r"tbptt_k1, tbptt_k2: give both or neither"),
        ({"model": "transformer"}, r"model: expected one of"),
        ({"fd_step": 0.0}, r"fd_step: expected a finite value > 0, got 0.0"),
        ({"fd_step": "1e-5"}, r"fd_step: expected a finite value > 0, got '1e-5'"),  # a raw "'>' not supported"
        ({"fd_step": float("inf")}, r"fd_step: expected a finite value > 0, got inf"),  # every difference 0 or NaN
        ({"lengths": "none"}, r"lengths: expected one of \['full', 'variable', 'random'\], got 'none'"),  # ran as full
        ({"residual": True}, r"residual: .* needs layers >= 2, got layers=1"),  # passed, checking no residual
        # every error 0: softmax over one class has a zero gradient, so the check "PASSED" on zeros
        ({"loss": "cross_entropy", "output_size": 1}, r"output_size: cross_entropy needs output_size >= 2 .*, got 1"),
        ({"seed": -1}, r"seed: expected an integer in \[0, 2\*\*63\), got -1"),  # a NumPy error
        ({"seed": 1.5}, r"seed: expected an integer in \[0, 2\*\*63\), got 1.5"),
    ],
)
def test_bad_options_get_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        gradcheck.check_gradients(dataclasses.replace(QUICK, **changes))


@pytest.mark.parametrize(
    ("field", "value"),
    [("learn_initial_state", "no"), ("bidirectional", "yes"), ("residual", "no"), ("bidirectional", 1)],
)
def test_deep_options_that_are_not_bools_are_type_errors(field, value):
    """A string is truthy: learn_initial_state="no" checked a network with a learnable initial state, and
    residual="no" was refused as a residual network of one layer."""
    with pytest.raises(TypeError, match=rf"{field}: expected True or False, got {value!r}"):
        gradcheck.check_gradients(dataclasses.replace(QUICK, **{field: value}))


def test_drawn_trials_never_pair_cross_entropy_with_one_class():
    """A softmax over one class has a zero gradient: such a trial passed on zeros. With loss="random" and O drawn
    from [1, 2], those trials take squared error; the draws are otherwise those of the seed."""
    config = dataclasses.replace(QUICK, trials=60, output_size=2, loss="random")
    rng = np.random.default_rng(config.seed)
    trials = [gradcheck._draw_trial(config, index, rng) for index in range(config.trials)]
    assert {t.output_size for t in trials} == {1, 2} and {t.loss for t in trials} == {"squared_error", "cross_entropy"}
    assert not any(t.loss == "cross_entropy" and t.output_size == 1 for t in trials)


def test_the_checker_leaves_64_bit_mode_as_it_found_it():
    gradcheck.check_gradients(dataclasses.replace(QUICK, trials=1))
    assert jnp.zeros(1).dtype == jnp.float32 and not jax.config.jax_enable_x64


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_gated_cells_pass_the_checker(model):
    """LSTM and GRU go through the same checker: their hand-derived custom VJPs (full and truncated; their fused
    kernels' too), forward mode and finite differences against autodiff."""
    report = gradcheck.check_gradients(
        dataclasses.replace(QUICK, model=model, trials=1, activation="tanh", tbptt_k1=2, tbptt_k2=3)
    )
    assert report.passed, gradcheck.format_table(report)
    assert {"forward vs autodiff", "autodiff vs finite_diff", "custom_vjp vs autodiff",
            "tbptt custom_vjp vs tbptt autodiff"} <= set(report.worst())  # fmt: skip
    assert "bptt vs autodiff" not in report.worst()  # `bptt.loss_and_gradients` is the Elman network's
    assert {"fused_vjp vs autodiff", "tbptt fused_vjp vs tbptt autodiff"} <= set(report.worst())  # rnn_jax.fused
