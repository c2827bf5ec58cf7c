"""Parameters in the layout of torch.nn.RNN / LSTM / GRU: the same inputs give the same states in both frameworks."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax import cells
from rnn_jax.interop import torch as rj_torch

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch); these tests compare with it")

T, B, D, H, O = 9, 3, 4, 6, 2
CASES = [("elman", "tanh"), ("elman", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


def _torch_module(model: str, activation: str):
    torch.manual_seed(0)
    if model == "elman":
        return torch.nn.RNN(D, H, nonlinearity=activation)
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[model](D, H)


def _inputs() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((T, B, D)).astype(np.float32)


def _torch_run(module, xs: np.ndarray, linear: dict) -> tuple[np.ndarray, np.ndarray]:
    """(states [T, B, H], outputs [T, B, O]) of ``module`` followed by the read-out."""
    with torch.no_grad():
        states, _ = module(torch.from_numpy(xs))
        head = torch.nn.Linear(H, O)
        head.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in linear.items()})
        return states.numpy(), head(states).numpy()


def _assert_same_run(params, module, activation: str, model: str, linear: dict) -> None:
    xs = _inputs()
    states, outputs = _torch_run(module, xs, linear)
    run = rj.unroll(params, jax.numpy.asarray(xs), activation=activation, cell=cells.get(model))
    ours = run.states.h if model == "lstm" else run.states
    np.testing.assert_allclose(ours, states, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run.outputs, outputs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("model", "activation"), CASES)
def test_torch_module_imported_runs_the_same_in_rnn_jax(model, activation):
    module = _torch_module(model, activation)
    linear = {"weight": np.random.default_rng(1).standard_normal((O, H)).astype(np.float32), "bias": np.ones(O, "f4")}
    params = rj_torch.from_torch(module.state_dict(), linear)  # the model is inferred from the shapes
    assert type(params) is cells.get(model).Params
    _assert_same_run(params, module, activation, model, linear)


@pytest.mark.parametrize(("model", "activation"), CASES)
def test_rnn_jax_params_exported_run_the_same_in_torch(key, model, activation):
    params = cells.get(model).init(key, D, H, O)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(key, p.shape), params)  # non-zero biases
    state_dict, linear = rj_torch.to_torch(params)
    module = _torch_module(model, activation)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    _assert_same_run(params, module, activation, model, linear)


@pytest.mark.parametrize("model", ["elman", "lstm", "gru"])
def test_round_trips_are_exact(key, model):
    params = cells.get(model).init(key, D, H, O)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(key, p.shape), params)
    back = rj_torch.from_torch(*rj_torch.to_torch(params))
    for name, a, b in zip(params._fields, params, back, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    # torch -> rnn_jax -> torch: every weight exactly; the biases' sum (Elman, LSTM) or both biases (GRU)
    module = _torch_module(model, "tanh")
    original = {k: v.numpy() for k, v in module.state_dict().items()}
    again, _ = rj_torch.to_torch(rj_torch.from_torch(original))
    for name in ("weight_ih_l0", "weight_hh_l0"):
        np.testing.assert_array_equal(again[name], original[name])
    if model == "gru":
        np.testing.assert_array_equal(again["bias_ih_l0"], original["bias_ih_l0"])
        np.testing.assert_array_equal(again["bias_hh_l0"], original["bias_hh_l0"])
    else:
        total = original["bias_ih_l0"] + original["bias_hh_l0"]
        np.testing.assert_array_equal(again["bias_ih_l0"] + again["bias_hh_l0"], total)


def test_without_a_linear_the_outputs_are_the_states():
    module = _torch_module("gru", "tanh")
    params = rj_torch.from_torch(module.state_dict())
    run = rj.unroll(params, jax.numpy.asarray(_inputs()), cell=cells.gru)
    np.testing.assert_array_equal(run.outputs, run.states)


def test_mismatched_model_and_shapes_are_clear_errors():
    state_dict = {k: v.numpy() for k, v in _torch_module("lstm", "tanh").state_dict().items()}
    with pytest.raises(ValueError, match=r"gru \(nn.GRU\) expects"):
        rj_torch.from_torch(state_dict, model="gru")
    with pytest.raises(KeyError, match="weight_ih_l1"):
        rj_torch.from_torch(state_dict, layer=1)
