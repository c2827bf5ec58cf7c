"""Training: a `TrainState`, one jitted train step, evaluation, and the loop around them.

The train step is the whole of one update, compiled once:

    loss, grads = value_and_grad(loss of unroll(params, batch))    # BPTT through lax.scan
    updates     = optimizer(grads)                                 # optax.chain(clip, rule)
    params      = params + updates

It returns the loss, the global gradient norm *before* clipping and whether clipping fired.
A step whose loss or gradient is NaN or Inf, or whose update would make a parameter so (a
learning rate past the dtype's range), leaves the state unchanged and is flagged; the
loop then stops with a `TrainingDiverged` error naming that step, so a run never goes on
training on NaN and the last good parameters are kept.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from rnn_jax import _checks, bptt, cells, checkpoint, deep, diagnostics, distributed, seq2seq, tasks
from rnn_jax.config import DEEP_OPTIONS, Config, ModelConfig, check_choices
from rnn_jax.optim import check_unused, clip_fired, learning_rate_schedule, make_optimizer
from rnn_jax.unroll import check_backward, remat_chunk, resolve_projections, unroll

DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}

# Tasks whose target at step t is the input at step t + 1: a backward direction would read the answer.
NEXT_STEP_TASKS = ("xor", "shakespeare", "sunspots")
# Folded into the seed's key for the dropout masks, so that the keys of the parameters and batches
# (`_keys`) are split exactly as before; step t's masks come from fold_in(dropout key, t).
_DROPOUT_STREAM = 0x64726F70  # "drop"


class TrainState(NamedTuple):
    """Everything that changes from one step to the next."""

    step: jax.Array  # [] int32: updates applied so far
    params: Any  # the cell's Params pytree (ElmanParams for the Elman network)
    opt_state: optax.OptState


class StepMetrics(NamedTuple):
    """What one train step reports (scalars)."""

    loss: jax.Array  # the loss on the step's batch, before the update
    grad_norm: jax.Array  # global L2 norm of the gradient, before clipping
    clipped: jax.Array  # bool: clipping changed the gradient
    finite: jax.Array  # bool: loss, gradient and updated parameters were finite, so the update was applied


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or Inf; ``step`` is the first such step (1-based).

    ``params`` holds the last good parameters (those after step ``step - 1``). The message's advice reads ``clip``
    (the run's `OptimConfig.clip`; None: unknown) and whether the step was the first.
    """

    def __init__(self, step: int, loss: float, grad_norm: float, params: Any = None, clip: str | None = None):
        self.step, self.loss, self.grad_norm, self.params = step, loss, grad_norm, params
        if step == 1:  # no update applied yet: the initialisation (or the sequence length) is the cause
            advice = (
                "The initial parameters already give a non-finite loss or gradient (no update had been applied): "
                "a smaller initial recurrent weight (--recurrent-scale, --spectral-radius, --recurrent-init) or a "
                "shorter --seq-len keeps the states finite."
            )
        elif clip in ("value", "global_norm"):
            advice = "Try a smaller --learning-rate or --clip-threshold."
        else:
            advice = "Try a smaller --learning-rate or gradient clipping (--clip global_norm)."
        super().__init__(
            f"training diverged at step {step}: loss = {loss}, gradient norm = {grad_norm}. "
            f"The update of that step was not applied; the parameters are those after step {step - 1}. {advice}"
        )


class _Stop(Exception):
    """Raised inside the training loop, at the end of a step, when a stop was requested (`_stop_requests`)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped the run at the end of update ``step``.

    ``saved``: whether a checkpoint of that step is in the run's directory (``--resume`` continues from it, to the
    result of a run never stopped); ``signal_number``: the signal; ``params``: the parameters after ``step``.
    A KeyboardInterrupt, so that code that does not know it still stops as on Ctrl-C.
    """

    def __init__(self, step: int, saved: bool, signal_number: int, params: Any = None):
        self.step, self.saved, self.signal_number, self.params = step, saved, signal_number, params
        where = "saved a checkpoint of it" if saved else "no checkpoint of it was saved (no output directory)"
        super().__init__(f"interrupted after step {step}; {where}")


@contextlib.contextmanager
def _stop_requests():
    """A list that the first SIGINT or SIGTERM appends its signal number to while the block runs, so that the
    training loop stops at the end of a step (a consistent position to save) instead of inside one; a second
    signal stops at once (KeyboardInterrupt). Outside the main thread, where Python cannot handle signals, the
    list stays empty and signals act as they would; an ignored signal stays ignored."""
    requests: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requests
        return

    def handler(number, frame):
        if requests:
            raise KeyboardInterrupt
        requests.append(number)

    previous = {  # a signal the process ignores (SIGINT in a shell's background job) stays ignored
        number: signal.signal(number, handler)
        for number in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(number) is not signal.SIG_IGN
    }
    try:
        yield requests
    finally:
        for number, action in previous.items():
            signal.signal(number, action)


# ------------------------------------------------------------------ sequence to sequence
# A task with ``seq2seq = True`` (tasks.Numbers) has `seq2seq.Seq2SeqBatch`es, and its model is the
# encoder-decoder of `rnn_jax.seq2seq`: init, loss and evaluate below come from there; the loop is the same.


def is_seq2seq(task: tasks.Task) -> bool:
    """Whether ``task`` is a sequence-to-sequence task, trained as `rnn_jax.seq2seq`'s encoder-decoder."""
    return getattr(task, "seq2seq", False) is True


def _compute_dtype(config: ModelConfig) -> jnp.dtype | None:
    """The unroll's compute dtype for ``config.precision`` (None: the parameters' own).

    Raises:
      ValueError: for mixed precision with parameters other than float32.
    """
    if config.precision == "float32":
        return None
    if config.dtype != "float32":
        raise ValueError(f"precision: {config.precision!r} keeps float32 parameters; needs dtype float32, "
                         f"got {config.dtype!r}")  # fmt: skip
    return DTYPES[config.precision]


