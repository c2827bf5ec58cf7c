"""Saved models load back with their configuration; an incompatible format version is a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rnn_jax import cells
from rnn_jax.config import ModelConfig
from rnn_jax.interop import saved


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
