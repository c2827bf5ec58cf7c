"""Gradient diagnostics: gradient versus lag, Jacobian products, spectrum, and Pascanu et al.'s bound."""

from __future__ import annotations

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax import deep, diagnostics
from rnn_jax.cells import gru, lstm
from tests.jaxprs import scan_stacked_dtypes
from tests.stages import slow_unless

T, B, D, H, O = 8, 3, 2, 5, 1


def _inputs(dtype=jnp.float32):
    return jax.random.normal(jax.random.key(7), (T, B, D), dtype)


def test_linear_recurrence_jacobian_products_are_matrix_powers(key, x64):
    """With identity activation ds_k/ds_0 = (W_s^T)^k, whatever the inputs."""
    params = rj.elman.init(key, D, H, O, recurrent_init="glorot_normal", spectral_radius=1.2, dtype=jnp.float64)
    singular = diagnostics.jacobian_product_singular_values(params, _inputs(jnp.float64), activation="identity")
    assert singular.shape == (T, B, H)
    w_t = np.asarray(params.w_s).T
    for k in range(1, T + 1):
        want = np.linalg.svd(np.linalg.matrix_power(w_t, k), compute_uv=False)
        for b in range(B):
            np.testing.assert_allclose(singular[k - 1, b], want, rtol=1e-9, atol=1e-12 * want[0])
            np.testing.assert_allclose(singular[k - 1, b, 0], np.linalg.norm(np.linalg.matrix_power(w_t, k), 2))


def test_step_jacobian_of_elman_is_diag_phi_prime_times_w_s_transposed(key, x64):
    params = rj.elman.init(key, D, H, O, dtype=jnp.float64)._replace(b_s=jnp.linspace(-0.5, 0.5, H))
    xs = _inputs(jnp.float64)
    jacobians = diagnostics.step_jacobians(params, xs, activation="tanh")
    states = np.asarray(rj.unroll(params, xs).states)
    w_s = np.asarray(params.w_s)
    for t in (0, 3, T - 1):
        for b in range(B):
            want = np.diag(1 - states[t, b] ** 2) @ w_s.T
            np.testing.assert_allclose(jacobians[t, b], want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("cell", [rj.elman, lstm, gru], ids=["elman", "lstm", "gru"])
def test_state_gradients_equal_a_perturbed_rerun(key, x64, cell):
    """||dE_T/ds_t|| from the perturbation formulation equals the chain rule with `step_jacobians`:
    dE_T/ds_t = dE_T/ds_T J_T ... J_{t+1}."""
    params = cell.init(key, D, H, O, dtype=jnp.float64)
    xs = _inputs(jnp.float64)
    targets = jnp.ones((B, O), jnp.float64)
    norms = np.asarray(diagnostics.state_gradient_norms(params, xs, targets, cell=cell))
    assert norms.shape == (T, B)
    jacobians = np.asarray(diagnostics.step_jacobians(params, xs, cell=cell))
    final = rj.unroll(params, xs, cell=cell).final_state

    def end_loss(carry):
        return jnp.sum(diagnostics.squared_error_at_end(diagnostics.readout(params, carry), targets))

    g_final = jax.grad(end_loss)(final)
    row = np.concatenate([np.asarray(leaf) for leaf in jax.tree.leaves(g_final)], axis=-1)  # [B, N]
    for lag in range(T):
        np.testing.assert_allclose(norms[lag], np.linalg.norm(row, axis=-1), rtol=1e-9)
        row = np.einsum("bi,bik->bk", row, jacobians[T - 1 - lag])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("cell", [rj.elman, lstm], ids=["elman", "lstm"])
def test_half_precision_diagnostics_agree_with_float32(key, cell, dtype):
    """Half-precision parameters give the float32 diagnostics of the same (rounded) weights within the half
    precision's rounding; the Jacobian products and their singular values come back in float32 (XLA has no
    half-precision SVD: it used to fail inside XLA)."""
    half = jax.tree.map(lambda a: a.astype(dtype), cell.init(key, D, H, O))
    wide = jax.tree.map(lambda a: a.astype(jnp.float32), half)
    xs = _inputs().astype(dtype)
    targets = jnp.ones((B, O), dtype)
    eps = float(jnp.finfo(dtype).eps)
    got = diagnostics.jacobian_product_singular_values(half, xs, cell=cell)
    want = diagnostics.jacobian_product_singular_values(wide, xs.astype(jnp.float32), cell=cell)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=4 * T * eps * float(jnp.max(want)))
    got = diagnostics.state_gradient_norms(half, xs, targets, cell=cell)
    want = diagnostics.state_gradient_norms(wide, xs.astype(jnp.float32), targets.astype(jnp.float32), cell=cell)
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=4 * T * eps * float(jnp.max(want)))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU form of bfloat16 scans")
def test_bfloat16_diagnostics_stack_float32_on_a_cpu_with_the_same_values(key, monkeypatch):
    """On a CPU the diagnostics' scans of a bfloat16 network stack (and save for the backward pass) no bfloat16
    [T, ...] array (`unroll.CPU_WIDENED_BFLOAT16_SCANS`: stacking bfloat16 there is O(T^2)); the Jacobians are
    those of the scan in bfloat16 bit for bit and the gradient norms agree within bfloat16's rounding."""
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), rj.elman.init(key, D, H, O))
    xs = _inputs(jnp.bfloat16)
    targets = jnp.ones((B, O), jnp.bfloat16)

    def run():  # new functions each time: make_jaxpr and jit cache their traces by function, not by the flag
        jacobians = lambda: diagnostics.step_jacobians(params, xs)  # noqa: E731
        norms = lambda: diagnostics.state_gradient_norms(params, xs, targets)  # noqa: E731
        stacked = set().union(*(scan_stacked_dtypes(jax.make_jaxpr(f)().jaxpr) for f in (jacobians, norms)))
        return stacked, jax.jit(jacobians)(), jax.jit(norms)()

    stacked, jacobians, norms = run()
    assert jnp.dtype(jnp.bfloat16) not in stacked
    monkeypatch.setattr(importlib.import_module("rnn_jax.unroll"), "CPU_WIDENED_BFLOAT16_SCANS", False)
    stacked, want_jacobians, want_norms = run()
    assert jnp.dtype(jnp.bfloat16) in stacked  # what the CPU form avoids
    np.testing.assert_array_equal(jacobians, want_jacobians)
    np.testing.assert_allclose(norms, want_norms, atol=1e-2 * float(jnp.max(want_norms)))


