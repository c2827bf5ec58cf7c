"""Elman, LSTM and GRU parameters to and from the state dicts of PyTorch's ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU``.

PyTorch keeps, for layer ``l`` (here ``l0``) with G gate blocks of H rows each,

    weight_ih_l0 [G*H, D]   weight_hh_l0 [G*H, H]   bias_ih_l0 [G*H]   bias_hh_l0 [G*H]

and computes ``x W_ih^T + b_ih + h W_hh^T + b_hh``; rnn_jax keeps the transposes, so

    cell    G  gate order     w_x               w_s               biases
    elman   1  -              weight_ih_l0.T    weight_hh_l0.T    b_s = bias_ih_l0 + bias_hh_l0
    lstm    4  (i, f, g, o)   weight_ih_l0.T    weight_hh_l0.T    b_s = bias_ih_l0 + bias_hh_l0
    gru     3  (r, z, n)      weight_ih_l0.T    weight_hh_l0.T    b_x = bias_ih_l0,  b_s = bias_hh_l0

(the gate orders are PyTorch's already; for the GRU the reset gate multiplies ``h W_hn^T + b_hn``
in both). Elman and LSTM have one bias where PyTorch has two: `to_torch` puts it all in
``bias_ih_l0`` and zeros in ``bias_hh_l0``, so rnn_jax -> torch -> rnn_jax is exact, and
torch -> rnn_jax -> torch keeps every weight and the sum of the two biases (what the network
computes), not their split. The Elman activation is ``nn.RNN``'s ``nonlinearity`` ("tanh" or "relu").

The read-out (w_y [H, O], b_y [O]) has no counterpart in ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``: it
travels separately as an ``nn.Linear(H, O)`` state dict, ``{"weight": w_y.T [O, H], "bias": b_y [O]}``.

Arrays are NumPy on the way out; on the way in anything ``np.asarray`` accepts, and torch tensors
(which are detached and moved to the CPU by duck typing, so this module never imports torch).
Load an exported dict into a module with ``module.load_state_dict({k: torch.from_numpy(v) for k, v in d.items()})``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from rnn_jax.cells import elman, gru, lstm

GATE_BLOCKS = {"elman": 1, "lstm": 4, "gru": 3}  # G, the gate blocks stacked in weight_ih / weight_hh
TORCH_MODULES = {"elman": "nn.RNN", "lstm": "nn.LSTM", "gru": "nn.GRU"}
_PARAMS = {elman.ElmanParams: "elman", lstm.LSTMParams: "lstm", gru.GRUParams: "gru"}


def model_of(params: Any) -> str:
    """ "elman", "lstm" or "gru", from the type of ``params``."""
    try:
        return _PARAMS[type(params)]
    except KeyError:
        raise TypeError(f"params: expected ElmanParams, LSTMParams or GRUParams, got {type(params).__name__}") from None


def to_torch(params: Any, layer: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(rnn_state_dict, linear_state_dict)``: the recurrent layer as ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` keys
    for layer ``layer`` (``weight_ih_l0``, ...), and the read-out as ``nn.Linear`` keys (``weight``, ``bias``).

    Args:
      params: ElmanParams, LSTMParams or GRUParams.
      layer: the layer index in the key names.
    """
    model = model_of(params)
    p = {name: np.array(value) for name, value in params._asdict().items()}  # writable copies (torch.from_numpy)
    if model == "gru":
        bias_ih, bias_hh = p["b_x"], p["b_s"]
    else:
        bias_ih, bias_hh = p["b_s"], np.zeros_like(p["b_s"])
    rnn = {
        f"weight_ih_l{layer}": np.ascontiguousarray(p["w_x"].T),
        f"weight_hh_l{layer}": np.ascontiguousarray(p["w_s"].T),
        f"bias_ih_l{layer}": bias_ih,
        f"bias_hh_l{layer}": bias_hh,
    }
    linear = {"weight": np.ascontiguousarray(p["w_y"].T), "bias": p["b_y"]}
    return rnn, linear


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def from_torch(
    state_dict: Mapping[str, Any],
    linear: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    layer: int = 0,
) -> Any:
    """rnn_jax parameters from an ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` state dict (and an ``nn.Linear`` one).

    Args:
      state_dict: holds ``weight_ih_l{layer}`` [G*H, D], ``weight_hh_l{layer}`` [G*H, H] and, unless the
        module had ``bias=False``, ``bias_ih_l{layer}`` and ``bias_hh_l{layer}`` [G*H].
      linear: the read-out as ``{"weight": [O, H], "bias": [O]}``; None gives the identity read-out
        (O = H, w_y = I, b_y = 0), so that the outputs y_t are the states.
      model: "elman", "lstm" or "gru"; by default inferred from G = rows of ``weight_hh`` / H (1, 4, 3).
      layer: which layer's keys to read.

    Returns:
      ElmanParams, LSTMParams or GRUParams (float arrays in the state dict's dtype).

    Raises:
      KeyError naming a missing key; ValueError on inconsistent shapes or a model that does not fit them.
    """
    suffix = f"_l{layer}"
    for name in ("weight_ih", "weight_hh"):
        if name + suffix not in state_dict:
            raise KeyError(f"state_dict: no {name + suffix!r}; keys: {sorted(state_dict)}")
    w_ih, w_hh = _numpy(state_dict["weight_ih" + suffix]), _numpy(state_dict["weight_hh" + suffix])
    if w_ih.ndim != 2 or w_hh.ndim != 2:
        raise ValueError(f"weight_ih{suffix}, weight_hh{suffix}: expected matrices, got {w_ih.shape} and {w_hh.shape}")
    rows, h = w_hh.shape
    inferred = {g: name for name, g in GATE_BLOCKS.items()}.get(rows // h if rows % h == 0 else None)
    if model is None:
        if inferred is None:
            raise ValueError(
                f"weight_hh{suffix}: shape {w_hh.shape} is not [G*H, H] for G in 1 (RNN), 4 (LSTM), 3 (GRU)"
            )
        model = inferred
    if model not in GATE_BLOCKS:
        raise ValueError(f"model: expected one of {sorted(GATE_BLOCKS)}, got {model!r}")
    g = GATE_BLOCKS[model]
    if w_hh.shape != (g * h, h) or w_ih.shape[0] != g * h:
        raise ValueError(
            f"{model} ({TORCH_MODULES[model]}) expects weight_ih{suffix} [{g}H, D] and weight_hh{suffix} [{g}H, H] "
            f"with H = {h}; got {w_ih.shape} and {w_hh.shape}"
        )
    zeros = np.zeros((g * h,), w_hh.dtype)
    bias_ih = _numpy(state_dict.get("bias_ih" + suffix, zeros))
    bias_hh = _numpy(state_dict.get("bias_hh" + suffix, zeros))
    if linear is None:
        w_y, b_y = np.eye(h, dtype=w_hh.dtype), np.zeros((h,), w_hh.dtype)
    else:
        w_y, b_y = _numpy(linear["weight"]).T, _numpy(linear["bias"])
        if w_y.shape[0] != h or b_y.shape != (w_y.shape[1],):
            raise ValueError(f"linear: expected weight [O, H={h}] and bias [O], got {w_y.T.shape} and {b_y.shape}")
    arrays = {"w_x": w_ih.T, "w_s": w_hh.T, "w_y": w_y, "b_y": b_y}
    if model == "gru":
        return gru.GRUParams(b_x=jnp.asarray(bias_ih), b_s=jnp.asarray(bias_hh), **_jnp(arrays))
    params_type = elman.ElmanParams if model == "elman" else lstm.LSTMParams
    return params_type(b_s=jnp.asarray(bias_ih + bias_hh), **_jnp(arrays))


def _jnp(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: jnp.asarray(value) for name, value in arrays.items()}
