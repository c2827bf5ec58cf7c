"""Deep (stacked) and bidirectional recurrent networks of any cell, with dropout and a learnable initial state.

Each of the L layers runs a cell's `transition` (its state update, without a read-out) in one or two
directions, and one linear read-out sits on top of the last layer. For a sequence b of length T_b:

    a^1_t     = drop(x_t)                                              input of layer 1, width D
    f^l_t     = F(f^l_{t-1}, a^l_t; m^{l,f}),   t = 1 .. T_b,   f^l_0 = s_0^{l,f}      forward direction
    g^l_t     = F(g^l_{t+1}, a^l_t; m^{l,b}),   t = T_b .. 1,   g^l_{T_b+1} = s_0^{l,b}  backward direction
    h^l_t     = [f^l_t, g^l_t]            (bidirectional; f^l_t alone otherwise)    width dirs * H
    o^l_t     = h^l_t + a^l_t             (residual, layers l >= 2; h^l_t otherwise)
    a^{l+1}_t = drop(o^l_t)
    y_t       = drop(o^L_t) W_y + b_y                                  [O]

F is the cell's transition (Elman, LSTM or GRU; for the LSTM the carry is (h, c) and f, g are its h),
m is the recurrent dropout mask that multiplies h_{t-1} where it enters the recurrent product, and
the backward direction starts at each sequence's own last valid step T_b, not at the padded end T.
Past T_b the states are frozen and h^l_t, o^l_t and y_t are zero, as in `rnn_jax.unroll.unroll`.
Each direction is run by `rnn_jax.unroll.scan_in_dtype`, so the masking, the rematerialisation
(``remat``) and the mixed precision (``compute_dtype``) are the ones `unroll` uses; the backward
direction reverses each sequence within its length, runs the same masked scan, and reverses back.

Dropout (inverted: kept units are scaled by 1 / (1 - p)) is active only when a ``key`` is given:
``drop`` zeroes each unit with probability ``dropout``, with a fresh mask at every step, or with one
[B, width] mask per sequence for all steps when ``variational`` (Gal & Ghahramani 2016); the
recurrent masks m are always one [B, H] mask per sequence, layer and direction, the same at every
step (Gal & Ghahramani's variational recurrent dropout). Dropout on the non-recurrent connections
between layers and before the read-out is Zaremba et al.'s (2014). Residual connections between
stacked layers are those of Wu et al. (2016).

References:
  Schuster, M. & Paliwal, K. K. (1997). Bidirectional recurrent neural networks. IEEE Transactions on
  Signal Processing 45(11).
  Graves, A., Mohamed, A. & Hinton, G. (2013). Speech recognition with deep recurrent neural networks. ICASSP.
  Zaremba, W., Sutskever, I. & Vinyals, O. (2014). Recurrent neural network regularization. arXiv:1409.2329.
  Gal, Y. & Ghahramani, Z. (2016). A theoretically grounded application of dropout in recurrent neural
  networks. NeurIPS.
  Wu, Y. et al. (2016). Google's neural machine translation system: bridging the gap between human and
  machine translation. arXiv:1609.08144.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax import _checks, cells, initializers
from rnn_jax.cells import _common
from rnn_jax.unroll import (
    Remat,
    _resolve_mask,
    check_generation,
    check_params,
    check_scan_options,
    feed_back,
    resolve_projections,
    scan_in_dtype,
)


class Layer(NamedTuple):
    """One layer's two directions: cell Params (with ``w_y = b_y = None``), or carries in ``DeepParams.initial``."""

    forward: Any  # the forward direction's cell Params (w_x [width, G*H], w_s [H, G*H], ...), or its carry
    backward: Any  # the backward direction's, or None when the network is not bidirectional


class DeepParams(NamedTuple):
    """The weights of a deep network: L layers of cells without read-out, and one read-out on top."""

    layers: tuple  # tuple[Layer, ...], L entries; layer 1's w_x is [D, G*H], the others' [dirs*H, G*H]
    w_y: jax.Array  # [dirs*H, O]  read-out of the top layer's output
    b_y: jax.Array  # [O]
    initial: tuple | None  # tuple[Layer, ...] of learnable s_0 carries (each leaf [H]), or None: zeros

    @property
    def num_layers(self) -> int:
        """L."""
        return len(self.layers)

    @property
    def bidirectional(self) -> bool:
        """Whether each layer has a backward direction."""
        return self.layers[0].backward is not None


