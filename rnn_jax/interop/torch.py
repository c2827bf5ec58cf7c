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

One layer and one direction convert at a time: a stacked module (``num_layers > 1``) needs ``layer=``, one call per
layer; a bidirectional module's ``*_reverse`` keys, and an LSTM's ``proj_size`` projection, are refused by name
rather than dropped (the error says how to convert each direction).

The read-out (w_y [H, O], b_y [O]) has no counterpart in ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``: it
travels separately as an ``nn.Linear(H, O)`` state dict, ``{"weight": w_y.T [O, H], "bias": b_y [O]}``.

Arrays are NumPy on the way out; on the way in anything ``np.asarray`` accepts, and torch tensors
(which are detached and moved to the CPU by duck typing, so this module never imports torch).
Load an exported dict into a module with ``module.load_state_dict({k: torch.from_numpy(v) for k, v in d.items()})``.
"""

from __future__ import annotations

import re
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
    layer = _check_layer(layer)
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
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # which .numpy() refuses; through float32 both ways is exact
            return value.float().numpy().astype(jnp.bfloat16)
        value = value.numpy()
    return np.asarray(value)


_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?")
"""The parameter names of ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``: kind, layer, direction."""


def _check_layer(layer: Any) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int | np.integer) or layer < 0:
        raise ValueError(f"layer: expected an integer >= 0, got {layer!r}")
    return int(layer)


def _check_keys(state_dict: Any, layer: int | None) -> int:
    """The layer to read, after refusing what `from_torch` would otherwise drop or misread: keys that are not
    ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` parameters, a bidirectional module's ``*_reverse`` direction, an LSTM's
    ``proj_size`` projection (``weight_hr``), and, when ``layer`` is None, the layers above l0 of a stacked module."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict: expected a mapping of parameter names to tensors (module.state_dict()), "
            f"got {type(state_dict).__name__}"
        )
    matches = {key: _KEY.fullmatch(key) if isinstance(key, str) else None for key in state_dict}
    unknown = sorted(str(key) for key, m in matches.items() if m is None)
    if unknown:
        raise ValueError(
            f"state_dict: {unknown} are not parameters of nn.RNN / nn.LSTM / nn.GRU (weight_ih_l0, weight_hh_l0, "
            f"bias_ih_l0, bias_hh_l0); strip any prefix of an enclosing module (e.g. 'rnn.')"
        )
    reverse = sorted(key for key, m in matches.items() if m.group(3))
    if reverse:
        raise ValueError(
            f"state_dict: holds the reverse direction of a bidirectional module ({reverse}); from_torch converts one "
            f"direction: the forward one from the keys without '_reverse', the reverse one from the '_reverse' keys "
            f"renamed without the suffix ({{k.removesuffix('_reverse'): v}}), run over the time-reversed inputs"
        )
    projection = sorted(key for key, m in matches.items() if m.group(1) == "weight_hr")
    if projection:
        raise ValueError(
            f"state_dict: {projection} is the projection of an nn.LSTM with proj_size > 0, which rnn_jax's LSTM "
            f"does not have; only proj_size=0 converts"
        )
    layers = sorted({int(m.group(2)) for m in matches.values()})
    if layer is not None:
        return _check_layer(layer)
    if len(layers) > 1:
        raise ValueError(
            f"state_dict: holds the layers {[f'l{n}' for n in layers]} of a stacked module (num_layers="
            f"{len(layers)}); from_torch converts one layer: pass layer= to choose it, one call per layer"
        )
    return 0


def _tensor(name: str, value: Any, shape: tuple[int, ...] | None, letters: str, dtype: np.dtype | None) -> np.ndarray:
    """``value`` as a NumPy array of ``shape`` (``letters``: the shape in words; None: any) and ``dtype`` (None: any
    floating dtype), or an error naming ``name``."""
    array = _numpy(value)
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name}: expected shape [{letters}] = {shape}, got {array.shape}")
    if dtype is None and not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating dtype, got {array.dtype}")
    if dtype is not None and array.dtype != dtype:
        raise TypeError(f"{name}: expected {dtype}, the dtype of weight_hh, got {array.dtype}")
    return array


def _read_linear(linear: Any, h: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(w_y [H, O], b_y [O]) from an ``nn.Linear(H, O)`` state dict (``bias=False``: b_y = 0)."""
    expected = "an nn.Linear(H, O) state dict {'weight': [O, H], 'bias': [O]}"
    if not isinstance(linear, Mapping):
        raise TypeError(f"linear: expected {expected}, got {type(linear).__name__}")
    if "weight" not in linear:
        raise KeyError(f"linear: expected {expected}; no 'weight', keys: {sorted(map(str, linear))}")
    unknown = sorted(str(key) for key in linear if key not in ("weight", "bias"))
    if unknown:
        raise ValueError(f"linear: expected {expected}; got the other keys {unknown}")
    weight = _tensor("linear['weight']", linear["weight"], None, "", dtype)
    if weight.ndim != 2 or weight.shape[1] != h or weight.shape[0] < 1:
        raise ValueError(f"linear['weight']: expected shape [O, H] with H = {h} and O >= 1, got {weight.shape}")
    o = weight.shape[0]
    bias = linear.get("bias")
    bias = np.zeros((o,), dtype) if bias is None else _tensor("linear['bias']", bias, (o,), "O", dtype)
    return weight.T, bias


def from_torch(
    state_dict: Mapping[str, Any],
    linear: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    layer: int | None = None,
) -> Any:
    """rnn_jax parameters from an ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` state dict (and an ``nn.Linear`` one).

    Args:
      state_dict: holds ``weight_ih_l{layer}`` [G*H, D], ``weight_hh_l{layer}`` [G*H, H] and, unless the
        module had ``bias=False``, ``bias_ih_l{layer}`` and ``bias_hh_l{layer}`` [G*H], all of one floating dtype.
        One direction only: a bidirectional module's ``*_reverse`` keys are refused (convert each direction on its
        own), and so is an LSTM's ``proj_size`` projection ``weight_hr_l{layer}``.
      linear: the read-out as ``{"weight": [O, H], "bias": [O]}`` (no ``bias``: ``nn.Linear(bias=False)``, b_y = 0);
        None gives the identity read-out (O = H, w_y = I, b_y = 0), so that the outputs y_t are the states.
      model: "elman", "lstm" or "gru"; by default inferred from G = rows of ``weight_hh`` / H (1, 4, 3).
      layer: which layer's keys to read; None (default): the state dict must hold one layer, l0, so that the
        upper layers of a stacked module (``num_layers > 1``) are not dropped silently.

    Returns:
      ElmanParams, LSTMParams or GRUParams (float arrays in the state dict's dtype).

    Raises:
      KeyError naming a missing weight; ValueError naming the key whose shape is not what H, D and the model imply,
      the missing one of the two biases (a module has both or neither), a key that is no parameter of these
      modules, a reverse direction, a projection or other layers;
      TypeError for a state dict that is no mapping or a tensor of another dtype.
    """
    suffix = f"_l{_check_keys(state_dict, layer)}"
    for name in ("weight_ih", "weight_hh"):
        if name + suffix not in state_dict:
            raise KeyError(f"state_dict: no {name + suffix!r}; keys: {sorted(state_dict)}")
    w_ih, w_hh = _numpy(state_dict["weight_ih" + suffix]), _numpy(state_dict["weight_hh" + suffix])
    if w_ih.ndim != 2 or w_hh.ndim != 2:
        raise ValueError(f"weight_ih{suffix}, weight_hh{suffix}: expected matrices, got {w_ih.shape} and {w_hh.shape}")
    rows, h = w_hh.shape
    if h < 1 or w_ih.shape[1] < 1:
        raise ValueError(
            f"weight_ih{suffix} [G*H, D], weight_hh{suffix} [G*H, H]: expected H >= 1 and D >= 1, got shapes "
            f"{w_ih.shape} and {w_hh.shape}"
        )
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
    dtype = _tensor(f"weight_hh{suffix}", w_hh, None, "", None).dtype
    _tensor(f"weight_ih{suffix}", w_ih, None, "", dtype)
    keys = {name: name + suffix for name in ("bias_ih", "bias_hh")}
    present = [key for key in keys.values() if key in state_dict]
    if len(present) == 1:  # a module has both biases or neither (bias=False); zeros for the other hid the loss
        (missing,) = set(keys.values()) - set(present)
        raise ValueError(
            f"state_dict: no {missing!r} beside {present[0]!r}; an {TORCH_MODULES[model]} has both biases or neither "
            f"(bias=False), so the state dict is damaged or not one module's"
        )
    letters = f"{g}H" if g > 1 else "H"
    biases = {
        name: _tensor(key, state_dict[key], (g * h,), letters, dtype) if present else np.zeros((g * h,), dtype)
        for name, key in keys.items()
    }
    if linear is None:
        w_y, b_y = np.eye(h, dtype=dtype), np.zeros((h,), dtype)
    else:
        w_y, b_y = _read_linear(linear, h, dtype)
    arrays = {"w_x": w_ih.T, "w_s": w_hh.T, "w_y": w_y, "b_y": b_y}
    if model == "gru":
        return gru.GRUParams(b_x=jnp.asarray(biases["bias_ih"]), b_s=jnp.asarray(biases["bias_hh"]), **_jnp(arrays))
    params_type = elman.ElmanParams if model == "elman" else lstm.LSTMParams
    return params_type(b_s=jnp.asarray(biases["bias_ih"] + biases["bias_hh"]), **_jnp(arrays))


def _jnp(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: jnp.asarray(value) for name, value in arrays.items()}