def _seq2seq_options(config: ModelConfig) -> dict[str, Any]:
    if config.backward in ("bptt", "fused"):
        raise ValueError("backward: the encoder-decoder is differentiated by autodiff; use 'fast' or 'autodiff'")
    if config.projections != "auto":
        raise ValueError(
            f"projections: the choice of projections is an option of the single-layer unroll; the encoder-decoder "
            f"computes its products in the step; use 'auto', got {config.projections!r}"
        )
    if config.is_deep:
        raise ValueError(
            "layers, bidirectional, residual, dropout, recurrent_dropout, learn_initial_state: the encoder-decoder "
            "(numbers task) has one layer of each cell; leave these options at their defaults"
        )
    return {"activation": config.activation, "unroll": config.unroll, "remat": config.remat,
            "compute_dtype": _compute_dtype(config)}  # fmt: skip


def _shard_batch(task: tasks.Task, batch, mesh, replicate_uneven: bool = False):
    """``batch`` split along B over ``mesh`` (`distributed.shard_batch`; a `seq2seq.Seq2SeqBatch`'s [S, B] and
    [T, B] along axis 1, its lengths along axis 0); with ``replicate_uneven``, replicated when B does not divide."""
    if not is_seq2seq(task):
        return (distributed.shard_or_replicate if replicate_uneven else distributed.shard_batch)(batch, mesh)
    if replicate_uneven and batch.source_lengths.shape[0] % mesh.size:
        return distributed.replicate(batch, mesh)
    distributed.check_batch_size(batch.source_lengths.shape[0], mesh)
    source, target = distributed.shard((batch.source, batch.target), mesh, axis=1)
    lengths = distributed.shard((batch.source_lengths, batch.target_lengths), mesh, axis=0)
    return seq2seq.Seq2SeqBatch(source, lengths[0], target, lengths[1])


# ------------------------------------------------------------------


def init_params(config: ModelConfig, task: tasks.Task, key: jax.Array) -> Any:
    """The model's initial parameters for ``task``'s input and output sizes."""
    cell = cells.get(config.model)
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {config.dtype!r}")
    if is_seq2seq(task):  # the encoder-decoder, embeddings of size H
        return seq2seq.init(
            key, config.model, task.input_size, task.output_size, config.hidden, input_init=config.input_init,
            recurrent_init=config.recurrent_init, recurrent_scale=config.recurrent_scale,
            spectral_radius=config.spectral_radius, dtype=DTYPES[config.dtype],
        )  # fmt: skip
    if config.is_deep:
        return deep.init(
            key, cell, task.input_size, config.hidden, task.output_size, layers=config.layers,
            bidirectional=config.bidirectional, learn_initial_state=config.learn_initial_state,
            input_init=config.input_init, recurrent_init=config.recurrent_init,
            recurrent_scale=config.recurrent_scale, spectral_radius=config.spectral_radius, dtype=DTYPES[config.dtype],
        )  # fmt: skip
    return cell.init(
        key,
        task.input_size,
        config.hidden,
        task.output_size,
        input_init=config.input_init,
        recurrent_init=config.recurrent_init,
        recurrent_scale=config.recurrent_scale,
        spectral_radius=config.spectral_radius,
        dtype=DTYPES[config.dtype],
    )


def _deep_options() -> str:
    return ", ".join(DEEP_OPTIONS)


def check_model(config: ModelConfig, task_name: str | None = None) -> None:
    """Refuses, naming the option, what the deep options (`rnn_jax.deep`) cannot combine with, and what the unroll
    would refuse only once the first step is traced (after a run had set up its directory).

    Raises:
      ValueError: for a choice that is none of its field's (`rnn_jax.config.check_choices`), a hidden size or
        ``unroll`` that is not a positive integer, a bad ``remat`` text (here, before anything is traced), mixed
        precision with parameters other than float32, ``backward="bptt"`` or ``"fused"`` with remat, mixed
        precision or a projection form it does not compute (`rnn_jax.unroll.check_backward`), a bad layer count or
        dropout rate, ``residual`` without a second layer, ``backward="bptt"`` or ``"fused"`` with a deep network, or a
        bidirectional network on a next-step prediction task (its backward direction would see the target). A
        deep network takes ``remat``, ``precision`` and ``projections`` (`rnn_jax.deep.apply`).
    """
    check_choices(config)
    _checks.positive_int("hidden", config.hidden)  # the option's own name (the cells' init says hidden_size)
    _checks.positive_int("unroll", config.unroll)
    remat_chunk(config.remat, 1)
    compute_dtype = _compute_dtype(config)
    resolve_projections(config.projections, config.remat is None and config.precision == "float32")
    if not config.is_deep:  # what the unroll refuses only once traced (after a run had set up its directory)
        cell = cells.get(config.model)
        check_backward(config.backward, cell, config.projections, config.remat, compute_dtype, config.hidden)
        return
    if isinstance(config.layers, bool) or not isinstance(config.layers, int) or config.layers < 1:
        raise ValueError(f"layers: expected a positive integer, got {config.layers!r}")
    deep.check_residual(config.residual, config.layers)
    deep.check_rate("dropout", config.dropout)
    deep.check_rate("recurrent_dropout", config.recurrent_dropout)
    if config.variational_dropout and config.dropout == 0:  # it alone made a deep network that drops nothing
        raise ValueError(
            "variational_dropout: draws --dropout's input and output masks once per sequence; needs dropout > 0"
        )
    if config.projections == "hoisted_readout":
        raise ValueError(
            "projections: 'hoisted_readout' is a form of the single-layer unroll; a deep network takes 'auto', "
            "'in_step' or 'hoisted'"
        )
    if config.backward in ("bptt", "fused"):
        raise ValueError(
            f"backward: {config.backward!r} is derived for the single-layer network; the deep options "
            f"({_deep_options()}) train with 'autodiff' or 'fast'"
        )
    if config.bidirectional and task_name in NEXT_STEP_TASKS:
        raise ValueError(
            f"bidirectional: the {task_name!r} task predicts the next input, which the backward direction would "
            f"read (it leaks the future); bidirectional networks fit the tasks that read a whole sequence first "
            f"(adding, temporal_order, japanese-vowels)"
        )


