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


@pytest.fixture
def dev(monkeypatch):
    """dev.py as a module, its install and its pytest runs replaced: ``dev.calls`` holds each command it would run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dev_commands_under_test", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.calls = []
    monkeypatch.setattr(module, "ensure_environment", lambda: None)
    monkeypatch.setattr(module.subprocess, "call", lambda command, **kwargs: module.calls.append(command) or 0)
    return module


def test_dev_help_prints_the_usage_and_exits_0(dev, capsys):
    assert dev.main(["--help"]) == 0 and dev.main(["-h"]) == 0
    assert "python3 dev.py test" in capsys.readouterr().out and dev.calls == []


@pytest.mark.parametrize(("argv", "message"), [(["bogus"], "unknown command 'bogus'"), ([], "expected a command")])
def test_dev_without_a_known_command_says_so_and_exits_2(dev, capsys, argv, message):
    assert dev.main(argv) == 2
    err = capsys.readouterr().err
    assert f"dev.py: {message}" in err and "python3 dev.py test" in err and dev.calls == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [  # --fast --slow ran the slow stage alone; -m replaced each stage's marker, so one suite ran twice
        (["--fast", "--slow"], "dev.py test: --fast and --slow exclude each other"),
        (["-m", "not slow"], "dev.py test: -m replaces the stages' markers; pass it with --fast or --slow"),
        (["-mgpu"], "dev.py test: -m replaces the stages' markers"),
    ],
)
def test_dev_test_refuses_options_that_undo_its_stages(dev, capsys, argv, message):
    assert dev.main(["test", *argv]) == 2
    assert message in capsys.readouterr().err and dev.calls == []


@pytest.mark.parametrize("option", ["--help", "-h"])
def test_dev_test_prints_pytests_help_once(dev, option):
    assert dev.main(["test", option]) == 0
    [command] = dev.calls
    assert command[-1] == option


def test_dev_test_runs_a_users_marker_within_the_chosen_stage(dev):
    assert dev.main(["test", "--fast", "-m", "not gpu_only", "-q"]) == 0
    [command] = dev.calls
    pytest_options = command[command.index("pytest") + 1 :]  # after `python -m pytest`
    assert pytest_options[:2] == ["-m", "(not slow) and (not gpu_only)"] and pytest_options.count("-m") == 1
    assert pytest_options[-1] == "-q"
    dev.calls.clear()
    assert dev.main(["test", "--slow", "-mgpu"]) == 0
    [command] = dev.calls
    assert command[command.index("pytest") + 1 :][:2] == ["-m", "(slow) and (gpu)"] and "-mgpu" not in command
