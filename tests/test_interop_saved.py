"""Saved models load back with their configuration; a config that does not build the parameters, an incompatible
format version and a damaged file are clear errors that name what is wrong."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

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
    with pytest.raises(saved.IncompatibleSavedModel, match="version 99, but this rnn-jax reads version 1"):
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
}


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