def forward(
    config: ModelConfig, task: tasks.Task, params: Any, batch: tasks.Batch, key: jax.Array | None = None
) -> jax.Array:
    """The outputs y, [T, B, O], of the model on ``batch`` (state frozen past each length).

    ``key`` draws the dropout masks of a deep model (training); None (evaluation) turns dropout off.
    ``config.remat`` and ``config.precision`` select rematerialisation and mixed precision
    (`rnn_jax.unroll.unroll`'s ``remat`` and ``compute_dtype``); the outputs are in ``config.dtype``.
    """
    compute_dtype = _compute_dtype(config)
    if config.is_deep:
        return deep.apply(
            params, tasks.features(task, batch.inputs, DTYPES[config.dtype]), cell=config.model,
            activation=config.activation, lengths=batch.lengths, key=key, dropout=config.dropout,
            recurrent_dropout=config.recurrent_dropout, variational=config.variational_dropout,
            residual=config.residual, unroll=config.unroll, remat=config.remat, compute_dtype=compute_dtype,
            projections=config.projections,
        ).outputs  # fmt: skip
    run = unroll(
        params,
        tasks.features(task, batch.inputs, DTYPES[config.dtype]),
        activation=config.activation,
        lengths=batch.lengths,
        unroll=config.unroll,
        backward=config.backward,
        cell=cells.get(config.model),
        remat=config.remat,
        compute_dtype=compute_dtype,
        projections=config.projections,
    )
    return run.outputs


def make_loss_fn(config: ModelConfig, task: tasks.Task) -> Callable[[Any, tasks.Batch], jax.Array]:
    """``params, batch, key=None -> loss``: the task's loss of the unrolled model (``key``: dropout masks)."""
    if is_seq2seq(task):
        options = _seq2seq_options(config)
        return lambda params, batch, key=None: seq2seq.loss(params, batch, **options)  # no dropout: key unused

    def loss_fn(params: Any, batch: tasks.Batch, key: jax.Array | None = None) -> jax.Array:
        return tasks.loss(task.loss, forward(config, task, params, batch, key), batch)

    return loss_fn


