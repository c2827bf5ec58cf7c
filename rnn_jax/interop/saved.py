"""Saved models: parameters with the configuration that built them, in a small versioned format on orbax-checkpoint.

A saved model is a directory:

    rnn_jax_model.json   {"format": "rnn-jax-saved-model", "version": 2, "model": "elman" | "lstm" | "gru",
                          "config": {ModelConfig's fields},
                          "params": {field: {"shape": [...], "dtype": "...", "sha256": "<64 hex digits>"}}}
    params/              the parameter NamedTuple's fields as a dict, written by orbax's StandardCheckpointer

`save` refuses, before it writes anything, a config that does not build the given parameters: it compares
their names, shapes and dtypes with those `rnn_jax.train.init_params` builds for the config (with the input and
output sizes of the parameters) and names the first array that disagrees. `load` reads the manifest first and
refuses, with a message naming both versions, a format version it does not know, and a config that does not
build the parameters the manifest lists; it then restores the arrays with those shapes and dtypes and rebuilds
the parameters (the cell's Params, or a deep model's `DeepParams`) and the `ModelConfig`. A file that cannot be
read (damaged or missing) is a `DamagedSavedModel` naming it. A deep model (`rnn_jax.deep`,
``config.is_deep``) stores its `DeepParams` as nested dicts (tuples become "0", "1", ...; None fields are left
out) and lists each array under its path (``layers.0.forward.w_x``) in the manifest.

Each array's ``sha256`` is the SHA-256 of its bytes as stored, written as 64 lower-case hex digits
(``hashlib.sha256(...).hexdigest()``): the array converted to its manifest dtype, laid out in C (row-major) order,
each element little-endian, with no header (no shape, dtype or padding), so ``hashlib.sha256(np.ascontiguousarray(a,
dtype=a.dtype.newbyteorder("<")).tobytes()).hexdigest()``. `save` computes it from the arrays it writes; `load`
recomputes it from the arrays orbax restores and refuses, as a `DamagedSavedModel` naming ``params/`` and each
array's path, values whose checksum is not the manifest's: TensorStore does not notice every damaged byte (a bit
flipped in an array kept as a raw zstd block, which carries no checksum, reads back as another value). A checksum
that is missing or not 64 lower-case hex digits is a `DamagedSavedModel` naming the manifest.

Versions: 1, the first, is version 2 without ``sha256`` (the same ``params/``); `load` still reads it, without
the check. A change to the layout of either file gets a new version number and, where possible, a reader for the
old one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rnn_jax import cells, deep
from rnn_jax.checkpoint import error_summary
from rnn_jax.config import ModelConfig

FORMAT = "rnn-jax-saved-model"
VERSION = 2  # the version `save` writes; 2: each array's SHA-256 in the manifest
READS = (1, 2)  # the versions `load` reads; 1 has no checksums, and is loaded without the check
MANIFEST = "rnn_jax_model.json"

_STRUCTURE = ("model", "layers", "bidirectional", "learn_initial_state")  # the fields that decide the arrays
_Specs = dict[str, tuple[tuple[int, ...], str]]  # {"layers.0.forward.w_x": (shape, dtype name)}, in the tree's order
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


class IncompatibleSavedModel(ValueError):
    """The directory holds a saved model in a format or version this rnn-jax cannot read."""


class DamagedSavedModel(IncompatibleSavedModel):
    """A file of the saved model cannot be read, or holds what `save` never writes; the message names the file."""


def save(directory: str | os.PathLike, params: Any, config: ModelConfig) -> None:
    """Writes ``params`` and ``config`` to ``directory`` (which must not exist yet).

    Raises:
      TypeError: if ``config`` is not a `ModelConfig`.
      ValueError: if ``config`` is not valid (`rnn_jax.train.check_model`), ``params`` is not the Params of
        ``config.model``'s cell, or ``config`` does not build arrays of the names, shapes and dtypes of ``params``.
      FileExistsError: if ``directory`` exists.
    """
    from rnn_jax.train import check_model

    directory = os.path.abspath(os.fspath(directory))
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config: expected a rnn_jax.config.ModelConfig, got {type(config).__name__}")
    try:
        check_model(config)
    except ValueError as error:
        raise ValueError(f"config: {error}") from None
    expected = deep.DeepParams if config.is_deep else cells.get(config.model).Params
    if type(params) is not expected:
        why = f"config.model is {config.model!r}" + (", with deep options (config.is_deep)" if config.is_deep else "")
        raise ValueError(f"params: {why}, so expected {expected.__name__}, got {type(params).__name__}")
    tree = _as_dict(jax.device_get(params))
    specs = {name: (tuple(np.shape(a)), str(a.dtype)) for name, a in _flat(tree)}
    checksums = {name: _sha256(a, a.dtype) for name, a in _flat(tree)}
    _template(config, specs)  # before anything is written
    if os.path.exists(directory):
        raise FileExistsError(f"directory: {directory} exists; saved models are written to a new directory")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, "params"), tree)
        checkpointer.wait_until_finished()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "model": config.model,
        "config": dataclasses.asdict(config),
        "params": {
            name: {"shape": list(shape), "dtype": dtype, "sha256": checksums[name]}
            for name, (shape, dtype) in specs.items()
        },
    }
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)


def load(directory: str | os.PathLike) -> tuple[Any, ModelConfig]:
    """``(params, config)`` from a directory written by `save`.

    Raises:
      FileNotFoundError: if ``directory`` holds no manifest.
      IncompatibleSavedModel: for another format, an unknown version, a config this rnn-jax does not have, or
        one that does not build the parameters the manifest lists.
      DamagedSavedModel (an IncompatibleSavedModel): a file that cannot be read, a manifest `save` never writes,
        or (version 2) arrays whose SHA-256 is not the one the manifest lists.
    """
    from rnn_jax.train import check_model

    directory = os.path.abspath(os.fspath(directory))
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: not an rnn-jax saved model (no {MANIFEST})")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DamagedSavedModel(f"{path}: cannot read the manifest ({error_summary(error)}); it is damaged") from None
    if not isinstance(manifest, dict):
        raise DamagedSavedModel(f"{path}: expected a JSON object, got a {type(manifest).__name__}; it is damaged")
    if manifest.get("format") != FORMAT:
        raise IncompatibleSavedModel(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("version")
    if type(version) is not int or version not in READS:  # not a bool: JSON's true == 1
        raise IncompatibleSavedModel(
            f"{path}: saved model format version {version!r}, but this rnn-jax reads versions "
            f"{', '.join(map(str, READS))}; load it with the rnn-jax that wrote it, or convert it"
        )
    fields = manifest.get("config")
    specs, checksums = _read_specs(path, manifest.get("params"), with_checksums=version >= 2)
    if not isinstance(fields, dict):
        raise DamagedSavedModel(f"{path}: config: expected a JSON object of ModelConfig's fields, got {fields!r}")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise IncompatibleSavedModel(f"{path}: config fields {unknown} are unknown to this rnn-jax's ModelConfig")
    config = ModelConfig(**fields)
    try:
        check_model(config)
    except ValueError as error:
        raise IncompatibleSavedModel(f"{path}: config: {error}") from None
    try:
        template = _template(config, specs)
    except ValueError as error:
        raise IncompatibleSavedModel(f"{path}: {error}") from None
    params_dir = os.path.join(directory, "params")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore(params_dir, _as_dict(template))
    except Exception as error:  # orbax and tensorstore raise many types for damaged or missing files
        raise DamagedSavedModel(
            f"{params_dir}: cannot read the arrays ({error_summary(error)}); the saved model is damaged or incomplete"
        ) from error
    damaged = [name for name, a in _flat(tree) if checksums and _sha256(a, specs[name][1]) != checksums[name]]
    if damaged:
        raise DamagedSavedModel(
            f"{params_dir}: {', '.join('params.' + name for name in damaged)}: the restored values' SHA-256 is not "
            f"the one in {MANIFEST} (the arrays or the manifest changed after save); the saved model is damaged"
        )
    return _from_dict(template, tree), config


def _sha256(array: Any, dtype: Any) -> str:
    """The SHA-256 (hex) of ``array``'s bytes as stored: converted to ``dtype``, C order, little-endian elements."""
    stored = np.ascontiguousarray(np.asarray(array), dtype=jnp.dtype(dtype).newbyteorder("<"))
    return hashlib.sha256(stored.tobytes()).hexdigest()


