"""After a run: the loss curve and, on real data, the task's own figures and (for text) a generated sample.

sunspots         forecast.png: the test segment's truth, the model's one-month-ahead forecast, persistence
japanese-vowels  confusion_matrix.png on the test set
shakespeare      sample.txt: text generated from a prime (also returned, for summary.json)
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import cells, deep, plotting, tasks
from rnn_jax.config import Config, ModelConfig
from rnn_jax.tasks import Shakespeare, Sunspots, Task
from rnn_jax.train import DTYPES, forward, write_summary
from rnn_jax.unroll import generate, unroll


def generate_text(
    config: ModelConfig,
    task: Shakespeare,
    params: Any,
    key: jax.Array,
    *,
    prime: str = "\n",
    length: int = 500,
    temperature: float = 0.8,
) -> str:
    """``length`` characters sampled from the model after reading ``prime`` (one-to-many generation).

    Raises:
      ValueError: for an empty prime, a character outside the vocabulary, or a non-positive length.
    """
    if not prime:
        raise ValueError("prime: expected at least one character, got ''")
    tokens = task.encode(prime)
    dtype = DTYPES[config.dtype]
    cell = cells.get(config.model)
    primed = task.featurize(jnp.asarray(tokens)[:, None], dtype)  # [P, 1, V]
    sampling = {"feedback": "sample", "temperature": temperature}
    if config.is_deep:  # the stack read the prime, then deep.generate (no dropout: evaluation)
        model = {"cell": cell, "activation": config.activation, "residual": config.residual}
        finals = deep.apply(params, primed[:-1], **model).final_states if len(tokens) > 1 else None
        carries = None if finals is None else tuple(layer.forward for layer in finals)
        generated = deep.generate(params, key, primed[-1], length + 1, carries=carries, **model, **sampling)
    else:
        state = (
            unroll(params, primed[:-1], activation=config.activation, cell=cell).final_state
            if len(tokens) > 1
            else None
        )
        generated = generate(
            params, key, primed[-1], length + 1, activation=config.activation, initial_state=state, cell=cell,
            **sampling,
        )  # fmt: skip
    return task.decode(jnp.argmax(generated.inputs[1:, 0], axis=-1))


def write(config: ModelConfig, task: Task, params: Any, workdir: str, seed: int = 0) -> dict[str, Any]:
    """Writes the task's figures (and sample) into ``workdir``; returns what belongs in summary.json."""
    written: dict[str, Any] = {}
    dtype = DTYPES[config.dtype]
    if isinstance(task, Sunspots):
        batch = task.eval_batch("test", dtype)
        outputs = np.asarray(forward(config, task, params, batch)[:, 0, 0], np.float64)
        scored = np.asarray(batch.mask[:, 0])
        current = np.asarray(batch.inputs[:, 0, 0], np.float64)
        truth = current + np.asarray(batch.targets[:, 0, 0], np.float64)
        years = 1749 + np.arange(1, len(truth) + 1)[scored] / 12.0  # target t is month t + 1 of the series
        plotting.forecast(
            years, task.to_sunspot_numbers(truth[scored]), task.to_sunspot_numbers((current + outputs)[scored]),
            task.to_sunspot_numbers(current[scored]), os.path.join(workdir, "forecast.png"),
            title=f"{config.model} forecast on the test segment",
        )  # fmt: skip
        written["figures"] = ["forecast.png"]
    elif hasattr(task, "predictions"):
        batch = task.eval_batch("test", dtype)
        predicted, true = task.predictions(forward(config, task, params, batch), batch)
        plotting.confusion_matrix(
            predicted, true, task.output_size, os.path.join(workdir, "confusion_matrix.png"),
            title=f"{config.model} on {task.name} (test)",
        )  # fmt: skip
        written["figures"] = ["confusion_matrix.png"]
    elif isinstance(task, Shakespeare):
        sample = generate_text(config, task, params, jax.random.key(seed), prime="ROMEO:\n", length=400)
        with open(os.path.join(workdir, "sample.txt"), "w") as f:
            f.write("ROMEO:\n" + sample)
        written["sample"] = "ROMEO:\n" + sample
    return written


def finish(config: Config, summary: dict[str, Any], workdir: str) -> dict[str, Any]:
    """After `rnn_jax.train.train_and_evaluate` wrote ``workdir``: the loss curve, the task's figures and sample.

    Adds what they produced to ``workdir/summary.json`` and returns the updated summary.
    """
    plotting.loss_curve(
        summary["records"],
        os.path.join(workdir, "loss_curve.png"),
        baseline=summary["baseline"]["loss"],
        title=f"{config.model.model} on {config.task.task} ({tasks.describe(config.task)})",
    )
    extra = write(config.model, tasks.make(config.task), summary["params"], workdir, config.run.seed)
    if extra:
        path = os.path.join(workdir, "summary.json")
        with open(path) as f:
            written = json.load(f)
        write_summary(workdir, {**written, **extra})  # through a rename, as the run's own writes
    return {**summary, **extra}