def _apply_update(
    config: Config, optimizer, state: TrainState, loss: jax.Array, grads
) -> tuple[TrainState, StepMetrics]:
    """grad -> clip -> update -> apply; a non-finite loss or gradient leaves ``state`` unchanged."""
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Only the loss and the gradient norm decide: testing the updated parameters as well (that an update did not
    # overflow them) took the train step at (1,1000,1,32,1) from 0.95 to 1.53 ms on the 2-core Xeon (2026-11-30,
    # `rnn-jax bench --config 1,1000,1,32,1 --impl rnn-jax-fast --impl lower-bound --repeats 15`; the norm of the
    # updates instead: 1.17 ms); the learning rate and clip threshold are held below float32's largest instead.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    stepped = TrainState(state.step + 1, params, opt_state)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), stepped, state)
    return new_state, StepMetrics(loss, grad_norm, clip_fired(config.optim, grads), finite)


def make_train_step(
    config: Config, task: tasks.Task, optimizer: optax.GradientTransformation, mesh: Mesh | None = None
):
    """The jitted ``(state, batch) -> (state, StepMetrics)``, with ``state`` donated.

    With dropout, step t's masks are drawn from ``fold_in(dropout_key(seed), t)``. With a ``mesh``
    of several devices (the batch split along B over it, `rnn_jax.distributed`), the gradient is
    `distributed.value_and_grad`'s: one all-reduce after the backward pass. Dropout and
    encoder-decoder models leave it to GSPMD instead (their masks are drawn for the whole batch,
    their losses are not `tasks.loss`).
    """
    loss_fn = make_loss_fn(config.model, task)
    model = config.model
    with_dropout = model.is_deep and (model.dropout > 0 or model.recurrent_dropout > 0)
    base = dropout_key(config.run.seed) if with_dropout else None
    if mesh is not None and mesh.size > 1 and base is None and not is_seq2seq(task):
        sharded = distributed.value_and_grad(loss_fn, mesh)

        def value_and_grad(params: Any, batch: tasks.Batch, key: None) -> tuple[jax.Array, Any]:
            return sharded(params, batch)  # no dropout, so no key

    else:
        value_and_grad = jax.value_and_grad(loss_fn)

    def train_step(state: TrainState, batch: tasks.Batch) -> tuple[TrainState, StepMetrics]:
        key = None if base is None else jax.random.fold_in(base, state.step)
        loss, grads = value_and_grad(state.params, batch, key)
        return _apply_update(config, optimizer, state, loss, grads)

    return jax.jit(train_step, donate_argnums=0)


def make_tbptt_step(
    config: Config,
    task: tasks.Task,
    optimizer: optax.GradientTransformation,
    k1: int,
    k2: int,
    mesh: Mesh | None = None,
):
    """The jitted TBPTT(k1, k2) update ``(state, entering, padded_inputs, padded_targets, index) ->
    (state, carried, StepMetrics)``: window ``index`` of a `bptt.pad_stream`-ed stream, its loss on
    the last k1 steps, gradients back at most k2 steps from the carried (fixed) entering state.

    With a ``mesh`` of several devices (the streams and the carried state split along B), each
    device differentiates its own streams and one all-reduce averages the (loss, gradient) pairs
    (`distributed.mean_over_devices`; every stream scores the same k1 steps, so the average is exact).
    """
    cell = cells.get(config.model.model)
    if config.model.remat is not None or config.model.precision != "float32":
        raise ValueError(
            "remat, precision: apply to full-BPTT training, not to TBPTT's k2-step windows; got "
            f"remat={config.model.remat!r}, precision={config.model.precision!r} with tbptt_k1={k1}"
        )

    def window_gradients(params, entering, padded_inputs, padded_targets, index):
        inputs = tasks.features(task, bptt.window(padded_inputs, index, k1, k2), DTYPES[config.model.dtype])
        targets = bptt.window(padded_targets, index, k1, k2)
        valid, scored = bptt.window_masks(index, k1, k2, inputs.shape[1])
        objective = functools.partial(
            bptt.truncated_loss, k1=k1, loss=task.loss, activation=config.model.activation,
            backward=config.model.backward, cell=cell, unroll_factor=config.model.unroll,
            projections=config.model.projections,
        )  # fmt: skip
        (loss, carried), grads = jax.value_and_grad(objective, has_aux=True)(
            params, entering, inputs, targets, valid, scored
        )
        return loss, carried, grads

    if mesh is not None and mesh.size > 1:
        window_gradients = distributed.mean_over_devices(window_gradients, mesh)

    def tbptt_step(state, entering, padded_inputs, padded_targets, index):
        loss, carried, grads = window_gradients(state.params, entering, padded_inputs, padded_targets, index)
        new_state, metrics = _apply_update(config, optimizer, state, loss, grads)
        carried = jax.tree.map(lambda c, e: jnp.where(metrics.finite, c, e), carried, entering)
        return new_state, carried, metrics

    return jax.jit(tbptt_step, donate_argnums=0)


def make_evaluate(config: ModelConfig, task: tasks.Task):
    """The jitted ``(params, batch) -> dict`` of the loss and the task's metrics."""
    if is_seq2seq(task):  # teacher-forced loss; token accuracy and exact match of greedy decoding
        return jax.jit(functools.partial(seq2seq.evaluate, **_seq2seq_options(config)))

    def evaluate(params: Any, batch: tasks.Batch) -> dict[str, jax.Array]:
        outputs = forward(config, task, params, batch)
        return {"loss": tasks.loss(task.loss, outputs, batch), **task.metrics(outputs.astype(jnp.float32), batch)}

    return jax.jit(evaluate)


def _keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Independent keys for the initial parameters, the training batches and the held-out set."""
    k_init, k_train, k_eval = jax.random.split(jax.random.key(_checks.seed("seed", seed)), 3)
    return k_init, k_train, k_eval


def dropout_key(seed: int) -> jax.Array:
    """The base key of the dropout masks: its own stream, leaving the split of `_keys` as it was."""
    return jax.random.fold_in(jax.random.key(seed), _DROPOUT_STREAM)


def _recurrent_cell_params(params: Any) -> Any:
    """The cell parameters whose W_s the eval lines report: the model's, a deep model's layer 1 (forward), or an
    encoder-decoder's encoder."""
    if isinstance(params, seq2seq.Seq2SeqParams):
        return params.encoder
    return params.layers[0].forward if isinstance(params, deep.DeepParams) else params


def _floats(tree: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in jax.device_get(tree).items()}


class _Sink:
    """Appends JSON lines to ``workdir/metrics.jsonl`` (or nowhere without a workdir), and with
    ``tensorboard`` their numbers as TensorBoard scalars (``KIND/NAME``) to event files beside it.

    ``resume_after`` (a resumed run's checkpoint step) keeps the train and eval lines up to that step
    and drops the rest, which the resumed run writes again; None starts a new file.
    """

    def __init__(self, workdir: str | None, resume_after: int | None = None, tensorboard: bool = False):
        self.records: list[dict[str, Any]] = []
        self._file = self._events = self._path = None
        if workdir is None:
            return
        os.makedirs(workdir, exist_ok=True)
        path = self._path = os.path.join(workdir, "metrics.jsonl")
        if resume_after is not None and os.path.exists(path):
            with open(path) as f:
                lines = [json.loads(line) for line in f if line.strip()]
            self.records = [r for r in lines if r["step"] <= resume_after and r["kind"] in ("train", "eval")]
            with open(path + ".tmp", "w") as f:
                f.writelines(json.dumps(record) + "\n" for record in self.records)
            os.replace(path + ".tmp", path)
        if tensorboard:
            purge_step = None if resume_after is None else resume_after + 1  # hides what a killed run wrote after
            self._events = _tensorboard_writer()(logdir=workdir, purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self._file is None and self._path is not None:  # opened at the first line: a run that failed before
            self._file = open(self._path, "a")  # noqa: SIM115 (closed in close()); its first step leaves no file
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._events is not None:
            for name, value in record.items():
                if name not in ("kind", "step") and isinstance(value, int | float):
                    self._events.add_scalar(f"{record['kind']}/{name}", value, record["step"])
            self._events.flush()

    def last(self, kind: str) -> dict[str, float]:
        """The numbers of the newest record of ``kind`` ({} when there is none)."""
        found = [r for r in self.records if r["kind"] == kind]
        return {k: v for k, v in found[-1].items() if k not in ("kind", "step")} if found else {}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._events is not None:
            self._events.close()


def _tensorboard_writer():
    """tensorboardX's ``SummaryWriter`` (TensorBoard event files without TensorFlow), or a clear error."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "tensorboard: the event writer needs tensorboardX, which is not installed; "
            "install it with `pip install 'rnn-jax[tensorboard]'` (or `pip install tensorboardX`)"
        ) from error
    return SummaryWriter


def check_config(config: Config) -> tasks.Task:
    """Refuses, before any work, what ``config`` holds that a run could not use: every section's choices and bools
    (`rnn_jax.config.check_choices`), the run's counts and seed, the model (`check_model`), truncated BPTT's
    options, the task's (it is made: returned) and the optimiser's, including options nothing would read
    (`rnn_jax.optim.check_unused`). Needs no output directory: `train_and_evaluate` starts with it, and the
    command line calls it before it prints the run's header.

    Raises:
      ValueError / TypeError: naming the config field.
    """
    run = config.run
    for section in (run, config.task, config.optim):  # the model's in check_model
        check_choices(section)
    for name in ("steps", "eval_every", "eval_batches", "log_every"):
        if not isinstance(getattr(run, name), int) or getattr(run, name) < 1:
            raise ValueError(f"{name}: expected a positive integer, got {getattr(run, name)!r}")
    if not isinstance(config.task.batch_size, int) or config.task.batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {config.task.batch_size!r}")
    _checks.seed("seed", run.seed)
    if run.tbptt_reset_every is not None:  # read by the TBPTT stream only; 0 read as "never"
        _checks.positive_int("tbptt_reset_every", run.tbptt_reset_every)
        if run.tbptt_k1 is None:
            raise ValueError("tbptt_reset_every: resets the state carried by truncated BPTT; needs tbptt_k1 as well")
    check_model(config.model, config.task.task)
    if config.model.is_deep and run.tbptt_k1 is not None:
        raise ValueError(
            f"tbptt_k1: truncated BPTT runs the single-layer network only; drop the deep options ({_deep_options()}) "
            "or --tbptt-k1"
        )
    task = tasks.make(config.task)
    check_unused(config.optim)
    make_optimizer(config.optim, run.steps)
    return task


def train_and_evaluate(config: Config, workdir: str | None = None) -> dict[str, Any]:
    """Trains ``config``'s model on its task and evaluates it on a held-out set.

    Every ``log_every`` steps a line ``{"kind": "train", "step", "loss", "grad_norm",
    "clip_fraction", "learning_rate"}`` (means over the steps since the last line), and every
    ``eval_every`` steps and at the end a line ``{"kind": "eval", "step", "loss", ...metrics,
    "recurrent_largest_singular_value", "recurrent_spectral_radius"}`` (of W_s for Elman, of the
    first gate block of W_s for LSTM (input gate i) and GRU (reset gate r); see
    `rnn_jax.diagnostics.recurrent_spectrum`), are written to ``workdir/metrics.jsonl``; the
    returned summary is also written to ``workdir/summary.json``. The run is a deterministic function of ``config``.

    With a ``workdir``, the training position is checkpointed to ``workdir/checkpoints`` every
    ``checkpoint_every`` steps and at the end (`rnn_jax.checkpoint`); with ``resume`` the run goes on
    from the newest checkpoint there (from step 0 when there is none), to the same final parameters,
    bit for bit, as a run that was never stopped, and metrics.jsonl continues from that step.

    Returns:
      The summary: status, final train and eval metrics, the task's trivial baseline,
      steps per second, compile time, the parameters (``"params"``, not written to JSON)
      and the config.

    Raises:
      TrainingDiverged: when the loss or gradient becomes NaN or Inf (after the metrics and a
        summary with ``"status": "diverged"`` have been written).
      TrainingInterrupted: on SIGINT (Ctrl-C) or SIGTERM, at the end of the step under way, after the metrics up
        to it, a checkpoint of it (with a ``workdir``) and a summary with ``"status": "interrupted"`` have been
        written; ``resume`` continues from there. A second signal stops at once.
      checkpoint.CheckpointError: ``resume`` found a damaged or incompatible checkpoint, or a new
        run's ``workdir`` already holds checkpoints.
    """
    from rnn_jax import progress as progress_lib  # the only UI piece; kept out of import time

    run = config.run
    task = check_config(config)
    if run.resume and workdir is None:
        raise ValueError("resume: needs the output directory of the run to continue")
    _check_outputs(workdir)  # before any work
    _check_fresh(workdir, run.resume)
    if run.tensorboard:
        if workdir is None:
            raise ValueError("tensorboard: needs an output directory for the event files")
        _tensorboard_writer()  # fails now, not after the compilation, when tensorboardX is missing
    mesh = distributed.make_mesh(run.devices)  # data parallel: each batch split over the mesh, the state replicated
    distributed.check_batch_size(config.task.batch_size, mesh)
    k_init, k_train, k_eval = _keys(run.seed)
    params = init_params(config.model, task, k_init)
    dtype = DTYPES[config.model.dtype]
    optimizer = make_optimizer(config.optim, run.steps)
    schedule_lr = learning_rate_schedule(config.optim, run.steps)
    state = distributed.replicate(TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params)), mesh)
    evaluate = make_evaluate(config.model, task)
    if hasattr(task, "eval_batch"):  # real data: the validation split periodically, the test split at the end
        eval_set = task.eval_batch("validation", dtype)
    else:
        _check_held_out_memory(config, task, evaluate, state.params, k_eval, dtype, mesh)
        eval_set = task.batch(k_eval, config.task.batch_size * run.eval_batches, dtype)
    eval_set = _shard_batch(task, eval_set, mesh, replicate_uneven=True)
    building = time.perf_counter()
    advance, carried = _make_advance(config, task, optimizer, params, k_train, dtype, mesh)  # compiles the step
    step_compile_s = time.perf_counter() - building
    initial = checkpoint.Position(state, carried, jax.random.key_data(k_train))
    checkpoints, position = checkpoint.open_run(workdir, config, initial)  # with --resume: the newest checkpoint
    # a restored position comes back on one device: place it on the mesh again
    state, carried = distributed.replicate(position.state, mesh), distributed.shard(position.carried, mesh, 0)
    resumed_from = int(state.step)

    sink = _Sink(workdir, resume_after=resumed_from if run.resume else None, tensorboard=run.tensorboard)
    summary: dict[str, Any] = {"status": "running", "config": config.to_dict(), "baseline": task.baseline()}
    if run.resume:
        summary["resumed_from_step"] = resumed_from
    pending: list[StepMetrics] = []
    last_train: dict[str, float] = sink.last("train")
    # the eval lines also carry the recurrent spectrum, which final_eval leaves out
    last_eval: dict[str, float] = {k: v for k, v in sink.last("eval").items() if not k.startswith("recurrent_")}

    def flush(step: int) -> None:
        nonlocal last_train
        fetched = jax.device_get(pending)
        first_step = step - len(fetched) + 1
        for offset, metrics in enumerate(fetched):
            if not metrics.finite:
                sink.write(
                    {
                        "kind": "diverged",
                        "step": first_step + offset,
                        "loss": float(metrics.loss),
                        "grad_norm": float(metrics.grad_norm),
                    }
                )
                raise TrainingDiverged(
                    first_step + offset, float(metrics.loss), float(metrics.grad_norm), state.params, config.optim.clip
                )
        last_train = {
            "loss": float(np.mean([m.loss for m in fetched])),
            "grad_norm": float(np.mean([m.grad_norm for m in fetched])),
            "clip_fraction": float(np.mean([m.clipped for m in fetched])),
            "learning_rate": float(schedule_lr(step - 1)),
        }
        sink.write({"kind": "train", "step": step, **last_train})
        pending.clear()

    def run_eval(step: int) -> None:
        nonlocal last_eval
        last_eval = _floats(evaluate(state.params, eval_set))
        spectrum = diagnostics.recurrent_spectrum(_recurrent_cell_params(state.params))  # W_s (block i / r)
        recurrent = {f"recurrent_{name}": value for name, value in spectrum.items()}
        sink.write({"kind": "eval", "step": step, **last_eval, **recurrent})

    def stop_here() -> None:
        """Writes the lines up to the last finished step (as before a checkpoint; a divergence among them is
        reported as such), then leaves the loop for the interrupted run's ending."""
        if pending:
            flush(int(state.step))
        raise _Stop

    bar = progress_lib.Bar(run.steps, enabled=run.progress, description=f"train {task.name}")
    summary["compile_s"] = None  # None (JSON null) until a step has run
    saved_step = resumed_from if run.resume else None
    start = time.perf_counter()
    try:
        with bar, _stop_requests() as stop:  # a stop asked for during the last step lets the run complete
            for step in range(resumed_from + 1, run.steps + 1):
                if stop:
                    stop_here()
                state, carried, metrics = advance(state, carried, step)
                if step == resumed_from + 1:  # the first step includes compilation: time it apart
                    jax.block_until_ready(metrics)
                    summary["compile_s"] = step_compile_s + time.perf_counter() - start
                    start = time.perf_counter()
                pending.append(metrics)
                save_checkpoint = checkpoints is not None and checkpoints.due(step, run.steps)
                if step % run.log_every == 0 or step == run.steps or save_checkpoint:
                    flush(step)  # also at a checkpoint, so that a resumed run writes the same lines
                    bar.update(step, loss=last_train["loss"])
                if step % run.eval_every == 0 or step == run.steps:
                    run_eval(step)
                    bar.update(step, eval_loss=last_eval["loss"])
                if save_checkpoint:  # last: every line up to this step is written before it
                    checkpoints.save(checkpoint.Position(state, carried, position.key))
                    saved_step = step
        elapsed = time.perf_counter() - start
        if hasattr(task, "eval_batch"):  # real data: the held-out test split, once, at the end
            test_set = _shard_batch(task, task.eval_batch("test", dtype), mesh, replicate_uneven=True)
            summary["final_test"] = _floats(evaluate(state.params, test_set))
            sink.write({"kind": "test", "step": run.steps, **summary["final_test"]})
    except TrainingDiverged as error:
        summary.update(status="diverged", diverged_at_step=error.step, final_eval=last_eval)
        write_summary(workdir, summary)
        raise
    except _Stop:
        stopped = int(state.step)
        if checkpoints is not None and saved_step != stopped:
            checkpoints.save(checkpoint.Position(state, carried, position.key))
            saved_step = stopped
        summary.update(status="interrupted", interrupted_at_step=stopped, final_train=last_train, final_eval=last_eval)
        write_summary(workdir, summary)
        raise TrainingInterrupted(stopped, saved_step == stopped, stop[0], state.params) from None
    finally:
        sink.close()
        if checkpoints is not None:
            checkpoints.close()
    steps_run = run.steps - resumed_from
    summary.update(
        status="completed",
        steps=run.steps,
        final_train=last_train,
        final_eval=last_eval,
        steps_per_second=(steps_run - 1) / elapsed if steps_run > 1 else None,  # step 1 is in compile_s
        train_seconds=elapsed,
    )
    if steps_run == 0:  # a finished run resumed to its own length: keep the timing of the run that trained it
        summary.update({k: v for k, v in stored_summary(workdir).items() if k in _TIMING})
    write_summary(workdir, summary)
    return {**summary, "params": state.params, "records": sink.records}


def _memory_limit() -> int:
    """Bytes of memory a compiled step can use: the default device's allocator limit on an accelerator, the
    machine's physical memory on a CPU (where JAX's arrays are host memory)."""
    stats = jax.devices()[0].memory_stats() or {}  # None on a CPU
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _check_memory(argument: str, what: str, advice: str, mesh: Mesh, jitted, *args: Any) -> None:
    """Refuses a jitted call whose compiled program cannot fit in memory, before anything is allocated: ``args``
    may be shapes (`jax.ShapeDtypeStruct`, placed by `distributed.shard`/`replicate`), and XLA's memory analysis of
    the program compiled for them (its arguments, outputs and temporaries, less what a donated argument reuses) is
    compared with `_memory_limit`. The compilation is JAX's cached one, so the first real call does not compile
    again. On a CPU the devices of ``mesh`` share the host's memory, so each device's figure counts once per device.
    (A batch past the host's memory got the process killed by the kernel, without a word.)

    Raises:
      ValueError: naming ``argument``, the size of ``what`` and the limit, with ``advice``.
    """
    stats = jitted.lower(*args).compile().memory_analysis()
    if stats is None:  # a backend without the analysis: nothing to compare
        return
    needed = (
        stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )  # fmt: skip
    if mesh.devices.flat[0].platform == "cpu":
        needed *= mesh.size
    limit = _memory_limit()
    if needed > limit:
        raise ValueError(
            f"{argument}: {what} needs {needed / 1e9:.3g} GB (XLA's memory analysis of the compiled program: its "
            f"arrays, the states its unroll keeps and its temporaries), more than the {limit / 1e9:.3g} GB of "
            f"memory here; {advice}"
        )


def _check_held_out_memory(config: Config, task: tasks.Task, evaluate, params, key: jax.Array, dtype, mesh) -> None:
    """`_check_memory` of the evaluation on the held-out set of ``eval_batches`` x ``batch_size`` sequences (one
    call), from its shapes: the set itself is not built."""
    rows = config.task.batch_size * config.run.eval_batches
    held_out = _shard_batch(task, jax.eval_shape(lambda k: task.batch(k, rows, dtype), key), mesh, True)
    _check_memory(
        "eval_batches",
        f"the held-out set of eval_batches {config.run.eval_batches} x batch_size {config.task.batch_size} = "
        f"{rows} sequences, evaluated at once,",
        "use a smaller eval_batches",
        mesh, evaluate, params, held_out,
    )  # fmt: skip


def _state_shapes(optimizer: optax.GradientTransformation, params: Any, mesh: Mesh) -> TrainState:
    """The shapes of the replicated `TrainState` that `train_and_evaluate` starts from (nothing allocated)."""
    shapes = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)), params)
    return distributed.replicate(shapes, mesh)