def _read_specs(path: str, params: Any, with_checksums: bool) -> tuple[_Specs, dict[str, str]]:
    """The manifest's ``params`` as `_Specs` and ``{path: SHA-256}`` (empty without ``with_checksums``: version 1),
    or a DamagedSavedModel naming the entry that is not a shape and dtype, or whose checksum is not 64 hex digits."""
    if not isinstance(params, dict) or not params:
        raise DamagedSavedModel(f"{path}: params: expected a JSON object of arrays' shapes and dtypes, got {params!r}")
    specs, checksums = {}, {}
    for name, spec in params.items():
        try:
            shape = tuple(spec["shape"])
            if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
                raise ValueError(shape)
            specs[name] = (shape, str(jnp.dtype(spec["dtype"])))
        except (TypeError, KeyError, ValueError):
            raise DamagedSavedModel(
                f"{path}: params.{name}: expected {{'shape': [sizes], 'dtype': name}}, got {spec!r}"
            ) from None
        if with_checksums:
            checksum = spec.get("sha256")
            if not isinstance(checksum, str) or not _HEX_SHA256.fullmatch(checksum):
                raise DamagedSavedModel(
                    f"{path}: params.{name}.sha256: expected a SHA-256 as 64 lower-case hex digits, got "
                    f"{checksum!r}; the manifest is damaged"
                )
            checksums[name] = checksum
    return specs, checksums


