"""Sequence to sequence: an encoder-decoder of two recurrent cells, teacher forcing and greedy decoding.

The encoder reads the source tokens u_1 .. u_S (each sequence up to its own length S_b), the decoder
starts from the encoder's final state and emits the target tokens d_1 .. d_T, the last one <end>:

    encoder   s_k = cell_enc(s_{k-1}, E_src[u_k])                       k = 1 .. S_b,  s_0 = 0
    decoder   z_0 = s_{S_b}                                              (each sequence's own last state)
              z_t, y_t = cell_dec(z_{t-1}, E_tgt[d_{t-1}])             t = 1 .. T,  d_0 = <go>
              p(d_t | d_<t, u) = softmax(y_t)                            y_t = z_t W_y + b_y, [V_t] logits

Teacher forcing (training, `teacher_forced`): d_{t-1} is the true previous target token, and the loss
is the mean cross-entropy -log p(d_t | d_<t, u) over exactly the valid target steps t <= T_b (the
<end> token included; padding never counts). Greedy decoding (evaluation, `greedy_decode`): d_{t-1}
is the argmax of the previous step's logits, for a fixed number of steps; a sequence's output ends
at its first <end>, and everything after it is <pad>.

E_src [V_s, E] and E_tgt [V_t, E] are token embeddings; the encoder and decoder are any of the
cells of `rnn_jax.cells` (elman, lstm, gru) with input width D = E. Only the decoder's read-out
(W_y, b_y) is used; the encoder is built with O = 1 and its read-out is ignored.

Token conventions shared by every sequence-to-sequence task: id 0 is <pad> in both vocabularies; in
the target vocabulary 1 is <go> (only ever fed in) and 2 is <end> (`PAD`, `GO`, `END`).

Shape letters: S source steps, T target steps, B batch, E embedding, H state, V_s and V_t the
source and target vocabulary sizes.

References:
  Sutskever, I., Vinyals, O. & Le, Q. V. (2014). Sequence to sequence learning with neural networks.
  NeurIPS.
  Cho, K., van Merrienboer, B., Gulcehre, C., Bahdanau, D., Bougares, F., Schwenk, H. & Bengio, Y.
  (2014). Learning phrase representations using RNN encoder-decoder for statistical machine
  translation. EMNLP.
  Williams, R. J. & Zipser, D. (1989). A learning algorithm for continually running fully recurrent
  neural networks. Neural Computation 1(2) (teacher forcing).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax import _checks, cells, initializers, losses
from rnn_jax.unroll import Remat, check_params, check_scan_options, lax_scan, scan_in_dtype, sequence_mask

PAD, GO, END = 0, 1, 2  # token ids: <pad> in both vocabularies; <go> and <end> in the target vocabulary


class Seq2SeqBatch(NamedTuple):
    """A batch of (source, target) token sequences, time-major, each side padded with `PAD`."""

    source: jax.Array  # [S, B] int32: source token ids
    source_lengths: jax.Array  # [B] int32: valid source steps (>= 1)
    target: jax.Array  # [T, B] int32: target token ids, each sequence ending with END
    target_lengths: jax.Array  # [B] int32: valid target steps, the END token included


class Seq2SeqParams(NamedTuple):
    """The parameters of the encoder-decoder."""

    source_embedding: jax.Array  # [V_s, E]  E_src
    target_embedding: jax.Array  # [V_t, E]  E_tgt
    encoder: Any  # the cell's Params with D = E, O = 1 (w_x [E, G*H], w_s [H, G*H]; read-out unused)
    decoder: Any  # the cell's Params with D = E, O = V_t (w_y [H, V_t]: the logits)


class Decoded(NamedTuple):
    """The result of `greedy_decode`."""

    tokens: jax.Array  # [L, B] int32: the argmax tokens, PAD after each sequence's first END
    lengths: jax.Array  # [B] int32: steps up to and including the first END (L when there is none)
    logits: jax.Array  # [L, B, V_t] the logits of every step (computed past END too)


def cell_of(params: Seq2SeqParams) -> ModuleType:
    """The cell module (`rnn_jax.cells`) whose parameters ``params.encoder`` and ``params.decoder`` are."""
    kinds = {module.Params: module for module in cells.CELLS.values()}
    encoder, decoder = kinds.get(type(params.encoder)), kinds.get(type(params.decoder))
    if encoder is None or encoder is not decoder:
        raise TypeError(
            "params: expected the encoder and decoder parameters of one cell "
            f"({', '.join(m.Params.__name__ for m in kinds.values())}), got "
            f"{type(params.encoder).__name__} and {type(params.decoder).__name__}"
        )
    return encoder


def init(
    key: jax.Array,
    model: str,
    source_vocab: int,
    target_vocab: int,
    hidden_size: int,
    *,
    embed_size: int | None = None,
    input_init: str = "glorot_uniform",
    recurrent_init: str = "orthogonal",
    recurrent_scale: float = 1.0,
    spectral_radius: float | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> Seq2SeqParams:
    """Draws the encoder-decoder's parameters from ``key`` (one sub-key each for E_src, E_tgt, encoder, decoder).

    The embeddings are drawn by ``input_init`` (as W_x); each cell by its own ``init`` with the given
    options.

    Args:
      key: a PRNG key.
      model: the cell of both encoder and decoder: "elman", "lstm" or "gru".
      source_vocab, target_vocab: V_s and V_t (each >= 1; V_t >= 3 for PAD, GO and END).
      hidden_size: H of both cells.
      embed_size: E (default: H).
      input_init, recurrent_init, recurrent_scale, spectral_radius, dtype: as for the cells' ``init``.

    Returns:
      `Seq2SeqParams`.
    """
    _checks.prng_key("key", key)
    cell = cells.get(model)
    source_vocab = _checks.positive_int("source_vocab", source_vocab)
    target_vocab = _checks.positive_int("target_vocab", target_vocab)
    if target_vocab <= END:
        raise ValueError(f"target_vocab: expected at least {END + 1} tokens (<pad>, <go>, <end>), got {target_vocab}")
    hidden_size = _checks.positive_int("hidden_size", hidden_size)
    embed = hidden_size if embed_size is None else _checks.positive_int("embed_size", embed_size)
    options = dict(
        input_init=input_init, recurrent_init=recurrent_init, recurrent_scale=recurrent_scale,
        spectral_radius=spectral_radius, dtype=dtype,
    )  # fmt: skip
    k_src, k_tgt, k_enc, k_dec = jax.random.split(key, 4)
    encoder = cell.init(k_enc, embed, hidden_size, 1, **options)
    decoder = cell.init(k_dec, embed, hidden_size, target_vocab, **options)
    return Seq2SeqParams(
        source_embedding=initializers.matrix(k_src, input_init, (source_vocab, embed), dtype),
        target_embedding=initializers.matrix(k_tgt, input_init, (target_vocab, embed), dtype),
        encoder=encoder,
        decoder=decoder,
    )


_WIDTHS = (  # the pieces' widths that must agree: (field, axis, what it is, its letter) for each side
    (("source_embedding", 1, "the source embedding width", "E"), ("encoder.w_x", 0, "the encoder's input width", "D")),
    (("encoder.w_s", 0, "the encoder's state size", "H"), ("decoder.w_s", 0, "the decoder's state size", "H")),
    (("target_embedding", 1, "the target embedding width", "E"), ("decoder.w_x", 0, "the decoder's input width", "D")),
    (
        ("decoder.w_y", 1, "the decoder's output width", "O"),
        ("target_embedding", 0, "the target vocabulary size", "V_t"),
    ),
)


def _checked_cell(params: Seq2SeqParams) -> ModuleType:
    """The cell module of ``params`` (`cell_of`), after checking that its pieces fit together: each cell's own
    fields (`rnn_jax.unroll.check_params`), E_src [V_s, E] and E_tgt [V_t, E] of rank 2, and

        width(E_src) = D_enc,   H_enc = H_dec,   width(E_tgt) = D_dec,   O_dec = V_t >= 3

    (O_dec < V_t left target tokens without a logit; O_dec > V_t let greedy decoding pick ids past E_tgt, whose
    look-up is NaN). Shapes only, so traced parameters are checked too; every public entry point calls it.

    Raises:
      TypeError: the encoder and decoder are not the parameters of one cell.
      ValueError: naming the two pieces and their sizes, for widths that disagree (shape errors inside XLA).
    """
    cell = cell_of(params)
    for name in ("encoder", "decoder"):
        try:
            check_params(getattr(params, name), cell)
        except ValueError as error:
            error.add_note(f"(in params.{name})")
            raise
    _checks.rank("params.source_embedding", params.source_embedding, 2, "V_s, E")
    _checks.rank("params.target_embedding", params.target_embedding, 2, "V_t, E")
    for (a, i, what_a, letter_a), (b, j, what_b, letter_b) in _WIDTHS:
        shape_a, shape_b = (jnp.shape(operator.attrgetter(f)(params)) for f in (a, b))
        if shape_a[i] != shape_b[j]:
            raise ValueError(
                f"params.{a}, params.{b}: expected {what_a} {letter_a} to equal {what_b} {letter_b}, got "
                f"{letter_a} = {shape_a[i]} (params.{a} of shape {shape_a}) and {letter_b} = {shape_b[j]} "
                f"(params.{b} of shape {shape_b})"
            )
    if jnp.shape(params.target_embedding)[0] <= END:
        raise ValueError(
            f"params.target_embedding: expected at least {END + 1} rows (<pad>, <go>, <end>), got shape "
            f"{jnp.shape(params.target_embedding)}"
        )
    return cell


def _check_steps(name: str, tokens: jax.Array, letters: str) -> None:
    """Raises unless ``tokens`` is an array of rank 2 (``letters``, time first) with at least one step."""
    _checks.array(name, tokens, f"[{letters}] token ids")
    _checks.rank(name, tokens, 2, letters)
    if jnp.shape(tokens)[0] < 1:
        steps = letters.split(",")[0]
        raise ValueError(
            f"{name}: expected at least one step [{letters}] with {steps} >= 1, got shape {jnp.shape(tokens)}"
        )


def _check_tokens(name: str, tokens: jax.Array, vocab: int, letters: str) -> None:
    _check_steps(name, tokens, letters)
    _checks.integers(name, tokens, "integer token ids")
    _checks.within(name, tokens, 0, vocab - 1, f"token ids in [0, {vocab})")


def encode(
    params: Seq2SeqParams,
    source: jax.Array,
    source_lengths: jax.Array,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    unroll: int = 1,
    remat: Remat = None,
    compute_dtype: jnp.dtype | None = None,
) -> Any:
    """The encoder's final state s_{S_b}: each sequence's state at its own last source token.

    Args:
      params: `Seq2SeqParams`.
      source: [S, B] int token ids (PAD past each length).
      source_lengths: [B] int in [1, S].
      activation: phi of the cell.
      unroll: scan's unroll factor.
      remat, compute_dtype: rematerialisation and mixed precision of the scan, as in `rnn_jax.unroll.unroll`
        (the embeddings are looked up in the parameters' dtype and cast; the state comes back in it).

    Returns:
      The cell's carry ([B, H], or an ``LSTMState`` of two [B, H]).
    """
    cell = _checked_cell(params)
    _check_tokens("source", source, params.source_embedding.shape[0], "S, B")
    num_steps, batch = source.shape
    _checks.lengths("source_lengths", source_lengths, num_steps, batch, shortest=1)
    check_scan_options(remat, compute_dtype)
    xs = jnp.take(params.source_embedding, source, axis=0)  # [S, B, E]
    step = functools.partial(cell.step, activation=activation)
    initial = cell.initial_state(params.encoder, batch)
    mask = sequence_mask(source_lengths, num_steps)
    unroll = _checks.positive_int("unroll", unroll)
    _, _, final = scan_in_dtype(step, params.encoder, initial, xs, mask, unroll, remat, compute_dtype)
    return final


def decoder_inputs(target: jax.Array) -> jax.Array:
    """The teacher-forced decoder inputs: ``[GO, d_1, .., d_{T-1}]``, [T, B] (the target shifted right)."""
    return jnp.concatenate([jnp.full_like(target[:1], GO), target[:-1]], axis=0)


def teacher_forced(
    params: Seq2SeqParams,
    source: jax.Array,
    source_lengths: jax.Array,
    target: jax.Array,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    unroll: int = 1,
    remat: Remat = None,
    compute_dtype: jnp.dtype | None = None,
) -> jax.Array:
    """The decoder's logits with teacher forcing: step t is fed the true token d_{t-1} (d_0 = <go>).

    Args:
      params: `Seq2SeqParams`.
      source: [S, B] int; source_lengths: [B] int in [1, S].
      target: [T, B] int target tokens (the last valid one END, PAD past it).
      activation: phi of both cells.
      unroll: scan's unroll factor.
      remat, compute_dtype: rematerialisation and mixed precision of both scans, as in `rnn_jax.unroll.unroll`.

    Returns:
      y, [T, B, V_t] logits in the parameters' dtype (every step; padded steps are computed too and the loss
      ignores them).
    """
    cell = _checked_cell(params)
    _check_tokens("target", target, params.target_embedding.shape[0], "T, B")
    _checks.dim("target", target, 1, source.shape[1], "the batch size B of source")
    options = {"unroll": unroll, "remat": remat, "compute_dtype": compute_dtype}
    state = encode(params, source, source_lengths, activation=activation, **options)
    xs = jnp.take(params.target_embedding, decoder_inputs(target), axis=0)  # [T, B, E]
    step = functools.partial(cell.step, activation=activation)
    logits, _, _ = scan_in_dtype(step, params.decoder, state, xs, None, **options)
    return logits


def greedy_decode(
    params: Seq2SeqParams,
    source: jax.Array,
    source_lengths: jax.Array,
    max_length: int,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
) -> Decoded:
    """Greedy decoding for ``max_length`` steps: each step is fed the argmax of the previous one.

        z_0 = encode(u),  d_0 = <go>
        z_t, y_t = cell_dec(z_{t-1}, E_tgt[d_{t-1}]),   d_t = argmax y_t      t = 1 .. L
        output: d_1 .. d_n with n the first t where d_t = <end> (n = L when there is none), then <pad>

    Args:
      params: `Seq2SeqParams`.
      source: [S, B] int; source_lengths: [B] int in [1, S].
      max_length: L >= 1, the number of steps run (static).
      activation: phi of both cells.

    Returns:
      `Decoded` (tokens [L, B], lengths [B], logits [L, B, V_t]).
    """
    cell = _checked_cell(params)
    max_length = _checks.positive_int("max_length", max_length)
    state = encode(params, source, source_lengths, activation=activation)
    step = functools.partial(cell.step, params.decoder, activation=activation)

    def body(carry, _):
        z, previous, done = carry
        z, y = step(z, jnp.take(params.target_embedding, previous, axis=0))
        token = jnp.argmax(y, axis=-1).astype(jnp.int32)
        emitted = jnp.where(done, PAD, token)
        return (z, token, done | (token == END)), (emitted, y, done)

    batch = source.shape[1]
    start = (state, jnp.full((batch,), GO, jnp.int32), jnp.zeros((batch,), bool))
    _, (tokens, logits, done_before) = lax_scan(body, start, length=max_length)
    lengths = jnp.sum(~done_before, axis=0).astype(jnp.int32)  # steps emitted before (and at) the first END
    return Decoded(tokens, lengths, logits)


def sequence_loss(logits: jax.Array, target: jax.Array, target_lengths: jax.Array) -> jax.Array:
    """Mean cross-entropy per valid target step: sum_{b, t <= T_b} -log softmax(y_t)[d_t] / sum_b T_b.

    Args:
      logits: [T, B, V_t]; target: [T, B] int; target_lengths: [B] int in [1, T].

    Returns:
      A scalar (float32 for bfloat16 logits).
    """
    _checks.rank("logits", logits, 3, "T, B, V")
    _checks.lengths("target_lengths", target_lengths, target.shape[0], target.shape[1], shortest=1)
    mask = sequence_mask(target_lengths, target.shape[0])
    return losses.by_name("cross_entropy", logits, target, mask, reduction="mean")


def loss(
    params: Seq2SeqParams,
    batch: Seq2SeqBatch,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    unroll: int = 1,
    remat: Remat = None,
    compute_dtype: jnp.dtype | None = None,
) -> jax.Array:
    """The training loss: `sequence_loss` of the `teacher_forced` logits on ``batch`` (options as there)."""
    options = {"activation": activation, "unroll": unroll, "remat": remat, "compute_dtype": compute_dtype}
    logits = teacher_forced(params, batch.source, batch.source_lengths, batch.target, **options)
    return sequence_loss(logits, batch.target, batch.target_lengths)


def sequence_metrics(predicted: jax.Array, target: jax.Array, target_lengths: jax.Array) -> dict[str, jax.Array]:
    """Token accuracy and exact match of predicted tokens against the targets, up to each target's END.

        token_accuracy = sum_{b, t <= T_b} [p_tb = d_tb] / sum_b T_b
        exact_match    = mean_b  prod_{t <= T_b} [p_tb = d_tb]       (every token, END included, right)

    Args:
      predicted: [L, B] int with L >= T (e.g. `Decoded.tokens`); only its first T steps are compared.
      target: [T, B] int; target_lengths: [B] int in [1, T].

    Returns:
      {"token_accuracy": [], "exact_match": []} (float32).

    Raises:
      ValueError / TypeError naming the argument: ``predicted`` not an [L >= T, B] array (a whole `Decoded`: pass
      its ``.tokens``); ``target_lengths`` not [B] integers, or (concrete) outside [1, T] (0 or negative ones made
      every padded token count as right).
    """
    if isinstance(predicted, Decoded):
        raise TypeError(
            "predicted: expected [L, B] token ids, got a Decoded (greedy_decode's tokens, lengths and logits): "
            "pass decoded.tokens"
        )
    _checks.array("predicted", predicted, "[L, B] token ids")
    num_steps = target.shape[0]
    if predicted.ndim != 2 or predicted.shape[0] < num_steps or predicted.shape[1] != target.shape[1]:
        raise ValueError(f"predicted: expected shape [L >= {num_steps}, B = {target.shape[1]}], got {predicted.shape}")
    _checks.lengths("target_lengths", target_lengths, num_steps, target.shape[1], shortest=1)
    mask = sequence_mask(target_lengths, num_steps)
    right = (predicted[:num_steps] == target) | ~mask
    count = jnp.sum(mask).astype(jnp.float32)
    return {
        "token_accuracy": jnp.sum(right & mask).astype(jnp.float32) / jnp.maximum(count, 1.0),
        "exact_match": jnp.mean(jnp.all(right, axis=0).astype(jnp.float32)),
    }


def evaluate(
    params: Seq2SeqParams,
    batch: Seq2SeqBatch,
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "tanh",
    unroll: int = 1,
    remat: Remat = None,
    compute_dtype: jnp.dtype | None = None,
) -> dict[str, jax.Array]:
    """The teacher-forced loss (with the options of `loss`), and token accuracy and exact match of greedy
    decoding for T steps (in the parameters' dtype); ``batch.target`` needs T >= 1."""
    _check_steps("batch.target", batch.target, "T, B")
    decoded = greedy_decode(params, batch.source, batch.source_lengths, batch.target.shape[0], activation=activation)
    return {
        "loss": loss(params, batch, activation=activation, unroll=unroll, remat=remat, compute_dtype=compute_dtype),
        **sequence_metrics(decoded.tokens, batch.target, batch.target_lengths),
    }


__all__ = [
    "END", "GO", "PAD", "Decoded", "Seq2SeqBatch", "Seq2SeqParams", "cell_of", "decoder_inputs", "encode",
    "evaluate", "greedy_decode", "init", "loss", "sequence_loss", "sequence_metrics", "teacher_forced",
]  # fmt: skip
