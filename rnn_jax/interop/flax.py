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

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from rnn_jax import initializers
from rnn_jax.cells import elman


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

    @nn.compact
    def __call__(self, carry: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step: ``(s_{t-1} [..., H], x_t [..., D]) -> (s_t [..., H], y_t [..., O])``; leading axes are batch."""
        d, h, o, dtype = x.shape[-1], self.hidden_size, self.output_size, self.param_dtype
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
        return _step_over_batch_axes(params, carry, x, self.activation)

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> jax.Array:
        """The zero state [..., H] for inputs of shape [..., D] (``rng`` is unused: the state starts at zero)."""
        del rng
        return jnp.zeros((*input_shape[:-1], self.hidden_size), self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


def _step_over_batch_axes(
    params: elman.ElmanParams, carry: jax.Array, x: jax.Array, activation: str
) -> tuple[jax.Array, jax.Array]:
    """`elman.step` for any number of leading batch axes: s [..., H], x [..., D] -> (s [..., H], y [..., O])."""
    (d, h), o = params.w_x.shape, params.w_y.shape[1]
    batch_shape = x.shape[:-1]
    s, y = elman.step(params, carry.reshape(-1, h), x.reshape(-1, d), activation=activation)
    return s.reshape(*batch_shape, h), y.reshape(*batch_shape, o)


def to_flax(params: elman.ElmanParams, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """The flax variables ``{"params": {*path: {"w_x": ..., ...}}}`` of `ElmanCell` holding ``params``.

    Args:
      params: Elman parameters.
      path: the cell's module path; ``("cell",)`` for ``nn.RNN(ElmanCell(...))``.
    """
    tree: dict[str, Any] = dict(params._asdict())
    for name in reversed(path):
        tree = {name: tree}
    return {"params": tree}


def from_flax(variables: Mapping[str, Any], path: tuple[str, ...] = ()) -> elman.ElmanParams:
    """`ElmanParams` from the flax variables (or bare params dict) of an `ElmanCell` at ``path``.

    Raises:
      ValueError: naming the missing entries, if the dict at ``path`` is not an ElmanCell's.
    """
    tree = variables.get("params", variables)
    tree = functools.reduce(lambda node, name: node[name], path, tree)
    missing = [name for name in elman.ElmanParams._fields if name not in tree]
    if missing:
        raise ValueError(
            f"variables: not an ElmanCell's parameters at path {path}; missing {missing}, got {list(tree)}"
        )
    return elman.ElmanParams(*(jnp.asarray(tree[name]) for name in elman.ElmanParams._fields))


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
        params = elman.init(
            rngs.params(),
            in_features,
            hidden_features,
            out_features,
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
        abstractly, `nnx.eval_shape`, and then given ``params``)."""
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
        return _step_over_batch_axes(self.to_params(), carry, inputs, self.activation)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None) -> jax.Array:
        """The zero state [..., H] for inputs of shape [..., D] (``rngs`` and ``carry_init`` are not used)."""
        del rngs
        if carry_init is not None:
            raise ValueError("carry_init: NnxElmanCell starts from the zero state; pass initial_carry to nnx.RNN")
        return jnp.zeros((*input_shape[:-1], self.w_s.shape[0]), self.w_s.dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1