def _make_advance(config: Config, task: tasks.Task, optimizer, params, key: jax.Array, dtype, mesh=None):
    """``advance(state, carried, step) -> (state, carried, StepMetrics)``: one update, on a fresh batch
    ``fold_in(key, step)`` or on window ``step`` of the stream, and the initial ``carried``.

    ``carried`` is the state entering the next TBPTT window, and ``()`` on the random-batch path; with
    ``state.step`` it is the whole position of the data, which is what a checkpoint saves. Batches (and a
    TBPTT stream and carry) are split along B over ``mesh`` (`rnn_jax.distributed`; by default the
    mesh of ``config.run.devices``).
    """
    run = config.run
    mesh = distributed.make_mesh(run.devices) if mesh is None else mesh
    if run.tbptt_k1 is None:
        if run.tbptt_k2 is not None:
            raise ValueError("tbptt_k2: needs tbptt_k1 as well (the number of steps per update)")
        train_step = make_train_step(config, task, optimizer, mesh)
        make_batch = jax.jit(lambda k: task.batch(k, config.task.batch_size, dtype))
        _check_memory(
            "batch_size",
            f"one train step on a batch of {config.task.batch_size} sequences",
            "use a smaller batch_size or seq_len, or train with remat (fewer of the unroll's states kept)",
            mesh, train_step, _state_shapes(optimizer, params, mesh),
            _shard_batch(task, jax.eval_shape(make_batch, key), mesh),
        )  # fmt: skip

        def advance_on_batches(state, carried, step):
            batch = _shard_batch(task, make_batch(jax.random.fold_in(key, step)), mesh)
            state, metrics = train_step(state, batch)
            return state, carried, metrics

        return advance_on_batches, ()

    if is_seq2seq(task):
        raise ValueError(
            f"tbptt_k1: truncated BPTT needs a stream; the {task.name!r} task is sequence to sequence (each "
            "source is read whole before its target is written); drop --tbptt-k1"
        )
    k1, k2 = bptt.check_truncation(run.tbptt_k1, run.tbptt_k2 or run.tbptt_k1)
    if not hasattr(task, "stream"):
        raise ValueError(f"tbptt_k1: the {task.name!r} task has no stream to truncate; streaming tasks: xor")

    def padded_stream(key):
        stream = task.stream(key, config.task.batch_size, run.steps * k1, dtype)
        return bptt.pad_stream(stream.inputs, k1, k2), bptt.pad_stream(stream.targets, k1, k2)

    tbptt_step = make_tbptt_step(config, task, optimizer, k1, k2, mesh)
    zero_state = distributed.shard(cells.get(config.model.model).initial_state(params, config.task.batch_size), mesh, 0)
    _check_memory(
        "batch_size",
        f"truncated BPTT on {config.task.batch_size} streams of steps x tbptt_k1 = {run.steps * k1} steps, "
        "held whole,",
        "use a smaller batch_size or fewer steps",
        mesh, tbptt_step, _state_shapes(optimizer, params, mesh), zero_state,
        *distributed.shard(jax.eval_shape(padded_stream, key), mesh, axis=1),
        jax.ShapeDtypeStruct((), jnp.int32),
    )  # fmt: skip
    padded_inputs, padded_targets = distributed.shard(padded_stream(key), mesh, axis=1)  # [N, B, ...]

    def advance_on_windows(state, carried, step):
        if run.tbptt_reset_every and (step - 1) % run.tbptt_reset_every == 0:
            carried = zero_state  # the net must also learn to start from s_0, as it does at evaluation
        return tbptt_step(state, carried, padded_inputs, padded_targets, jnp.asarray(step - 1, jnp.int32))

    return advance_on_windows, zero_state


