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


# ------------------------------------------------------------------ bad input


def _numpy_state(module) -> dict:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def test_a_linear_without_bias_is_a_zero_bias_and_one_without_weight_is_named():
    """{"weight": W} (nn.Linear(bias=False)) was a bare KeyError: 'bias'."""
    module = _torch_module("lstm", "tanh")
    head = torch.nn.Linear(H, O, bias=False)
    params = rj_torch.from_torch(module.state_dict(), head.state_dict())
    xs = _inputs()
    with torch.no_grad():
        states, _ = module(torch.from_numpy(xs))
        outputs = head(states).numpy()
    run = rj.unroll(params, jax.numpy.asarray(xs), cell=cells.lstm)
    np.testing.assert_allclose(run.outputs, outputs, rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match=r"linear: expected an nn.Linear\(H, O\) state dict .*no 'weight'.*\['b'\]"):
        rj_torch.from_torch(module.state_dict(), {"b": np.zeros(O, "f4")})
    with pytest.raises(ValueError, match=rf"linear\['weight'\]: expected shape \[O, H\] with H = {H}"):
        rj_torch.from_torch(module.state_dict(), {"weight": np.zeros((O, H + 1), "f4")})


def test_a_bidirectional_module_is_refused_by_key_and_each_direction_converts_as_the_error_says():
    """The *_reverse weights were dropped silently; the error's recipe gives torch's two directions exactly."""
    torch.manual_seed(0)
    module = torch.nn.GRU(D, H, bidirectional=True)
    state = _numpy_state(module)
    with pytest.raises(ValueError, match=r"bidirectional module \(\['bias_hh_l0_reverse', .*removesuffix"):
        rj_torch.from_torch(state)
    forward = rj_torch.from_torch({k: v for k, v in state.items() if not k.endswith("_reverse")})
    backward = rj_torch.from_torch({k.removesuffix("_reverse"): v for k, v in state.items() if k.endswith("_reverse")})
    xs = _inputs()
    with torch.no_grad():
        expected = module(torch.from_numpy(xs))[0].numpy()  # [T, B, 2H]: forward, then reverse
    ours_forward = rj.unroll(forward, jax.numpy.asarray(xs), cell=cells.gru).states
    ours_backward = rj.unroll(backward, jax.numpy.asarray(xs[::-1].copy()), cell=cells.gru).states[::-1]
    np.testing.assert_allclose(ours_forward, expected[..., :H], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours_backward, expected[..., H:], rtol=1e-5, atol=1e-5)