def _template(config: ModelConfig, specs: _Specs) -> Any:
    """The parameters (`jax.ShapeDtypeStruct` leaves) that `rnn_jax.train.init_params` builds for ``config`` with the
    input size D and output size O of ``specs`` (the first ``w_x``'s rows, ``b_y``'s length).

    Raises:
      ValueError: naming the first array of ``specs`` whose name, shape or dtype is not the template's.
    """
    from rnn_jax.train import init_params  # the one place that turns a ModelConfig into parameters

    w_x = next((name for name in specs if name.rsplit(".", 1)[-1] == "w_x"), None)
    if w_x is None or "b_y" not in specs or len(specs[w_x][0]) != 2 or len(specs["b_y"][0]) != 1:
        raise ValueError(f"params: expected a w_x [D, ...] and a b_y [O], got arrays {_listing(specs)}")
    sizes = SimpleNamespace(input_size=specs[w_x][0][0], output_size=specs["b_y"][0][0])
    shapes_only = dataclasses.replace(config, spectral_radius=None)  # its rescaling runs in NumPy, not under tracing
    template = jax.eval_shape(lambda: init_params(shapes_only, sizes, jax.random.key(0)))
    expected = {name: (tuple(a.shape), str(a.dtype)) for name, a in _flat(_as_dict(template))}
    if list(specs) != list(expected):
        options = ", ".join(f"{name}={getattr(config, name)!r}" for name in _STRUCTURE)
        raise ValueError(f"params has the arrays {list(specs)}, but config ({options}) builds {list(expected)}")
    for name, (shape, dtype) in specs.items():
        if shape != expected[name][0]:
            raise ValueError(
                f"params.{name} has shape {shape}, but config.hidden={config.hidden!r} builds {expected[name][0]} "
                f"(D = {sizes.input_size} and O = {sizes.output_size} read from the params)"
            )
        if dtype != expected[name][1]:
            raise ValueError(f"params.{name} has dtype {dtype}, but config.dtype={config.dtype!r}")
    return template


def _listing(specs: _Specs) -> str:
    return ", ".join(f"{name} {list(shape)}" for name, (shape, _) in specs.items()) or "none"


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
