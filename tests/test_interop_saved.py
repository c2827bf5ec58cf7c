"""Saved models load back with their configuration; a config that does not build the parameters, an incompatible
format version and a damaged file are clear errors that name what is wrong."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts

from rnn_jax import cells, deep
from rnn_jax.config import ModelConfig
from rnn_jax.interop import saved

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model", ["elman", "lstm", "gru"])
def test_saved_model_loads_back_with_its_config(tmp_path, key, model):
    config = ModelConfig(model=model, hidden=5, activation="relu", spectral_radius=0.9)
    params = cells.get(model).init(key, 3, 5, 2)
    saved.save(tmp_path / "m", params, config)
    loaded, loaded_config = saved.load(tmp_path / "m")
    assert loaded_config == config and type(loaded) is type(params)
    for name, a, b in zip(params._fields, params, loaded, strict=True):
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_incompatible_version_is_a_clear_error(tmp_path, key):
    saved.save(tmp_path / "m", cells.elman.init(key, 2, 3, 1), ModelConfig(hidden=3))
    manifest_path = tmp_path / "m" / saved.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(saved.IncompatibleSavedModel, match="version 99, but this rnn-jax reads versions 1, 2;"):
        saved.load(tmp_path / "m")


def test_wrong_params_missing_manifest_and_existing_directory_are_errors(tmp_path, key):
    with pytest.raises(ValueError, match="expected LSTMParams"):
        saved.save(tmp_path / "a", cells.elman.init(key, 2, 3, 1), ModelConfig(model="lstm", hidden=3))
    with pytest.raises(FileNotFoundError, match="not an rnn-jax saved model"):
        saved.load(tmp_path)
    saved.save(tmp_path / "b", cells.elman.init(key, 2, 3, 1), ModelConfig(hidden=3))
    with pytest.raises(FileExistsError):
        saved.save(tmp_path / "b", cells.elman.init(key, 2, 3, 1), ModelConfig(hidden=3))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"config": {"hidden": 64}}, r"params\.w_x has shape \(2, 4\), but config\.hidden=64 builds \(2, 64\)"),
        ({"config": {"activation": "tahn"}}, r"config: activation: expected one of \['tanh'.*got 'tahn'"),
        ({"config": {"dtype": "bfloat16"}}, r"params\.w_x has dtype float32, but config\.dtype='bfloat16'"),
        ({"params": {"w_s": np.zeros((3, 3), np.float32)}}, r"params\.w_s has shape \(3, 3\), but config\.hidden=4"),
        (
            {"config": {"layers": 2}},
            r"params: config\.model is 'elman', with deep options \(config\.is_deep\), so expected DeepParams",
        ),
    ],
    ids=["hidden", "activation", "dtype", "w_s-shape", "layers"],
)
def test_save_refuses_a_config_that_does_not_build_the_params_and_writes_nothing(tmp_path, key, change, message):
    """H = 4 parameters were saved under hidden=64 (and loaded back so), a misspelt activation was saved too."""
    params = cells.elman.init(key, 2, 4, 1)._replace(**change.get("params", {}))
    config = dataclasses.replace(ModelConfig(hidden=4), **change.get("config", {}))
    with pytest.raises(ValueError, match=message):
        saved.save(tmp_path / "m", params, config)
    assert not (tmp_path / "m").exists()


def test_a_deep_model_of_another_structure_is_refused_naming_the_arrays(tmp_path, key):
    params = deep.init(key, cells.elman, 2, 4, 1, layers=2)
    with pytest.raises(ValueError, match=r"params has the arrays .*layers\.1\.forward.*, but config \(model='elman', "):
        saved.save(tmp_path / "m", params, ModelConfig(hidden=4, layers=3))
    assert not (tmp_path / "m").exists()


def test_load_refuses_a_manifest_whose_config_does_not_build_its_params(tmp_path, key):
    saved.save(tmp_path / "m", cells.elman.init(key, 2, 4, 1), ModelConfig(hidden=4))
    manifest_path = tmp_path / "m" / saved.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "config": {**manifest["config"], "hidden": 64}}))
    with pytest.raises(saved.IncompatibleSavedModel, match=rf"^{re.escape(str(manifest_path))}: params\.w_x has shape"):
        saved.load(tmp_path / "m")


def _manifest(directory, edit) -> None:
    path = directory / saved.MANIFEST
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


DAMAGE = {
    "manifest-not-json": (saved.MANIFEST, lambda d: (d / saved.MANIFEST).write_text('{"format": "rnn-')),
    "manifest-a-list": (saved.MANIFEST, lambda d: (d / saved.MANIFEST).write_text("[]")),
    "manifest-without-config": (
        saved.MANIFEST,
        lambda d: _manifest(d, lambda m: {k: m[k] for k in m if k != "config"}),
    ),
    "manifest-bad-shape": (
        saved.MANIFEST,
        lambda d: _manifest(d, lambda m: {**m, "params": {**m["params"], "w_s": 3}}),
    ),
    "metadata-not-json": ("params", lambda d: (d / "params" / "_METADATA").write_text("{oops")),
    **{
        f"manifest-checksum-{name}": (saved.MANIFEST, lambda d, value=value: _checksum(d, "w_s", value))
        for name, value in [("not-hex", "g" * 64), ("short", "0" * 63), ("upper-case", "A" * 64), ("a-number", 7)]
    },
    "manifest-checksum-missing": (saved.MANIFEST, lambda d: _checksum(d, "b_s", None)),
}


def _checksum(directory, name: str, value) -> None:
    """Sets the manifest's SHA-256 of ``params.name`` to ``value`` (None: leaves it out)."""

    def edit(manifest):
        entry = {k: v for k, v in manifest["params"][name].items() if k != "sha256"}
        if value is not None:
            entry["sha256"] = value
        return {**manifest, "params": {**manifest["params"], name: entry}}

    _manifest(directory, edit)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_saved_model_is_one_error_naming_the_file(tmp_path, key, damage):
    """A broken manifest or _METADATA was a raw JSONDecodeError, a manifest without config a KeyError, a manifest
    `[]` "'list' object has no attribute 'get'", damaged arrays tensorstore's error: none named the saved model."""
    saved.save(tmp_path / "m", cells.elman.init(key, 2, 4, 1), ModelConfig(hidden=4))
    name, damage_it = DAMAGE[damage]
    damage_it(tmp_path / "m")
    with pytest.raises(saved.DamagedSavedModel, match=rf"^{re.escape(str(tmp_path / 'm' / name))}: ") as info:
        saved.load(tmp_path / "m")
    assert "damaged" in str(info.value) and "\n" not in str(info.value)