class DeepOutputs(NamedTuple):
    """What `apply` returns (time-major unless ``time_major=False`` was asked for)."""

    outputs: jax.Array  # [T, B, O]  y_t, zero past each sequence's end
    top: jax.Array  # [T, B, dirs*H]  o^L_t, the top layer's output (before the output dropout)
    final_states: tuple  # tuple[Layer, ...] of carries [B, H]: each direction's state after its last step


def _zero_carry(cell: ModuleType, params: Any) -> Any:
    """The cell's zero carry with the batch axis dropped: each leaf [H]."""
    return jax.tree.map(lambda a: a[0], cell.initial_state(params, 1))


def init(
    key: jax.Array,
    cell: str | ModuleType,
    input_size: int,
    hidden_size: int,
    output_size: int,
    *,
    layers: int = 1,
    bidirectional: bool = False,
    learn_initial_state: bool = False,
    input_init: str = "glorot_uniform",
    dtype: jnp.dtype = jnp.float32,
    **cell_options: Any,
) -> DeepParams:
    """Draws a deep network's parameters from ``key``.

    Every layer and direction is initialised by the cell's own ``init`` (so its initialisers, gate
    blocks and forget bias apply unchanged), with its read-out removed (``w_y = b_y = None``: empty
    pytree nodes, nothing for optax or orbax to hold). The learnable initial states start at zero.

    Args:
      key: a PRNG key, split into one sub-key per layer (then one per direction) and one for W_y.
      cell: "elman", "lstm", "gru" or a cell module.
      input_size, hidden_size, output_size: D, H, O (each >= 1).
      layers: L >= 1.
      bidirectional: give every layer a backward direction (dirs = 2).
      learn_initial_state: make s_0 of every layer and direction a parameter (``DeepParams.initial``).
      input_init: initialiser of every W_x and of W_y.
      dtype: float32 (default), float64 (needs ``jax_enable_x64``) or bfloat16.
      **cell_options: passed to the cell's ``init`` (recurrent_init, recurrent_scale, spectral_radius,
        forget_bias for the LSTM).

    Returns:
      DeepParams with layers[0] w_x [D, G*H], layers[l > 0] w_x [dirs*H, G*H], w_y [dirs*H, O], b_y [O].
    """
    _checks.prng_key("key", key)
    cell = cells.resolve(cell)
    layers = _checks.positive_int("layers", layers)
    d, h, o = _common.check_init_args(input_size, hidden_size, output_size, input_init, dtype)
    dirs = 2 if bidirectional else 1
    k_layers, k_y = jax.random.split(key)
    built = []
    for index, k_layer in enumerate(jax.random.split(k_layers, layers)):
        width = d if index == 0 else dirs * h
        directions = [
            cell.init(k, width, h, 1, input_init=input_init, dtype=dtype, **cell_options)._replace(w_y=None, b_y=None)
            for k in jax.random.split(k_layer, dirs)
        ]
        built.append(Layer(directions[0], directions[1] if bidirectional else None))
    initial = None
    if learn_initial_state:
        initial = tuple(
            Layer(*(None if p is None else _zero_carry(cell, p) for p in (layer.forward, layer.backward)))
            for layer in built
        )
    return DeepParams(
        layers=tuple(built),
        w_y=initializers.matrix(k_y, input_init, (dirs * h, o), dtype),
        b_y=jnp.zeros((o,), dtype),
        initial=initial,
    )


def check_residual(residual: bool, layers: int) -> None:
    """Raises ValueError for residual connections without a second layer (they start there: with one layer
    ``residual`` would be silently nothing)."""
    if residual and layers < 2:
        raise ValueError(
            f"residual: adds each stacked layer's input to its output, from the second layer on; needs layers >= 2, "
            f"got layers={layers}"
        )