def test_a_stacked_module_needs_a_layer_and_its_layers_chain_to_torchs_output():
    """The layers above l0 were dropped silently by the default layer=0."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(D, H, num_layers=2)
    state = _numpy_state(module)
    with pytest.raises(ValueError, match=r"the layers \['l0', 'l1'\] of a stacked module \(num_layers=2\)"):
        rj_torch.from_torch(state)
    xs = _inputs()
    with torch.no_grad():
        expected = module(torch.from_numpy(xs))[0].numpy()
    first = rj.unroll(rj_torch.from_torch(state, layer=0), jax.numpy.asarray(xs), cell=cells.lstm).states.h
    second = rj.unroll(rj_torch.from_torch(state, layer=1), first, cell=cells.lstm).states.h
    np.testing.assert_allclose(second, expected, rtol=1e-5, atol=1e-5)


def test_a_projected_lstm_is_refused_by_key():
    with pytest.raises(ValueError, match=r"\['weight_hr_l0'\] is the projection of an nn.LSTM with proj_size > 0"):
        rj_torch.from_torch(torch.nn.LSTM(D, H, proj_size=2).state_dict())


G4H = 4 * H
BAD_TENSORS = [
    ("bias_hh_l0", lambda b: b[:, None], rf"bias_hh_l0: expected shape \[4H\] = \({G4H},\), got \({G4H}, 1\)"),
    ("bias_hh_l0", lambda b: b[None, :], rf"bias_hh_l0: expected shape \[4H\] = \({G4H},\), got \(1, {G4H}\)"),
    ("bias_ih_l0", lambda b: b[:3], rf"bias_ih_l0: expected shape \[4H\] = \({G4H},\), got \(3,\)"),
    ("bias_ih_l0", lambda b: b.astype(np.float64), r"bias_ih_l0: expected float32, .* got float64"),
    ("weight_hh_l0", lambda w: w[:0, :0], r"expected H >= 1 and D >= 1, got shapes \(24, 4\) and \(0, 0\)"),
]


@pytest.mark.parametrize(("key_name", "change", "message"), BAD_TENSORS)
def test_every_tensor_is_checked_against_h_d_and_the_model_by_key(key_name, change, message):
    """A [4H, 1] bias gave b_s [4H, 4H] silently, [1, 4H] gave [1, 4H], length 3 a NumPy broadcast error,
    H = 0 a ZeroDivisionError."""
    state = {k: v.numpy() for k, v in _torch_module("lstm", "tanh").state_dict().items()}
    state[key_name] = change(state[key_name])
    with pytest.raises((ValueError, TypeError), match=message):
        rj_torch.from_torch(state)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("module",), {}, r"state_dict: expected a mapping of parameter names to tensors .* got LSTM"),
        (({"rnn.weight_ih_l0": np.zeros((H, D), "f4")},), {}, r"\['rnn.weight_ih_l0'\] are not parameters of nn.RNN"),
        (("state",), {"layer": "0"}, r"layer: expected an integer >= 0, got '0'"),
        (("state",), {"layer": -1}, r"layer: expected an integer >= 0, got -1"),
    ],
)
def test_what_is_no_state_dict_or_layer_is_named(args, kwargs, message):
    module = _torch_module("lstm", "tanh")
    args = tuple({"module": module, "state": module.state_dict()}.get(a, a) if isinstance(a, str) else a for a in args)
    with pytest.raises((ValueError, TypeError), match=message):
        rj_torch.from_torch(*args, **kwargs)


@pytest.mark.parametrize("layer", [-1, "1", True])
def test_to_torch_refuses_a_layer_that_is_no_index(key, layer):
    """layer=-1 wrote the keys weight_ih_l-1, ..., which no module loads."""
    with pytest.raises(ValueError, match=r"layer: expected an integer >= 0"):
        rj_torch.to_torch(cells.lstm.init(key, D, H, O), layer=layer)


def test_bfloat16_tensors_convert_exactly():
    """torch's .numpy() refuses bfloat16; the values go through float32 both ways, which is exact."""
    module = _torch_module("gru", "tanh").to(torch.bfloat16)
    params = rj_torch.from_torch(module.state_dict())
    assert params.w_x.dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(np.asarray(params.w_x, np.float32), module.weight_ih_l0.detach().float().numpy().T)


@pytest.mark.parametrize("model", ["elman", "lstm", "gru"])
@pytest.mark.parametrize(("missing", "present"), [("bias_ih_l0", "bias_hh_l0"), ("bias_hh_l0", "bias_ih_l0")])
def test_a_state_dict_with_one_bias_of_two_is_refused_naming_the_missing_one(model, missing, present):
    """A module has both biases or neither (bias=False); the missing one was read as zeros, silently."""
    state = {k: v for k, v in _numpy_state(_torch_module(model, "tanh")).items() if k != missing}
    with pytest.raises(ValueError, match=rf"state_dict: no {missing!r} beside {present!r}.*bias=False"):
        rj_torch.from_torch(state)


def test_a_module_without_biases_converts_with_zero_biases():
    """bias=False: neither key, both biases zero, the same run as torch's."""
    torch.manual_seed(0)
    module = torch.nn.GRU(D, H, bias=False)
    linear = {"weight": np.ones((O, H), "f4"), "bias": np.zeros(O, "f4")}
    params = rj_torch.from_torch(module.state_dict(), linear)
    np.testing.assert_array_equal(params.b_x, np.zeros(3 * H, "f4"))
    _assert_same_run(params, module, "tanh", "gru", linear)
