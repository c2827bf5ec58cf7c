"""Training: a `TrainState`, one jitted train step, evaluation, and the loop around them.

The train step is the whole of one update, compiled once:

    loss, grads = value_and_grad(loss of unroll(params, batch))    # BPTT through lax.scan
    updates     = optimizer(grads)                                 # optax.chain(clip, rule)
    params      = params + updates

It returns the loss, the global gradient norm *before* clipping and whether clipping fired.
A step whose loss or gradient is NaN or Inf leaves the state unchanged and is flagged; the
loop then stops with a `TrainingDiverged` error naming that step, so a run never goes on
training on NaN and the last good parameters are kept.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_jax import bptt, cells, tasks
from rnn_jax.config import Config, ModelConfig
from rnn_jax.optim import clip_fired, learning_rate_schedule, make_optimizer
from rnn_jax.unroll import unroll

DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}


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
    finite: jax.Array  # bool: loss and gradient were finite, so the update was applied


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN or Inf; ``step`` is the first such step (1-based).

    ``params`` holds the last good parameters (those after step ``step - 1``).
    """

    def __init__(self, step: int, loss: float, grad_norm: float, params: Any = None):
        self.step, self.loss, self.grad_norm, self.params = step, loss, grad_norm, params
        super().__init__(
            f"training diverged at step {step}: loss = {loss}, gradient norm = {grad_norm}. "
            "The update of that step was not applied; the parameters are those after step "
            f"{step - 1}. Try a smaller --learning-rate or gradient clipping (--clip global_norm)."
        )


def init_params(config: ModelConfig, task: tasks.Task, key: jax.Array) -> Any:
    """The model's initial parameters for ``task``'s input and output sizes."""
    cell = cells.get(config.model)
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {config.dtype!r}")
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


def forward(config: ModelConfig, params: Any, batch: tasks.Batch) -> jax.Array:
    """The outputs y, [T, B, O], of the model on ``batch`` (state frozen past each length)."""
    cell = cells.get(config.model)
    return unroll(
        params,
        batch.inputs,
        activation=config.activation,
        lengths=batch.lengths,
        unroll=config.unroll,
        backward=config.backward,
        cell=cell,
    ).outputs


def make_loss_fn(config: ModelConfig, task: tasks.Task) -> Callable[[Any, tasks.Batch], jax.Array]:
    """``params, batch -> loss``: the task's loss of the unrolled model."""

    def loss_fn(params: Any, batch: tasks.Batch) -> jax.Array:
        return tasks.loss(task.loss, forward(config, params, batch), batch)

    return loss_fn


def _apply_update(
    config: Config, optimizer, state: TrainState, loss: jax.Array, grads
) -> tuple[TrainState, StepMetrics]:
    """grad -> clip -> update -> apply; a non-finite loss or gradient leaves ``state`` unchanged."""
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    stepped = TrainState(state.step + 1, params, opt_state)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), stepped, state)
    return new_state, StepMetrics(loss, grad_norm, clip_fired(config.optim, grads), finite)


def make_train_step(config: Config, task: tasks.Task, optimizer: optax.GradientTransformation):
    """The jitted ``(state, batch) -> (state, StepMetrics)``, with ``state`` donated."""
    loss_fn = make_loss_fn(config.model, task)

    def train_step(state: TrainState, batch: tasks.Batch) -> tuple[TrainState, StepMetrics]:
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
        return _apply_update(config, optimizer, state, loss, grads)

    return jax.jit(train_step, donate_argnums=0)


def make_tbptt_step(config: Config, task: tasks.Task, optimizer: optax.GradientTransformation, k1: int, k2: int):
    """The jitted TBPTT(k1, k2) update ``(state, entering, padded_inputs, padded_targets, index) ->
    (state, carried, StepMetrics)``: window ``index`` of a `bptt.pad_stream`-ed stream, its loss on
    the last k1 steps, gradients back at most k2 steps from the carried (fixed) entering state."""
    cell = cells.get(config.model.model)

    def tbptt_step(state, entering, padded_inputs, padded_targets, index):
        inputs = bptt.window(padded_inputs, index, k1, k2)
        targets = bptt.window(padded_targets, index, k1, k2)
        valid, scored = bptt.window_masks(index, k1, k2, inputs.shape[1])
        objective = functools.partial(
            bptt.truncated_loss, k1=k1, loss=task.loss, activation=config.model.activation,
            backward=config.model.backward, cell=cell,
        )  # fmt: skip
        (loss, carried), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, entering, inputs, targets, valid, scored
        )
        new_state, metrics = _apply_update(config, optimizer, state, loss, grads)
        carried = jax.tree.map(lambda c, e: jnp.where(metrics.finite, c, e), carried, entering)
        return new_state, carried, metrics

    return jax.jit(tbptt_step, donate_argnums=0)


def make_evaluate(config: ModelConfig, task: tasks.Task):
    """The jitted ``(params, batch) -> dict`` of the loss and the task's metrics."""

    def evaluate(params: Any, batch: tasks.Batch) -> dict[str, jax.Array]:
        outputs = forward(config, params, batch)
        return {"loss": tasks.loss(task.loss, outputs, batch), **task.metrics(outputs.astype(jnp.float32), batch)}

    return jax.jit(evaluate)