def check_layers(params: DeepParams, residual: bool) -> None:
    """Raises ValueError unless the layers chain: every direction of a layer takes (w_x's rows) the previous
    layer's output width, the sum of its directions' H ([f, g] concatenated), and both directions of the first
    layer take the same D; with ``residual``, each layer after the first gives out the width it takes; w_y is
    [top width, O] and b_y [O]. Shapes only (a mismatch failed inside a product of the next layer's scan, or, for
    b_y [1, O], broadcast into 4-D outputs silently)."""
    width, source = jnp.shape(params.layers[0].forward.w_x)[0], "the input width D"
    for index, layer in enumerate(params.layers):
        directions = [(name, p) for name, p in zip(layer._fields, layer, strict=True) if p is not None]
        for name, p in directions:
            if jnp.shape(p.w_x)[0] != width:
                raise ValueError(
                    f"params.layers[{index}].{name}.w_x: expected {width} rows ({source}), got shape {jnp.shape(p.w_x)}"
                )
        sizes = [jnp.shape(p.w_s)[0] for _, p in directions]
        if residual and index > 0 and sum(sizes) != width:
            raise ValueError(
                f"residual: adds the input of params.layers[{index}] (width {width}) to its output (width "
                f"{sum(sizes)}); they must be equal"
            )
        if len(sizes) == 1:
            parts = f"H = {sizes[0]}"
        elif sizes[0] == sizes[1]:
            parts = f"2 directions x H = {sizes[0]}"
        else:
            parts = f"forward H = {sizes[0]} + backward H = {sizes[1]}"
        width, source = sum(sizes), f"the output width of params.layers[{index}]: {parts}"
    _checks.rank("params.w_y", params.w_y, 2, "dirs*H, O")
    if jnp.shape(params.w_y)[0] != width:
        raise ValueError(f"params.w_y: expected {width} rows ({source}), got shape {jnp.shape(params.w_y)}")
    _checks.rank("params.b_y", params.b_y, 1, "O")
    if jnp.shape(params.b_y) != jnp.shape(params.w_y)[1:]:
        raise ValueError(f"params.b_y: expected shape [O] = {jnp.shape(params.w_y)[1:]}, got {jnp.shape(params.b_y)}")


def check_network(params: DeepParams, cell: ModuleType, residual: bool) -> None:
    """Refuses, naming the argument, parameters that are not a `DeepParams` of ``cell`` whose layers chain
    (`check_layers`), and ``residual`` without a second layer: what `apply` and `generate` run."""
    if not isinstance(params, DeepParams):
        raise TypeError(f"params: expected the DeepParams of rnn_jax.deep.init, got {type(params).__name__} (a single "
                        "layer's parameters run through rnn_jax.unroll and rnn_jax.generate)")  # fmt: skip
    for layer in params.layers:  # drawn for another cell, they would fail inside the scan
        for direction in layer:
            if direction is not None:
                check_params(direction, cell, readout=False)
    check_residual(residual, len(params.layers))
    check_layers(params, residual)


def check_rate(name: str, rate: float) -> float:
    """``rate`` as a float after checking that it lies in [0, 1).

    Raises:
      ValueError: naming ``name``, for a rate outside [0, 1) (1 would drop every unit).
    """
    return _checks.real(name, rate, "a dropout rate in [0, 1)", lambda r: 0 <= r < 1)


