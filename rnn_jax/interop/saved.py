"""Saved models: parameters with the configuration that built them, in a small versioned format on orbax-checkpoint.

A saved model is a directory:

    rnn_jax_model.json   {"format": "rnn-jax-saved-model", "version": 1, "model": "elman" | "lstm" | "gru",
                          "config": {ModelConfig's fields}, "params": {field: {"shape": [...], "dtype": "..."}}}
    params/              the parameter NamedTuple's fields as a dict, written by orbax's StandardCheckpointer

`load` reads the manifest first and refuses, with a message naming both versions, a format version
it does not know; it then restores the arrays with their recorded shapes and dtypes and rebuilds
the cell's Params and the `ModelConfig`. A deep model (`rnn_jax.deep`, ``config.is_deep``) stores its
`DeepParams` as nested dicts (tuples become "0", "1", ...; None fields are left out) and lists each array
under its path (``layers.0.forward.w_x``) in the manifest; `load` rebuilds the structure from the config.
Version 1 is the first; a change to the layout of either file gets a new version number and, where
possible, a reader for the old one.
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

from rnn_jax import cells, deep
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
    expected = deep.DeepParams if config.is_deep else cells.get(config.model).Params
    if type(params) is not expected:
        raise ValueError(f"params: config.model is {config.model!r}, so expected {expected.__name__}, "
                         f"got {type(params).__name__}")  # fmt: skip
    if os.path.exists(directory):
        raise FileExistsError(f"directory: {directory} exists; saved models are written to a new directory")
    tree = _as_dict(jax.device_get(params))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, "params"), tree)
        checkpointer.wait_until_finished()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "model": config.model,
        "config": dataclasses.asdict(config),
        "params": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in _flat(tree)},
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
    if config.is_deep:
        return _load_deep(directory, path, manifest, config), config
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


def _as_dict(tree: Any) -> Any:
    """A params pytree as nested dicts of NumPy arrays: NamedTuple fields by name, tuple entries by index, no None."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {name: _as_dict(value) for name, value in tree._asdict().items() if value is not None}
    if isinstance(tree, tuple):
        return {str(i): _as_dict(value) for i, value in enumerate(tree) if value is not None}
    return tree if isinstance(tree, jax.ShapeDtypeStruct) else np.asarray(tree)


def _from_dict(template: Any, tree: Any) -> Any:
    """The inverse of `_as_dict`, shaped like ``template``."""
    if isinstance(template, tuple) and hasattr(template, "_fields"):
        return type(template)(*(None if v is None else _from_dict(v, tree[k]) for k, v in template._asdict().items()))
    if isinstance(template, tuple):
        return tuple(None if v is None else _from_dict(v, tree[str(i)]) for i, v in enumerate(template))
    return jnp.asarray(tree)


def _flat(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, array) for every array of a nested dict, in its order."""
    out = []
    for name, value in tree.items():
        out += _flat(value, f"{prefix}{name}.") if isinstance(value, dict) else [(prefix + name, value)]
    return out


def _load_deep(directory: str, path: str, manifest: dict, config: ModelConfig) -> deep.DeepParams:
    from types import SimpleNamespace

    from rnn_jax.train import init_params  # the one place that turns a ModelConfig into parameters

    specs = manifest["params"]
    try:
        sizes = SimpleNamespace(
            input_size=specs["layers.0.forward.w_x"]["shape"][0], output_size=specs["b_y"]["shape"][0]
        )
    except KeyError as error:
        raise IncompatibleSavedModel(f"{path}: a deep model without the parameter {error}") from None
    template = jax.eval_shape(lambda: init_params(config, sizes, jax.random.key(0)))
    expected = [name for name, _ in _flat(_as_dict(template))]
    if list(specs) != expected:
        raise IncompatibleSavedModel(f"{path}: parameters {list(specs)}, but this config has {expected}")
    target = _as_dict(template)  # fresh dicts, whose leaves take the recorded shapes and dtypes
    for name, spec in specs.items():
        *parents, leaf = name.split(".")
        node = target
        for part in parents:
            node = node[part]
        node[leaf] = jax.ShapeDtypeStruct(tuple(spec["shape"]), jnp.dtype(spec["dtype"]))
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(os.path.join(directory, "params"), target)
    return _from_dict(template, tree)
