"""The README's Python example runs as written, and its set-up commands are the ones CI uses."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_example_runs(standard_promotion, capsys):
    """Runs under standard promotion, as a user's session would."""
    block = re.search(r"```python\n(.*?)```", README, re.S)
    assert block is not None
    exec(compile(block.group(1), "README.md", "exec"), {})
    loss = float(re.search(r"loss after 200 steps: ([0-9.]+)", capsys.readouterr().out).group(1))
    assert loss < 0.05  # the targets are constant 1, which the read-out bias learns quickly


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["python3 dev.py train", "python3 dev.py test"]
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set", "cd"))
    ]
    assert ci == ["python3 dev.py test"]


@pytest.mark.parametrize("name", ["setup.cfg", "pyproject.toml", "dev.py"])
def test_packaging_files_exist(name):
    assert (ROOT / name).is_file()