def test_small_recurrent_weights_lose_the_gradient(key):
    params = rj.elman.init(key, D, H, O, recurrent_init="glorot_normal", spectral_radius=0.3)
    norms = diagnostics.state_gradient_norms(params, _inputs(), jnp.ones((B, O)))
    mean = np.asarray(norms).mean(axis=1)
    assert np.all(np.diff(mean) < 0)
    assert diagnostics.gradient_horizon(mean) is not None


def test_targets_of_another_batch_or_width_are_clear_errors(key):
    params = rj.elman.init(key, D, H, O)
    with pytest.raises(ValueError, match=r"targets: expected the batch size B = 3 on axis 0, got 4"):
        diagnostics.state_gradient_norms(params, _inputs(), jnp.ones((B + 1, O)))
    with pytest.raises(ValueError, match=r"targets: expected the output width O = 1 on axis 1, got 2"):
        diagnostics.state_gradient_norms(params, _inputs(), jnp.ones((B, O + 1)))  # broadcast inside the loss before
    labels = jnp.zeros((B, 2))  # a loss of the caller's may read targets of another width
    norms = diagnostics.state_gradient_norms(params, _inputs(), labels, loss=lambda y, d: jnp.sum(y, -1) + d[:, 0])
    assert norms.shape == (T, B)


def test_another_cells_params_and_a_cell_by_name(key):
    """LSTM parameters with the default (Elman) cell failed inside the scan's dot; the cell may be named."""
    params = rj.lstm.init(key, D, H, O)
    for fn, args in ((diagnostics.state_gradient_norms, (_inputs(), jnp.zeros((B, O)))),
                     (diagnostics.step_jacobians, (_inputs(),))):  # fmt: skip
        with pytest.raises(TypeError, match=r"params: expected the elman cell's ElmanParams, got LSTMParams .*lstm"):
            fn(params, *args)
        chex.assert_trees_all_equal(fn(params, *args, cell="lstm"), fn(params, *args, cell=rj.lstm))


def test_gradient_horizon():
    assert diagnostics.gradient_horizon(np.array([1.0, 0.1, 0.01, 0.001, 1e-4])) == 4
    assert diagnostics.gradient_horizon(np.array([2.0, 1.0, 0.5])) is None
    assert diagnostics.gradient_horizon(np.array([1.0, 0.5, 0.2]), ratio=0.3) == 2
    with pytest.raises(ValueError, match=r"norms_by_lag: expected a non-empty rank-1 array"):
        diagnostics.gradient_horizon(np.ones((2, 2)))


