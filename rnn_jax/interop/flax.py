"""The Elman cell as a ``flax.linen`` recurrent cell, and its parameters to and from `ElmanParams`.

`ElmanCell` is an ``nn.RNNCellBase`` whose ``__call__(carry, x) -> (carry, y)`` is `rnn_jax.elman.step`
itself, so ``flax.linen.RNN(ElmanCell(...))`` computes exactly what `rnn_jax.unroll` computes:

    s_t = phi(x_t W_x + s_{t-1} W_s + b_s),   y_t = s_t W_y + b_y

Its params dict holds the fields of `ElmanParams` under their own names,
``{"w_x": [D, H], "w_s": [H, H], "b_s": [H], "w_y": [H, O], "b_y": [O]}``, so the conversion is a
renaming-free copy: `to_flax` and `from_flax` (with ``path=("cell",)`` for a cell wrapped in
``nn.RNN``, whose parameters live under ``{"params": {"cell": ...}}``).

Flax's own ``nn.SimpleCell`` is this cell without the read-out: its ``i`` kernel and bias are W_x and
b_s, its ``h`` kernel is W_s, and its output is the state (W_y = I, b_y = 0).

`NnxElmanCell` is the same cell for ``flax.nnx.RNN``: an ``nnx.RNNCellBase`` holding the five fields of
`ElmanParams` as ``nnx.Param`` attributes of the same names, drawn by `rnn_jax.elman.init`;
`NnxElmanCell.from_params` builds one from `ElmanParams` and ``cell.to_params()`` reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from rnn_jax import _checks, activations, initializers
from rnn_jax.cells import _common, elman
from rnn_jax.unroll import check_params


class ElmanCell(nn.RNNCellBase):
    """The Elman cell for ``flax.linen.RNN``: carry s [..., H], input x [..., D], output y [..., O].

    Attributes:
      hidden_size: H.
      output_size: O.
      activation: phi, a name in `rnn_jax.activations.NAMED` ("tanh", "relu", ...).
      input_init: initialiser of W_x and W_y (one of `rnn_jax.initializers.MATRIX_INITS` but "identity").
      recurrent_init: initialiser of W_s.
      param_dtype: the parameters' (and the carry's) dtype.
    """

    hidden_size: int
    output_size: int
    activation: str = "tanh"
    input_init: str = "glorot_uniform"
    recurrent_init: str = "orthogonal"
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        """Checks the attributes at construction (a bad one failed only at the first call, deep inside it)."""
        _checks.positive_int("hidden_size", self.hidden_size)
        _checks.positive_int("output_size", self.output_size)
        _check_options(self.activation, self.input_init, self.recurrent_init, self.param_dtype)
        super().__post_init__()

    @nn.compact
    def __call__(self, carry: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step: ``(s_{t-1} [..., H], x_t [..., D]) -> (s_t [..., H], y_t [..., O])``; leading axes are batch."""
        if jnp.ndim(x) < 1:
            raise ValueError(f"x: expected shape [..., D], got {jnp.shape(x)}")
        d, h, o, dtype = x.shape[-1], self.hidden_size, self.output_size, self.param_dtype
        if self.has_variable("params", "w_x"):  # flax's own error for another D named w_x, not the input
            d = jnp.shape(self.get_variable("params", "w_x"))[0]
        matrix = lambda name, init, shape: self.param(  # noqa: E731
            name, lambda key: initializers.matrix(key, init, shape, dtype)
        )
        params = elman.ElmanParams(
            w_x=matrix("w_x", self.input_init, (d, h)),
            w_s=matrix("w_s", self.recurrent_init, (h, h)),
            b_s=self.param("b_s", lambda _: jnp.zeros((h,), dtype)),
            w_y=matrix("w_y", self.input_init, (h, o)),
            b_y=self.param("b_y", lambda _: jnp.zeros((o,), dtype)),
        )
        return _step_over_batch_axes(params, carry, x, self.activation, ("carry", "x"))

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> jax.Array:
        """The zero state [..., H] for inputs of shape [..., D] (``rng`` is unused: the state starts at zero)."""
        del rng
        return jnp.zeros((*input_shape[:-1], self.hidden_size), self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


def _check_options(activation: Any, input_init: str, recurrent_init: str, param_dtype: Any) -> None:
    """The cells' options, checked as `rnn_jax.elman.init` checks them, under the cells' own argument names."""
    activations.get(activation)
    if not jnp.issubdtype(param_dtype, jnp.floating):
        raise TypeError(f"param_dtype: expected a floating dtype, got {jnp.dtype(param_dtype)}")
    _common.check_init_args(1, 1, 1, input_init, param_dtype)
    _common.check_recurrent_init(recurrent_init, 1.0, None, param_dtype)


def _check_params(params: Any) -> None:
    """Raises TypeError unless ``params`` are `ElmanParams` (this module's cells are Elman only), and ValueError
    naming the first field whose shape is not w_x [D, H], w_s [H, H], b_s [H], w_y [H, O], b_y [O]."""
    if not isinstance(params, elman.ElmanParams):
        raise TypeError(
            f"params: expected ElmanParams, got {type(params).__name__} (rnn_jax.interop.flax holds the Elman cell "
            f"only; the LSTM and GRU have no flax cell here)"
        )
    check_params(params, elman)


def _step_over_batch_axes(
    params: elman.ElmanParams, carry: jax.Array, x: jax.Array, activation: Any, names: tuple[str, str]
) -> tuple[jax.Array, jax.Array]:
    """`elman.step` for any number of leading batch axes: s [..., H], x [..., D] -> (s [..., H], y [..., O]).

    Raises:
      ValueError naming ``names`` (the carry's and the input's argument names): an input whose last axis is not D,
        or a carry whose shape is not the input's batch axes followed by H.
    """
    (d, h), o = params.w_x.shape, params.w_y.shape[1]
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != d:
        raise ValueError(f"{names[1]}: expected shape [..., D] with D = {d}, got {jnp.shape(x)}")
    batch_shape = x.shape[:-1]
    if jnp.shape(carry) != (*batch_shape, h):
        raise ValueError(
            f"{names[0]}: expected shape [..., H] = {(*batch_shape, h)} (the batch axes of {names[1]} "
            f"{jnp.shape(x)}, then H = {h}), got {jnp.shape(carry)}"
        )
    s, y = elman.step(params, carry.reshape(-1, h), x.reshape(-1, d), activation=activation)
    return s.reshape(*batch_shape, h), y.reshape(*batch_shape, o)


def _check_path(path: Any) -> tuple[str, ...]:
    """``path`` as a tuple of module names; a str is refused (iterated, "cell" was the path c/e/l/l)."""
    if isinstance(path, str) or not isinstance(path, tuple | list) or not all(isinstance(n, str) for n in path):
        hint = f"; for the one module {path!r} write ({path!r},)" if isinstance(path, str) else ""
        raise TypeError(f"path: expected a tuple of module names such as ('cell',), got {path!r}{hint}")
    return tuple(path)


def to_flax(params: elman.ElmanParams, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """The flax variables ``{"params": {*path: {"w_x": ..., ...}}}`` of `ElmanCell` holding ``params``.

    Args:
      params: Elman parameters.
      path: the cell's module path, a tuple of names; ``("cell",)`` for ``nn.RNN(ElmanCell(...))``.

    Raises:
      TypeError: for params that are not ElmanParams, or a path that is not a tuple of names (a str included).
      ValueError: naming the field whose shape does not fit the others.
    """
    _check_params(params)
    path = _check_path(path)
    tree: dict[str, Any] = dict(params._asdict())
    for name in reversed(path):
        tree = {name: tree}
    return {"params": tree}


def from_flax(variables: Mapping[str, Any], path: tuple[str, ...] = ()) -> elman.ElmanParams:
    """`ElmanParams` from the flax variables (or bare params dict) of an `ElmanCell` at ``path``.

    Args:
      variables: ``{"params": {...}}`` or the params dict itself.
      path: the cell's module path, a tuple of names; ``("cell",)`` for ``nn.RNN(ElmanCell(...))``.

    Raises:
      TypeError: for variables that are not a mapping, or a path that is not a tuple of names (a str included).
      KeyError: naming the first name of ``path`` that is missing, with the names that are there.
      ValueError: naming the missing entries, or the entry of the wrong shape, if the dict at ``path`` is not an
        ElmanCell's.
    """
    path = _check_path(path)
    if not isinstance(variables, Mapping):
        raise TypeError(f"variables: expected flax variables (a mapping), got {type(variables).__name__}")
    tree = variables.get("params", variables)
    for depth, name in enumerate(path):
        if not isinstance(tree, Mapping) or name not in tree:
            there = sorted(tree) if isinstance(tree, Mapping) else f"a {type(tree).__name__}, not a dict"
            where = f"under {path[:depth]}" if depth else "at the top of the params"
            raise KeyError(f"variables: path={path} not found: no {name!r} {where}; keys there: {there}")
        tree = tree[name]
    if not isinstance(tree, Mapping):
        raise ValueError(f"variables: not an ElmanCell's parameters at path {path}; got a {type(tree).__name__}")
    missing = [name for name in elman.ElmanParams._fields if name not in tree]
    if missing:
        raise ValueError(
            f"variables: not an ElmanCell's parameters at path {path}; missing {missing}, got {list(tree)}"
        )
    params = elman.ElmanParams(*(jnp.asarray(tree[name]) for name in elman.ElmanParams._fields))
    try:
        check_params(params, elman)
    except ValueError as error:
        w_s = jnp.shape(params.w_s)
        gates = w_s[1] // w_s[0] if len(w_s) == 2 and w_s[0] and w_s[1] % w_s[0] == 0 else 1
        hint = f" (w_s [H, {gates}H] is an LSTM's or GRU's; this module holds the Elman cell only)" if gates > 1 else ""
        raise ValueError(f"variables: not an ElmanCell's parameters at path {path}: {error}{hint}") from None
    return params


class NnxElmanCell(nnx.RNNCellBase):
    """The Elman cell for ``flax.nnx.RNN``: carry s [..., H], input x [..., D], output y [..., O].

    Its step is `rnn_jax.elman.step`; its parameters are ``nnx.Param`` attributes ``w_x [D, H]``, ``w_s [H, H]``,
    ``b_s [H]``, ``w_y [H, O]``, ``b_y [O]``, the fields of `ElmanParams`.

    Args:
      in_features, hidden_features, out_features: D, H, O.
      activation: phi, a name in `rnn_jax.activations.NAMED` ("tanh", "relu", ...).
      input_init, recurrent_init, param_dtype: as `rnn_jax.elman.init`'s ``input_init``, ``recurrent_init``,
        ``dtype``.
      rngs: ``nnx.Rngs``; the parameters are drawn from ``rngs.params()``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        *,
        activation: str = "tanh",
        input_init: str = "glorot_uniform",
        recurrent_init: str = "orthogonal",
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        sizes = (("in_features", in_features), ("hidden_features", hidden_features), ("out_features", out_features))
        d, h, o = (_checks.positive_int(name, value) for name, value in sizes)
        _check_options(activation, input_init, recurrent_init, param_dtype)
        params = elman.init(
            rngs.params(),
            d,
            h,
            o,
            input_init=input_init,
            recurrent_init=recurrent_init,
            dtype=param_dtype,
        )
        self._set(params)
        self.activation = activation

    def _set(self, params: elman.ElmanParams) -> None:
        for name, value in params._asdict().items():
            setattr(self, name, nnx.Param(jnp.asarray(value)))

    @classmethod
    def from_params(cls, params: elman.ElmanParams, *, activation: str = "tanh") -> NnxElmanCell:
        """A cell holding ``params`` (copied), with activation phi (no parameters are drawn: the cell is built
        abstractly, `nnx.eval_shape`, and then given ``params``).

        Raises:
          TypeError / ValueError: for params that are not ElmanParams, or a field whose shape does not fit the others.
        """
        _check_params(params)
        d, h = params.w_x.shape

        def build() -> NnxElmanCell:
            return cls(d, h, params.w_y.shape[1], activation=activation, param_dtype=params.w_x.dtype,
                       rngs=nnx.Rngs(0))  # fmt: skip

        cell = nnx.eval_shape(build)
        cell._set(params)
        return cell

    def to_params(self) -> elman.ElmanParams:
        """The cell's parameters as `ElmanParams`."""
        return elman.ElmanParams(*(getattr(self, name)[...] for name in elman.ElmanParams._fields))

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:  # type: ignore[override]
        """One step: ``(s_{t-1} [..., H], x_t [..., D]) -> (s_t [..., H], y_t [..., O])``; leading axes are batch."""
        return _step_over_batch_axes(self.to_params(), carry, inputs, self.activation, ("carry", "inputs"))

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None) -> jax.Array:
        """The zero state [..., H] for inputs of shape [..., D] (``rngs`` and ``carry_init`` are not used)."""
        del rngs
        if carry_init is not None:
            raise ValueError("carry_init: NnxElmanCell starts from the zero state; pass initial_carry to nnx.RNN")
        return jnp.zeros((*input_shape[:-1], self.w_s.shape[0]), self.w_s.dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1