def load_trained(workdir: str) -> tuple[Config, Any]:
    """The config (from ``workdir/summary.json``) and the parameters of the newest checkpoint of a run.

    Raises:
      FileNotFoundError: when ``workdir`` holds no summary.json.
      ValueError: when its summary.json is damaged (`stored_summary`).
      checkpoint.CheckpointError: when it holds no readable checkpoint.
    """
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not found; --checkpoint expects the --out directory of an rnn-jax train run")
    config = Config.from_dict(stored_summary(workdir)["config"])
    task = tasks.make(config.task)
    k_init, k_train, _ = _keys(config.run.seed)
    params = init_params(config.model, task, k_init)
    optimizer = make_optimizer(config.optim, config.run.steps)
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    carried = (
        ()
        if config.run.tbptt_k1 is None
        else cells.get(config.model.model).initial_state(params, config.task.batch_size)
    )
    template = checkpoint.Position(state, carried, jax.random.key_data(k_train))
    run, directory = config.run, checkpoint.directory_of(workdir)
    position = None
    if os.path.isdir(directory):
        checkpoints = checkpoint.Checkpoints(
            directory, config, every=run.checkpoint_every, keep=run.keep_checkpoints, resume=True, read_only=True
        )
        try:
            position = checkpoints.restore_latest(template)
        finally:
            checkpoints.close()
    if position is None:
        raise checkpoint.CheckpointError(f"{directory}: no checkpoint to load")
    return config, position.state.params


