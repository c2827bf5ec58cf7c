"""Saved models: parameters with the configuration that built them, in a small versioned format on orbax-checkpoint.

A saved model is a directory:

    rnn_jax_model.json   {"format": "rnn-jax-saved-model", "version": 1, "model": "elman" | "lstm" | "gru",
                          "config": {ModelConfig's fields}, "params": {field: {"shape": [...], "dtype": "..."}}}
    params/              the parameter NamedTuple's fields as a dict, written by orbax's StandardCheckpointer

`load` reads the manifest first and refuses, with a message naming both versions, a format version
it does not know; it then restores the arrays with their recorded shapes and dtypes and rebuilds
the cell's Params and the `ModelConfig`. Version 1 is the first; a change to the layout of either
file gets a new version number and, where possible, a reader for the old one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rnn_jax import cells
from rnn_jax.config import ModelConfig

FORMAT = "rnn-jax-saved-model"
VERSION = 1
MANIFEST = "rnn_jax_model.json"


class IncompatibleSavedModel(ValueError):
    """The directory holds a saved model in a format or version this rnn-jax cannot read."""


def save(directory: str | os.PathLike, params: Any, config: ModelConfig) -> None:
    """Writes ``params`` and ``config`` to ``directory`` (which must not exist yet).

    Raises:
      ValueError: if ``params`` is not the Params of ``config.model``'s cell.
      FileExistsError: if ``directory`` exists.
    """
    directory = os.path.abspath(os.fspath(directory))
    expected = cells.get(config.model).Params
    if type(params) is not expected:
        raise ValueError(f"params: config.model is {config.model!r}, so expected {expected.__name__}, "
                         f"got {type(params).__name__}")  # fmt: skip
    if os.path.exists(directory):
        raise FileExistsError(f"directory: {directory} exists; saved models are written to a new directory")
    tree = {name: np.asarray(jax.device_get(value)) for name, value in params._asdict().items()}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, "params"), tree)
        checkpointer.wait_until_finished()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "model": config.model,
        "config": dataclasses.asdict(config),
        "params": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in tree.items()},
    }
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)


def load(directory: str | os.PathLike) -> tuple[Any, ModelConfig]:
    """``(params, config)`` from a directory written by `save`.

    Raises:
      FileNotFoundError: if ``directory`` holds no manifest.
      IncompatibleSavedModel: for another format, an unknown version or a config this rnn-jax does not have.
    """
    directory = os.path.abspath(os.fspath(directory))
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: not an rnn-jax saved model (no {MANIFEST})")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise IncompatibleSavedModel(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise IncompatibleSavedModel(
            f"{path}: saved model format version {manifest.get('version')!r}, but this rnn-jax reads version "
            f"{VERSION}; load it with the rnn-jax that wrote it, or convert it"
        )
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(manifest["config"]) - known)
    if unknown:
        raise IncompatibleSavedModel(f"{path}: config fields {unknown} are unknown to this rnn-jax's ModelConfig")
    config = ModelConfig(**manifest["config"])
    params_type = cells.get(config.model).Params
    if list(manifest["params"]) != list(params_type._fields):
        raise IncompatibleSavedModel(
            f"{path}: parameters {list(manifest['params'])}, but {config.model} has {list(params_type._fields)}"
        )
    target = {
        name: jax.ShapeDtypeStruct(tuple(spec["shape"]), jnp.dtype(spec["dtype"]))
        for name, spec in manifest["params"].items()
    }
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(os.path.join(directory, "params"), target)
    return params_type(**{name: jnp.asarray(tree[name]) for name in params_type._fields}), config