def _keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Independent keys for the initial parameters, the training batches and the held-out set."""
    k_init, k_train, k_eval = jax.random.split(jax.random.key(seed), 3)
    return k_init, k_train, k_eval


def _floats(tree: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in jax.device_get(tree).items()}


class _Sink:
    """Appends JSON lines to ``workdir/metrics.jsonl`` (or nowhere without a workdir)."""

    def __init__(self, workdir: str | None):
        self.records: list[dict[str, Any]] = []
        self._file = None
        if workdir is not None:
            os.makedirs(workdir, exist_ok=True)
            self._file = open(os.path.join(workdir, "metrics.jsonl"), "w")  # noqa: SIM115 (closed in close())

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def train_and_evaluate(config: Config, workdir: str | None = None) -> dict[str, Any]:
    """Trains ``config``'s model on its task and evaluates it on a held-out set.

    Every ``log_every`` steps a line ``{"kind": "train", "step", "loss", "grad_norm",
    "clip_fraction", "learning_rate"}`` (means over the steps since the last line), and every
    ``eval_every`` steps and at the end a line ``{"kind": "eval", "step", "loss", ...metrics}``,
    are written to ``workdir/metrics.jsonl``; the returned summary is also written to
    ``workdir/summary.json``. The run is a deterministic function of ``config``.

    Returns:
      The summary: status, final train and eval metrics, the task's trivial baseline,
      steps per second, compile time, the parameters (``"params"``, not written to JSON)
      and the config.

    Raises:
      TrainingDiverged: when the loss or gradient becomes NaN or Inf (after the metrics and a
        summary with ``"status": "diverged"`` have been written).
    """
    from rnn_jax import progress as progress_lib  # the only UI piece; kept out of import time

    run = config.run
    for name in ("steps", "eval_every", "eval_batches", "log_every"):
        if not isinstance(getattr(run, name), int) or getattr(run, name) < 1:
            raise ValueError(f"{name}: expected a positive integer, got {getattr(run, name)!r}")
    if not isinstance(config.task.batch_size, int) or config.task.batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {config.task.batch_size!r}")
    task = tasks.make(config.task)
    k_init, k_train, k_eval = _keys(run.seed)
    params = init_params(config.model, task, k_init)
    dtype = DTYPES[config.model.dtype]
    optimizer = make_optimizer(config.optim, run.steps)
    schedule_lr = learning_rate_schedule(config.optim, run.steps)
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    evaluate = make_evaluate(config.model, task)
    eval_set = task.batch(k_eval, config.task.batch_size * run.eval_batches, dtype)
    advance = _make_advance(config, task, optimizer, params, k_train, dtype)

    sink = _Sink(workdir)
    summary: dict[str, Any] = {"status": "running", "config": config.to_dict(), "baseline": task.baseline()}
    pending: list[StepMetrics] = []
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}

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
                raise TrainingDiverged(first_step + offset, float(metrics.loss), float(metrics.grad_norm), state.params)
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
        sink.write({"kind": "eval", "step": step, **last_eval})

    bar = progress_lib.Bar(run.steps, enabled=run.progress, description=f"train {task.name}")
    start = time.perf_counter()
    try:
        with bar:
            for step in range(1, run.steps + 1):
                state, metrics = advance(state, step)
                if step == 1:  # the first step includes compilation: time it apart
                    jax.block_until_ready(metrics)
                    summary["compile_s"] = time.perf_counter() - start
                    start = time.perf_counter()
                pending.append(metrics)
                if step % run.log_every == 0 or step == run.steps:
                    flush(step)
                    bar.update(step, loss=last_train["loss"])
                if step % run.eval_every == 0 or step == run.steps:
                    run_eval(step)
                    bar.update(step, eval_loss=last_eval["loss"])
    except TrainingDiverged as error:
        summary.update(status="diverged", diverged_at_step=error.step, final_eval=last_eval)
        _write_summary(workdir, summary)
        sink.close()
        raise
    elapsed = time.perf_counter() - start
    sink.close()
    summary.update(
        status="completed",
        steps=run.steps,
        final_train=last_train,
        final_eval=last_eval,
        steps_per_second=(run.steps - 1) / elapsed if run.steps > 1 else float("nan"),
        train_seconds=elapsed,
    )
    _write_summary(workdir, summary)
    return {**summary, "params": state.params, "records": sink.records}


def _make_advance(config: Config, task: tasks.Task, optimizer, params, key: jax.Array, dtype):
    """``advance(state, step) -> (state, StepMetrics)``: one update, on a fresh batch or the stream's next window."""
    run = config.run
    if run.tbptt_k1 is None:
        if run.tbptt_k2 is not None:
            raise ValueError("tbptt_k2: needs tbptt_k1 as well (the number of steps per update)")
        train_step = make_train_step(config, task, optimizer)
        make_batch = jax.jit(lambda k: task.batch(k, config.task.batch_size, dtype))
        return lambda state, step: train_step(state, make_batch(jax.random.fold_in(key, step)))

    k1, k2 = bptt.check_truncation(run.tbptt_k1, run.tbptt_k2 or run.tbptt_k1)
    if not hasattr(task, "stream"):
        raise ValueError(f"tbptt_k1: the {task.name!r} task has no stream to truncate; streaming tasks: xor")
    stream = task.stream(key, config.task.batch_size, run.steps * k1, dtype)
    padded_inputs, padded_targets = bptt.pad_stream(stream.inputs, k1, k2), bptt.pad_stream(stream.targets, k1, k2)
    tbptt_step = make_tbptt_step(config, task, optimizer, k1, k2)
    carried = [cells.get(config.model.model).initial_state(params, config.task.batch_size)]

    def advance(state, step):
        index = jnp.asarray(step - 1, jnp.int32)
        state, carried[0], metrics = tbptt_step(state, carried[0], padded_inputs, padded_targets, index)
        return state, metrics

    return advance


def _write_summary(workdir: str | None, summary: dict[str, Any]) -> None:
    if workdir is None:
        return
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
