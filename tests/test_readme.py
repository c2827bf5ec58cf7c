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


def test_two_set_up_commands_started_together_install_once(tmp_path, monkeypatch):
    """The README's two commands, started at once in a fresh checkout, must not both run pip into one .venv (one
    of them died inside pip): the second waits on dev.py's lock and then finds the install done."""
    import importlib.util
    import threading
    import time

    spec = importlib.util.spec_from_file_location("dev_under_test", ROOT / "dev.py")
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    if dev.fcntl is None:
        pytest.skip("no fcntl on this platform: dev.py installs without a lock there")
    monkeypatch.setattr(dev, "VENV", str(tmp_path / ".venv"))
    installs = []

    def slow_install(stamp_file):
        installs.append(stamp_file)
        time.sleep(0.5)  # long enough that the other command checks the stamp while this one installs
        pathlib.Path(stamp_file).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(stamp_file).write_text(dev._stamp())

    monkeypatch.setattr(dev, "_install", slow_install)
    commands = [threading.Thread(target=dev.ensure_environment) for _ in range(2)]
    for command in commands:
        command.start()
    for command in commands:
        command.join()
    assert len(installs) == 1