# The files a run writes into its directory: `train_and_evaluate`'s (a temporary file is renamed to the first two),
# then `rnn_jax.report.finish`'s: the loss curve, and by task a figure (sunspots, japanese-vowels) or a sample.
OUTPUT_FILES = (
    "metrics.jsonl", "summary.json", "metrics.jsonl.tmp", "summary.json.tmp",
    "loss_curve.png", "forecast.png", "confusion_matrix.png", "sample.txt",
)  # fmt: skip


def _check_outputs(workdir: str | None) -> None:
    """Refuses, before any work, a ``workdir`` that is not a directory, a ``workdir/checkpoints`` that is not one,
    or anything but a regular file where the run writes one of `OUTPUT_FILES` (those failed after the training, in
    the first checkpoint save or in the plot).

    Raises:
      ValueError: naming ``out`` and the path.
    """
    if workdir is None:
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"out: {workdir} exists and is not a directory; expected a directory to write the run into")
    saved = checkpoint.directory_of(workdir)
    if os.path.lexists(saved) and not os.path.isdir(saved):
        raise ValueError(
            f"out: {saved} is not a directory; the run keeps its checkpoints there: move it, or choose another --out"
        )
    for name in OUTPUT_FILES:
        path = os.path.join(workdir, name)
        if os.path.exists(path) and not os.path.isfile(path):
            kind = "a directory" if os.path.isdir(path) else "not a regular file"
            raise ValueError(
                f"out: {path} is {kind}; the run writes its file {name} there: move it, or choose another --out"
            )


