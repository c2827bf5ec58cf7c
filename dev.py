#!/usr/bin/env python3
"""Set-up and entry point for a fresh machine with only Python >= 3.11 and pip.

    python3 dev.py train [rnn-jax train options]   # the main job: a real training run on the CPU
    python3 dev.py test  [pytest options]          # the test suite: the default stage, then the slow stage
    python3 dev.py test --fast | --slow [-m EXPR]  # one stage (-m narrows it)

Each command first makes ``.venv`` beside this file and installs the package into it (again only
when setup.cfg or pyproject.toml changed), then runs inside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import venv

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
BIN = os.path.join(VENV, "Scripts" if os.name == "nt" else "bin")
PYTHON = os.path.join(BIN, "python")


def _stamp() -> str:
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        with open(os.path.join(ROOT, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def _installed(stamp_file: str) -> bool:
    if not os.path.exists(stamp_file):
        return False
    with open(stamp_file) as f:
        return f.read() == _stamp()


@contextlib.contextmanager
def _install_lock():
    """Holds an exclusive lock on this file, so that two dev.py commands started together in a fresh checkout
    (the README's train and test) do not run pip into the same .venv at once: the second waits, then finds the
    install done. Without it one of them died inside pip."""
    if fcntl is None:  # not Linux/macOS: no lock, as before
        yield
        return
    with open(os.path.abspath(__file__), "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("dev.py: another dev.py is installing into .venv; waiting for it", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_environment() -> None:
    """Creates .venv and installs rnn-jax with its test extras, unless that is already done."""
    if sys.version_info < (3, 11):
        sys.exit(f"dev.py: rnn-jax needs Python >= 3.11, this is {sys.version.split()[0]}")
    stamp_file = os.path.join(VENV, ".rnn-jax-installed")
    if _installed(stamp_file):
        return
    with _install_lock():
        if not _installed(stamp_file):  # another dev.py may have installed while this one waited
            _install(stamp_file)


def _install(stamp_file: str) -> None:
    if not os.path.exists(PYTHON):
        print(f"dev.py: creating {VENV}", flush=True)
        try:
            venv.EnvBuilder(with_pip=True).create(VENV)
        except Exception as error:  # e.g. Debian without python3-venv
            sys.exit(
                f"dev.py: could not create a virtual environment ({error}); "
                "on Debian/Ubuntu install it with: apt-get install python3-venv"
            )
    print("dev.py: installing rnn-jax and its dependencies into .venv (first run only)", flush=True)
    subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]"], check=True)
    with open(stamp_file, "w") as f:
        f.write(_stamp())


def test_stages(rest: list[str]) -> tuple[list[str], list[str]]:
    """The pytest marker of each stage that ``dev.py test`` runs, and the pytest options ``rest`` without dev.py's
    own. Stage 1: the default suite (a few minutes). Stage 2: the slow tests (the studies' --quick runs), only when
    stage 1 passed. --fast runs stage 1 alone, --slow stage 2 alone; a user's ``-m EXPR`` narrows that one stage
    (pytest's last -m wins, so it replaced the stage's marker: both stages then ran the same tests). With pytest's
    ``-h``/``--help`` one stage runs (it printed the same help twice).

    Raises:
      ValueError: for --fast with --slow, or -m without one of them.
    """
    fast, slow = "--fast" in rest, "--slow" in rest
    if fast and slow:
        raise ValueError("--fast and --slow exclude each other (--fast: the default stage; --slow: the slow tests)")
    stages = ["not slow"] if fast else ["slow"] if slow else ["not slow", "slow"]
    kept, marker, take = [], None, False
    for arg in rest:
        if take:
            marker, take = arg, False
        elif arg == "-m":
            take = True
        elif arg.startswith("-m"):  # -mEXPR
            marker = arg[2:]
        elif arg not in ("--fast", "--slow"):
            kept.append(arg)
    if marker is not None or take:
        if len(stages) > 1:
            raise ValueError("-m replaces the stages' markers; pass it with --fast or --slow, which it then narrows")
        if take:
            raise ValueError("-m: expected a marker expression after it")
        stages = [f"({stages[0]}) and ({marker})"]
    if "-h" in kept or "--help" in kept:  # pytest's help, which no marker changes: once, not once per stage
        stages = stages[:1]
    return stages, kept


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if not argv or argv[0] not in ("train", "test"):
        problem = f"unknown command {argv[0]!r}" if argv else "expected a command"
        print(f"dev.py: {problem}; the commands are train and test\n{__doc__}", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "test":
        try:  # before the install, which a fresh machine would otherwise wait for
            stages, rest = test_stages(rest)
        except ValueError as error:
            print(f"dev.py test: {error}", file=sys.stderr)
            return 2
    ensure_environment()
    env = dict(os.environ)
    if command == "train":
        return subprocess.call([os.path.join(BIN, "rnn-jax"), "train", *rest], cwd=ROOT, env=env)
    # Both stages run on pytest-xdist workers, one per core (at most 4; "-n N" after `test` chooses): the suite is
    # mostly XLA compilation, which runs on one core, so two workers on two cores take about 60% of the time.
    if not any(a.startswith(("-n", "--numprocesses")) for a in rest):
        rest = ["-n", str(min(os.cpu_count() or 1, 4)), *rest]
    # The suite compiles many identical XLA programs (the same step traced by different tests, workers, stages and
    # CLI subprocesses): one JAX compilation cache, new for this run and removed after it, compiles each once. A hit
    # loads the executable the miss compiled, so the results are bit for bit those of compiling again; on the 2-core
    # Zen 3 machine it took about a tenth off the default stage. A cache directory set by the caller is kept.
    with tempfile.TemporaryDirectory(prefix="rnn-jax-test-compilation-cache-") as cache:
        if "JAX_COMPILATION_CACHE_DIR" not in env:
            env.update(
                JAX_COMPILATION_CACHE_DIR=cache,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
            )
        for marker in stages:
            print(f"dev.py: test stage '-m {marker}'", flush=True)
            code = subprocess.call([PYTHON, "-m", "pytest", "-m", marker, *rest], cwd=ROOT, env=env)
            if code != 0:
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