def test_a_deep_model_with_a_spectral_radius_loads_back(tmp_path, key):
    """`load` traced `init_params` for a deep model's structure, where spectral_radius's NumPy rescaling failed."""
    config = ModelConfig(hidden=4, layers=2, spectral_radius=0.9)
    params = deep.init(key, cells.elman, 2, 4, 1, layers=2, spectral_radius=0.9)
    saved.save(tmp_path / "m", params, config)
    loaded, loaded_config = saved.load(tmp_path / "m")
    assert loaded_config == config
    jax.tree.map(np.testing.assert_array_equal, params, loaded)


def test_truncated_arrays_are_one_error_naming_the_directory(tmp_path, key):
    """Tensorstore's error (the TensorStore spec appended, dozens of lines) did not say which saved model. Loaded in a
    subprocess: orbax's reads still under way after the first failed one report a closed event loop later, which
    pytest would pin on whichever test runs then."""
    saved.save(tmp_path / "m", cells.elman.init(key, 2, 4, 1), ModelConfig(hidden=4))
    for path in (tmp_path / "m" / "params").rglob("*"):
        if path.is_file() and path.parent.name == "d":  # tensorstore's OCDBT files that hold the arrays
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code = (
        "import sys\nfrom rnn_jax.interop import saved\ntry:\n    saved.load(sys.argv[1])\n"
        "except saved.DamagedSavedModel as error:\n    print(error)\n    sys.exit(3)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m")], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 3, result.stderr
    message = result.stdout.strip()
    assert message.startswith(f"{tmp_path / 'm' / 'params'}: cannot read the arrays (ValueError: "), message
    assert message.endswith("the saved model is damaged or incomplete") and "\n" not in message
    assert "tensorstore_spec" not in message


def _dotted(params) -> dict[str, np.ndarray]:
    """Every array of a params pytree under its manifest path (``layers.0.forward.w_x``), None fields left out."""

    def dotted(path) -> str:  # NamedTuple fields are GetAttrKeys, tuple entries SequenceKeys
        return ".".join(k.name if hasattr(k, "name") else str(k.idx) for k in path)

    return {dotted(path): np.asarray(a) for path, a in jax.tree_util.tree_flatten_with_path(params)[0]}


MODELS = {  # (config, init): the cell's Params, and deep models whose paths nest, with bfloat16 among them
    "elman": (ModelConfig(hidden=4), lambda key: cells.elman.init(key, 2, 4, 1)),
    "deep-lstm": (
        ModelConfig(model="lstm", hidden=4, layers=2, bidirectional=True, learn_initial_state=True),
        lambda key: deep.init(key, cells.lstm, 2, 4, 1, layers=2, bidirectional=True, learn_initial_state=True),
    ),
    "deep-gru-bfloat16": (
        ModelConfig(model="gru", hidden=4, layers=3, dtype="bfloat16"),
        lambda key: deep.init(key, cells.gru, 2, 4, 1, layers=3, dtype=jax.numpy.bfloat16),
    ),
}