def _check_fresh(workdir: str | None, resume: bool) -> None:
    """Refuses a new run (not ``resume``) in a ``workdir`` that holds an earlier run's metrics.jsonl or summary.json
    (a run that diverged or was stopped before its first checkpoint left no checkpoints to refuse it by, and its
    metrics were overwritten without a word). An empty file is no earlier run: a run that failed before its first
    step (an older rnn-jax made metrics.jsonl at the start) is rerun in its directory."""
    if workdir is None or resume:
        return
    saved = checkpoint.directory_of(workdir)
    if os.path.isdir(saved) and any(name.isdigit() for name in os.listdir(saved)):
        return  # `checkpoint.open_run` refuses it, naming the latest checkpoint
    earlier = [name for name in ("metrics.jsonl", "summary.json") if _non_empty(os.path.join(workdir, name))]
    if earlier:
        raise checkpoint.CheckpointError(
            f"{workdir} already holds an earlier run ({', '.join(earlier)}): pass --resume to continue it, or choose "
            "another --out"
        )


def _non_empty(path: str) -> bool:
    return os.path.isfile(path) and os.path.getsize(path) > 0


_TIMING = ("compile_s", "steps_per_second", "train_seconds")


def stored_summary(workdir: str | None) -> dict[str, Any]:
    """``workdir/summary.json`` as written by the last run there ({} when there is none).

    Raises:
      ValueError: naming the file, when it cannot be read or is not a train summary (a JSON object whose
        ``"config"`` is a `Config`'s, as `Config.from_dict` reads it).
    """
    path = os.path.join(workdir, "summary.json") if workdir is not None else None
    if path is None or not os.path.exists(path):
        return {}
    expected = f"{path}: expected an rnn-jax train summary (a JSON object with 'config'), got"
    try:
        with open(path) as f:
            summary = json.load(f)
    except OSError as error:
        raise ValueError(f"{path}: cannot read the run's summary ({error.strerror or error})") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{expected} a file that is not JSON ({error})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("config"), dict):
        shown = repr(summary) if len(repr(summary)) <= 60 else repr(summary)[:57] + "..."
        raise ValueError(f"{expected} {shown}")
    try:
        Config.from_dict(summary["config"])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return summary


def write_summary(workdir: str | None, summary: dict[str, Any]) -> None:
    """Writes ``workdir/summary.json`` through a temporary file and a rename, so that an interrupted write leaves
    the earlier summary whole rather than half a file."""
    if workdir is None:
        return
    path = os.path.join(workdir, "summary.json")
    try:
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=2, default=_json_default)
        os.replace(path + ".tmp", path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path + ".tmp")
        raise


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