@pytest.mark.parametrize(
    ("norms", "ratio", "message"),
    [
        ([np.nan, 0.1, 0.0], 1e-3, r"norms_by_lag: expected a finite lag-0 norm > 0 .*, got norms_by_lag\[0\] = nan"),
        ([0.0, 0.0], 1e-3, r"norms_by_lag: expected a finite lag-0 norm > 0 .*, got norms_by_lag\[0\] = 0.0"),
        ([np.inf, 1.0], 1e-3, r"norms_by_lag: expected a finite lag-0 norm > 0 .*, got norms_by_lag\[0\] = inf"),
        ([1.0, np.nan, 1e-4], 1e-3, r"norms_by_lag: expected no NaN, got 1 NaN entries, the first at lag 1"),
        ([1.0, 0.5, 0.1], 5, r"ratio: expected a number in \(0, 1\), got 5"),
        ([1.0, 1e-4], "1e-3", r"ratio: expected a number in \(0, 1\), got '1e-3'"),
        ([1.0, 1e-4], 0.0, r"ratio: expected a number in \(0, 1\), got 0.0"),
    ],
    ids=["nan-reference", "zero-reference", "inf-reference", "nan-lag", "ratio-above-1", "ratio-string", "ratio-0"],
)
def test_gradient_horizon_refuses_a_bad_reference_a_nan_and_a_ratio_outside_0_1(norms, ratio, message):
    """A NaN or zero lag-0 norm read as "never vanished" (None), an Inf one made lag 1 the horizon, a NaN at a lag
    counted as kept, ratio=5 returned lag 0 and a string ratio was a raw "'>' not supported"."""
    with pytest.raises(ValueError, match=message):
        diagnostics.gradient_horizon(np.array(norms), ratio)


def test_batch_first_xs_is_named_with_the_targets(key):
    """A batch-first xs [B, T, D] read as T = B, B = T: the error blamed the targets' batch size alone."""
    params = rj.elman.init(key, D, H, O)
    batch_first = jnp.swapaxes(_inputs(), 0, 1)
    with pytest.raises(ValueError, match=r"xs, targets: xs of shape \(3, 8, 2\) reads as time-major \[T, B, D\] with "
                                         r"T = 3, B = 8.*xs looks batch-first \[B, T, D\].*jnp.swapaxes"):  # fmt: skip
        diagnostics.state_gradient_norms(params, batch_first, jnp.ones((B, O)))


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("seed", slow_unless([0], range(4)))
@pytest.mark.parametrize("radius", [0.5, 1.0, 2.0])
def test_pascanu_bound_holds_on_random_nets(activation, seed, radius):
    k_p, k_x, k_b = jax.random.split(jax.random.key(seed), 3)
    params = rj.elman.init(k_p, D, H, O, recurrent_init="glorot_normal", spectral_radius=radius)
    params = params._replace(b_s=jax.random.normal(k_b, (H,)))
    xs = jax.random.normal(k_x, (T, B, D))
    check = diagnostics.pascanu_bound_check(params, xs, activation=activation)
    assert check.holds, (check.product_norms, check.bound)
    np.testing.assert_array_equal(check.lags, np.arange(1, T + 1))
    np.testing.assert_allclose(check.bound, check.eta ** np.arange(1, T + 1), rtol=1e-12)


def test_pascanu_bound_is_tight_for_an_orthogonal_linear_recurrence(key):
    """Identity activation (gamma = 1), orthogonal W_s scaled by 0.9: every product's norm is exactly 0.9^k."""
    params = rj.elman.init(key, D, H, O, recurrent_scale=0.9)
    check = diagnostics.pascanu_bound_check(params, _inputs(), activation="identity")
    assert check.holds
    np.testing.assert_allclose(check.product_norms, check.bound, rtol=1e-4)


def test_a_wrong_bound_would_be_caught(key):
    """The check can fail: scaling eta down by a half makes it false on a net whose products do not shrink that fast."""
    params = rj.elman.init(key, D, H, O, recurrent_scale=0.9)
    check = diagnostics.pascanu_bound_check(params, _inputs(), activation="identity")
    assert not np.all(check.product_norms <= (0.5 * check.eta) ** check.lags)


