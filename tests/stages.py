"""Which cases of a parameter grid run in the default test stage, and which wait for the slow one.

The default stage (`python3 dev.py test --fast`) keeps a fast representative of every invariant; the slow stage
(`-m slow`, run second by `dev.py test` and by CI) runs the rest of each grid, so every case still runs in CI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest


def slow_unless(default: Sequence[Any], values: Sequence[Any], ids: Sequence[str] | None = None) -> list:
    """``values`` for one ``pytest.mark.parametrize`` axis, those not in ``default`` marked slow."""
    ids = [None] * len(values) if ids is None else ids
    return [
        pytest.param(value, id=name, marks=() if value in default else pytest.mark.slow)
        for value, name in zip(values, ids, strict=True)
    ]