def dropout_mask(key: jax.Array, rate: float, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    """An inverted-dropout mask of ``shape``: 0 with probability ``rate``, else 1 / (1 - rate)."""
    keep = 1.0 - rate
    return jax.random.bernoulli(key, keep, shape).astype(dtype) / jnp.asarray(keep, dtype)


def _drop(key: jax.Array | None, a: jax.Array, rate: float, variational: bool) -> jax.Array:
    """Dropout on ``a`` [T, B, W]: a fresh mask per step, or one [B, W] mask for every step when variational."""
    if key is None or rate == 0:
        return a
    if variational:
        return a * dropout_mask(key, rate, a.shape[1:], a.dtype)[None]
    return a * dropout_mask(key, rate, a.shape, a.dtype)


def reverse_within_lengths(a: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """Each sequence reversed within its own length: ``out[t, b] = a[T_b - 1 - t, b]`` for t < T_b, else a[t, b].

    Its own inverse. Args: ``a`` [T, B, ...] time-major; ``lengths`` [B] (None: all of length T).
    """
    if lengths is None:
        return jnp.flip(a, axis=0)
    num_steps, batch = a.shape[0], a.shape[1]
    t = jnp.arange(num_steps, dtype=lengths.dtype)[:, None]  # [T, 1]
    ends = lengths[None, :]  # [1, B]
    source = jnp.where(t < ends, ends - 1 - t, t)  # [T, B]
    rows = jnp.broadcast_to(jnp.arange(batch)[None, :], (num_steps, batch))
    return a[source, rows]


def _run_direction(cell, params, xs, mask, initial, recurrent_mask, activation, unroll, remat, compute_dtype,
                   hoisted):  # fmt: skip
    """One direction of one layer over [T, B, width]: (h_t [T, B, H] zero past each end, final carry), both in
    the parameters' dtype (computed in ``compute_dtype`` when one is given; the recurrent mask is in it).
    ``hoisted``: x_t W_x for all T steps as one [T B, width] @ [width, G H] product before the scan, which
    then runs the cell's `transition_projected` (as `rnn_jax.unroll.hoisted_scan` does)."""
    transition = cell.transition_projected if hoisted else cell.transition

    def cell_step(params, carry, x_t):
        new = transition(params, carry, x_t, activation=activation, recurrent_mask=recurrent_mask)
        return new, cell.hidden(new)

    inputs = cell.project_input(params, xs) if hoisted else xs
    outputs, _, final = scan_in_dtype(cell_step, params, initial, inputs, mask, unroll, remat, compute_dtype)
    return outputs, final


def apply(
    params: DeepParams,
    xs: jax.Array,
    *,
    cell: str | ModuleType,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    lengths: jax.Array | None = None,
    key: jax.Array | None = None,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    variational: bool = False,
    residual: bool = False,
    unroll: int = 1,
    remat: Remat = None,
    compute_dtype: jnp.dtype | None = None,
    projections: Literal["auto", "in_step", "hoisted"] = "auto",
    time_major: bool = True,
) -> DeepOutputs:
    """Runs the deep network of the module docstring over a batch of sequences.

    Args:
      params: from `init` (the number of layers and directions is read from it).
      xs: inputs, [T, B, D] (or [B, T, D] with ``time_major=False``), floating.
      cell: the cell the parameters were drawn for ("elman", "lstm", "gru" or its module).
      activation: phi of the cell, by name or as a callable.
      lengths: [B] integer lengths in [0, T]; each direction sees only a sequence's first T_b steps.
      key: PRNG key of the dropout masks; None (evaluation) turns every dropout off. Layer l (from 0)
        draws its input, forward-recurrent and backward-recurrent masks from the three keys of
        ``jax.random.split(fold_in(key, l), 3)``, the output dropout from ``fold_in(key, L)``.
      dropout: rate p in [0, 1) on every layer's input and on the top layer's output.
      recurrent_dropout: rate in [0, 1) on h_{t-1} in every recurrent product (one mask per sequence,
        layer and direction).
      variational: one input/output dropout mask per sequence for all steps, instead of one per step.
      residual: add each layer's input to its output for layers 2 .. L (their widths are both dirs*H).
      unroll: scan's unroll factor (time steps per loop iteration), >= 1.
      remat: rematerialisation of every direction's scan, as in `rnn_jax.unroll.unroll`: None (keep every
        step's intermediates), k (keep the carry every k steps, recompute the chunks in the backward pass)
        or "sqrt"; the same values and gradients.
      compute_dtype: mixed precision, as in `rnn_jax.unroll.unroll`: every direction's scan (and its
        backward pass) runs in this dtype (e.g. ``jnp.bfloat16``, the recurrent dropout masks too), while
        the parameters, the layers' outputs between the scans, the read-out and the outputs stay in the
        parameters' dtype. None: the parameters' dtype throughout.
      projections: "in_step" (x_t W_x inside every step of every scan), "hoisted" (each direction's
        input product for all T steps as one product before its scan, as `rnn_jax.unroll` does; not with
        ``remat`` or ``compute_dtype``) or "auto": hoisted on GPU/TPU without remat or a compute dtype
        (`rnn_jax.unroll.HOISTING_BACKENDS`), in the step otherwise. The same values up to float round-off.
        Why "auto" chooses so, measured by `experiments.deep_projections` with 2-layer networks: on one H200
        GPU hoisting made the value and gradient 0.79-0.91x as long as in the step (Elman and LSTM, one and
        two directions, at (B, T, D, H, O) = (64, 256, 32, 128, 32) and (128, 512, 64, 256, 64)); on a 2-core
        CPU the tall [T B, width] products run slower than the same work inside the steps, as for one layer.
      time_major: False when ``xs`` is batch-first; ``outputs`` and ``top`` are then batch-first too.

    Returns:
      `DeepOutputs` (outputs [T, B, O], top [T, B, dirs*H], final_states per layer and direction [B, H]).

    Raises:
      ValueError / TypeError naming the argument, on a wrong rank, width, length or rate, layers that do not chain
      (`check_layers`), or a ``time_major`` that is not a bool.
    """
    cell = cells.resolve(cell)
    check_network(params, cell, residual)
    if key is not None:
        _checks.prng_key("key", key)
    time_major = _checks.boolean("time_major", time_major)
    _checks.rank("xs", xs, 3, "T, B, D" if time_major else "B, T, D")
    _checks.floating("xs", xs)
    if compute_dtype is None:
        _checks.not_float64("xs", xs, params.layers[0].forward.w_s.dtype)
    dropout = check_rate("dropout", dropout)
    recurrent_dropout = check_rate("recurrent_dropout", recurrent_dropout)
    unroll = _checks.positive_int("unroll", unroll)
    check_scan_options(remat, compute_dtype)
    if projections not in ("auto", "in_step", "hoisted"):
        raise ValueError(
            f"projections: expected 'auto', 'in_step' or 'hoisted' for a deep network, got {projections!r}"
        )
    hoisted = resolve_projections(projections, remat is None and compute_dtype is None) == "hoisted"
    if not time_major:
        xs = jnp.swapaxes(xs, 0, 1)
    num_steps, batch, width = xs.shape
    input_size = params.layers[0].forward.w_x.shape[0]
    if width != input_size:
        raise ValueError(f"xs: expected input width D = {input_size} (layer 1's w_x), got {width}")
    mask = _resolve_mask(None, lengths, num_steps, batch)  # the checks and the mask `unroll` uses
    if lengths is not None:
        lengths = jnp.asarray(lengths)

    starts = initial_states(params, cell, batch)

    inputs, finals = xs, []
    for index, layer in enumerate(params.layers):
        keys = [None] * 3 if key is None else list(jax.random.split(jax.random.fold_in(key, index), 3))
        a = _drop(keys[0], inputs, dropout, variational)
        hidden_size = layer.forward.w_s.shape[0]

        def recurrent_mask(k, hidden_size=hidden_size, dtype=a.dtype if compute_dtype is None else compute_dtype):
            if k is None or recurrent_dropout == 0:
                return None
            return dropout_mask(k, recurrent_dropout, (batch, hidden_size), dtype)

        h_f, final_f = _run_direction(
            cell, layer.forward, a, mask, starts[index].forward, recurrent_mask(keys[1]),
            activation, unroll, remat, compute_dtype, hoisted,
        )  # fmt: skip
        final_b = None
        if layer.backward is not None:
            h_b, final_b = _run_direction(
                cell, layer.backward, reverse_within_lengths(a, lengths), mask,
                starts[index].backward, recurrent_mask(keys[2]), activation, unroll, remat,
                compute_dtype, hoisted,
            )  # fmt: skip
            h = jnp.concatenate([h_f, reverse_within_lengths(h_b, lengths)], axis=-1)
        else:
            h = h_f
        inputs = h + a if residual and index > 0 else h
        finals.append(Layer(final_f, final_b))
    top = inputs
    top_key = None if key is None else jax.random.fold_in(key, len(params.layers))
    outputs = _drop(top_key, top, dropout, variational) @ params.w_y + params.b_y[None, None, :]
    if mask is not None:
        outputs = jnp.where(mask[:, :, None], outputs, jnp.zeros_like(outputs))
    if not time_major:
        outputs, top = jnp.swapaxes(outputs, 0, 1), jnp.swapaxes(top, 0, 1)
    return DeepOutputs(outputs, top, tuple(finals))


def initial_states(params: DeepParams, cell: str | ModuleType, batch: int) -> tuple:
    """Each layer's and direction's s_0 for ``batch`` sequences: the learned one (``params.initial``) broadcast over
    the batch, or the cell's zeros. A tuple of `Layer`s of carries, each leaf [B, H]."""
    cell = cells.resolve(cell)

    def start(index: int, direction: str, layer_params: Any) -> Any:
        if layer_params is None:
            return None
        if params.initial is None:
            return cell.initial_state(layer_params, batch)
        carry = getattr(params.initial[index], direction)
        return jax.tree.map(lambda s: jnp.broadcast_to(s[None, :], (batch, s.shape[0])), carry)

    return tuple(
        Layer(start(index, "forward", layer.forward), start(index, "backward", layer.backward))
        for index, layer in enumerate(params.layers)
    )


def step(
    params: DeepParams,
    carries: tuple,
    x: jax.Array,
    *,
    cell: str | ModuleType,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    residual: bool = False,
) -> tuple[tuple, jax.Array, jax.Array]:
    """One time step of a unidirectional stack, as `apply` computes it without dropout (evaluation):

        f^l_t = F(f^l_{t-1}, a^l_t),   a^1_t = x_t,   a^{l+1}_t = o^l_t = f^l_t (+ a^l_t for l >= 2 with residual)
        y_t   = o^L_t W_y + b_y

    Args:
      params: from `init`, without a backward direction.
      carries: f^l_{t-1} for l = 1 .. L, a tuple of the cell's carries (each leaf [B, H]).
      x: x_t, [B, D].
      cell, activation, residual: as in `apply`.

    Returns:
      (the carries after the step, y_t [B, O], o^L_t [B, H]).
    """
    cell = cells.resolve(cell)
    a, new = x, []
    for index, (layer, carry) in enumerate(zip(params.layers, carries, strict=True)):
        carry = cell.transition(layer.forward, carry, a, activation=activation)
        h = cell.hidden(carry)
        a = h + a if residual and index > 0 else h
        new.append(carry)
    return tuple(new), a @ params.w_y + params.b_y[None, :], a


def generate(
    params: DeepParams,
    key: jax.Array,
    first_input: jax.Array,
    num_steps: int,
    *,
    cell: str | ModuleType,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    residual: bool = False,
    carries: tuple | None = None,
    feedback: Literal["sample", "argmax", "output"] = "sample",
    temperature: float = 1.0,
):
    """One-to-many for a deep network: `rnn_jax.unroll.generate`'s loop (each output fed back as the next input)
    around `step`, the stack without dropout. A character-level language model of several layers samples text so.

    Args:
      params: from `init`, unidirectional (a backward direction would need the inputs still to be generated).
      key, first_input [B, D], num_steps, feedback, temperature: as in `rnn_jax.unroll.generate`.
      cell, activation, residual: as in `apply`.
      carries: the forward carries before the first step, one per layer (for example the forward parts of
        `apply(...).final_states` after a prime); None: s_0 of `initial_states` (learned or zeros).

    Returns:
      `rnn_jax.unroll.Generated` (inputs [N, B, D], outputs [N, B, O], states [N, B, H]: o^L_t, the top's output).
    """
    cell = cells.resolve(cell)
    check_network(params, cell, residual)
    if params.bidirectional:
        raise ValueError(
            "params: a bidirectional network cannot generate: its backward direction reads inputs not yet generated"
        )
    d = params.layers[0].forward.w_x.shape[0]
    num_steps = check_generation(key, first_input, num_steps, d, params.w_y, feedback, temperature)
    batch = first_input.shape[0]
    if carries is None:
        carries = tuple(layer.forward for layer in initial_states(params, cell, batch))
    elif len(carries) != len(params.layers):
        raise ValueError(f"carries: expected one carry per layer ({len(params.layers)}), got {len(carries)}")
    return feed_back(
        functools.partial(step, params, cell=cell, activation=activation, residual=residual),
        carries, first_input, num_steps, key, feedback=feedback, temperature=temperature,
    )  # fmt: skip