@pytest.mark.parametrize(("cell", "blocks"), [(rj.elman, 1), (lstm, 4), (gru, 3)], ids=["elman", "lstm", "gru"])
def test_recurrent_matrix_and_spectrum(key, cell, blocks):
    params = cell.init(key, D, H, O, recurrent_init="glorot_normal", spectral_radius=0.8)
    for block in range(blocks):
        w = np.asarray(diagnostics.recurrent_matrix(params, block), np.float64)
        assert w.shape == (H, H)
        spectrum = diagnostics.recurrent_spectrum(params, block)
        np.testing.assert_allclose(spectrum["spectral_radius"], 0.8, rtol=1e-5)
        np.testing.assert_allclose(spectrum["largest_singular_value"], np.linalg.svd(w, compute_uv=False)[0], rtol=1e-6)
        assert spectrum["largest_singular_value"] >= spectrum["spectral_radius"] * (1 - 1e-6)
    for bad in (blocks, -1, True, 1.0, "0"):  # True was read as block 1
        with pytest.raises(ValueError, match=rf"block: expected an integer in \[0, {blocks}\).*got {bad!r}"):
            diagnostics.recurrent_matrix(params, bad)
    for index in (np.int64(blocks - 1), jnp.int32(blocks - 1)):  # NumPy and JAX integers were refused
        np.testing.assert_array_equal(diagnostics.recurrent_matrix(params, index),
                                      diagnostics.recurrent_matrix(params, blocks - 1))  # fmt: skip
    with pytest.raises(TypeError, match=r"params: expected one cell's parameters \(with w_s\), got DeepParams"):
        diagnostics.recurrent_matrix(deep.init(key, cell.__name__.rsplit(".", 1)[-1], D, H, O, layers=2))


def test_a_non_finite_recurrent_matrix_is_named_not_an_svd_failure(key):
    """NaN in W_s was NumPy's LinAlgError "SVD did not converge" (in the spectrum and in the bound check)."""
    params = rj.elman.init(key, D, H, O)
    broken = params._replace(w_s=params.w_s.at[1, 2].set(jnp.nan))
    message = r"params.w_s: expected finite values, found 1 NaN/Inf entries; first at index \(1, 2\) = nan"
    with pytest.raises(ValueError, match=message):
        diagnostics.recurrent_spectrum(broken)
    with pytest.raises(ValueError, match=message):
        diagnostics.pascanu_bound_check(broken, _inputs())
    gated = lstm.init(key, D, H, O)
    gated = gated._replace(w_s=gated.w_s.at[0, 2 * H].set(jnp.inf))  # block 2 (g) of 4
    with pytest.raises(ValueError, match=r"params.w_s \(gate block 2\): expected finite values.*\(0, 0\) = inf"):
        diagnostics.recurrent_spectrum(gated, 2)
    assert np.isfinite(diagnostics.recurrent_spectrum(gated, 1)["spectral_radius"])  # another block is unaffected


def test_an_empty_batch_gives_empty_jacobians_and_no_bound_check(key):
    """With B = 0 the Jacobians' per-sequence template was an IndexError; the bound check has no trajectory."""
    params = rj.elman.init(key, D, H, O)
    empty = jnp.zeros((T, 0, D))
    assert diagnostics.step_jacobians(params, empty).shape == (T, 0, H, H)
    assert diagnostics.jacobian_product_singular_values(params, empty).shape == (T, 0, H)
    assert diagnostics.state_gradient_norms(params, empty, jnp.zeros((0, O))).shape == (T, 0)
    with pytest.raises(ValueError, match=r"xs: expected at least one sequence, B >= 1 .*got shape \(8, 0, 2\)"):
        diagnostics.pascanu_bound_check(params, empty)


def test_bound_check_rejects_gated_cells_and_unbounded_activations(key):
    with pytest.raises(TypeError, match=r"params: expected ElmanParams"):
        diagnostics.pascanu_bound_check(lstm.init(key, D, H, O), _inputs())
    with pytest.raises(ValueError, match=r"activation: expected a named activation with a finite bound"):
        diagnostics.pascanu_bound_check(rj.elman.init(key, D, H, O), _inputs(), activation=jnp.sin)


@pytest.mark.usefixtures("standard_promotion")  # optax's adam (see conftest)
@pytest.mark.parametrize("model", ["elman", "lstm"])
def test_eval_records_track_the_recurrent_spectrum(model):
    from rnn_jax import train
    from rnn_jax.config import Config, ModelConfig, RunConfig, TaskConfig

    config = Config(
        model=ModelConfig(model=model, hidden=6),
        task=TaskConfig(seq_len=6, batch_size=8),
        run=RunConfig(steps=20, eval_every=10, log_every=10, eval_batches=1, progress=False),
    )
    result = train.train_and_evaluate(config)
    evals = [r for r in result["records"] if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20]
    last = diagnostics.recurrent_spectrum(result["params"])
    assert evals[-1]["recurrent_largest_singular_value"] == pytest.approx(last["largest_singular_value"])
    assert evals[-1]["recurrent_spectral_radius"] == pytest.approx(last["spectral_radius"])
    assert evals[0]["recurrent_spectral_radius"] != evals[-1]["recurrent_spectral_radius"]  # it is tracked