@pytest.mark.parametrize("model", list(MODELS))
def test_each_array_is_saved_with_the_sha256_of_its_little_endian_c_order_bytes_and_loads_back(tmp_path, key, model):
    config, init = MODELS[model]
    params = init(key)
    saved.save(tmp_path / "m", params, config)
    manifest = json.loads((tmp_path / "m" / saved.MANIFEST).read_text())
    assert manifest["version"] == 2
    arrays = _dotted(params)
    assert list(manifest["params"]) == list(arrays)
    for name, a in arrays.items():
        little_endian = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        assert manifest["params"][name]["sha256"] == hashlib.sha256(little_endian.tobytes()).hexdigest(), name
    loaded, loaded_config = saved.load(tmp_path / "m")
    assert loaded_config == config
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for name, a in _dotted(loaded).items():
        assert a.dtype == arrays[name].dtype, name
        np.testing.assert_array_equal(a, arrays[name], err_msg=name)


def _refused_naming(directory, name: str) -> None:
    with pytest.raises(saved.DamagedSavedModel) as info:
        saved.load(directory)
    message = str(info.value)
    assert message.startswith(f"{directory / 'params'}: params.{name}: "), message
    assert "damaged" in message.split(": ", 1)[1] and "\n" not in message


def test_a_bit_flipped_in_a_stored_array_that_tensorstore_does_not_notice_is_refused_naming_the_array(tmp_path, key):
    """A bit flipped in an array's stored bytes loaded, without a word, as another value. Small arrays are kept inside
    OCDBT's b-tree nodes, which carry a CRC-32C; a larger one whose bytes zstd cannot shrink is kept as a raw zstd block
    (no content checksum) in an OCDBT data file, where nothing checks it: random bits make w_s such an array."""
    bits = np.random.default_rng(0).integers(0, 2**32, (32, 32), dtype=np.uint32) & np.uint32(0xBFFFFFFF)  # finite
    params = cells.elman.init(key, 2, 32, 1)._replace(w_s=jax.numpy.asarray(bits.view(np.float32)))
    saved.save(tmp_path / "m", params, ModelConfig(hidden=32))
    stored = bits.astype("<u4").tobytes()
    files = [p for p in (tmp_path / "m" / "params").rglob("*") if p.is_file() and stored in p.read_bytes()]
    assert files, "w_s's bytes are not stored as they are: this test no longer flips a bit of them"
    for path in files:
        data = bytearray(path.read_bytes())
        data[data.index(stored) + 4 * 5] ^= 0x01  # the lowest mantissa bit of w_s[0, 5]
        path.write_bytes(bytes(data))
    with ocp.StandardCheckpointer() as checkpointer:  # orbax and TensorStore read it back without an error
        restored = checkpointer.restore(tmp_path / "m" / "params")
    changed = np.argwhere(np.asarray(restored["w_s"]).view(np.uint32) != bits)
    np.testing.assert_array_equal(changed, [[0, 5]])
    _refused_naming(tmp_path / "m", "w_s")


def test_an_array_rewritten_with_one_element_changed_is_refused_naming_its_nested_path(tmp_path, key):
    """The stored values of a deep model's array changed after `save`, written through TensorStore, so every
    check of the storage itself passes."""
    config, init = MODELS["deep-lstm"]
    saved.save(tmp_path / "m", init(key), config)
    kvstore = {"driver": "ocdbt", "base": f"file://{tmp_path / 'm' / 'params'}/", "path": "layers.1.backward.w_s/"}
    array = ts.open({"driver": "zarr", "kvstore": kvstore}).result()
    values = array.read().result()
    values[2, 3] = np.nextafter(values[2, 3], np.float32(np.inf))
    array.write(values).result()
    _refused_naming(tmp_path / "m", "layers.1.backward.w_s")


@pytest.mark.parametrize("model", list(MODELS))
def test_a_version_1_saved_model_loads_without_checksums(tmp_path, key, model):
    """Version 1 is version 2 without ``sha256`` in the manifest's params entries: the same params/ directory."""
    config, init = MODELS[model]
    params = init(key)
    saved.save(tmp_path / "m", params, config)

    def as_version_1(manifest):
        entries = {name: {"shape": e["shape"], "dtype": e["dtype"]} for name, e in manifest["params"].items()}
        return {**manifest, "version": 1, "params": entries}

    _manifest(tmp_path / "m", as_version_1)
    assert '"sha256"' not in (tmp_path / "m" / saved.MANIFEST).read_text()
    loaded, loaded_config = saved.load(tmp_path / "m")
    assert loaded_config == config
    jax.tree.map(np.testing.assert_array_equal, params, loaded)
