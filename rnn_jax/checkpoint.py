"""Checkpoints of the whole training position, written and read with orbax-checkpoint.

A checkpoint is everything the train loop needs to go on at step ``n + 1`` exactly as if it had
never stopped (`Position`): the `TrainState` (step ``n``, parameters, optimiser state), the state
carried into the next TBPTT window (empty on the random-batch path, whose batch ``n + 1`` is drawn
from ``fold_in(key, n + 1)``; the window index is the step), and the raw data of the RNG key of the
training batches. Beside it, in the same step directory, a JSON record holds the format version, the
run's config and a SHA-256 digest of every array, so that a checkpoint is refused, with an error
naming its directory, when it was written by another format, by an incompatible config, or has been
damaged since (orbax itself does not check array contents). A restore first compares the template's
arrays (their paths, shapes and dtypes) with those the checkpoint records, so that a template of
another model is reported as such, never as damage; a step is saved once, never replaced.

Layout: ``WORKDIR/checkpoints/<step>/{state, meta}``, the last ``keep`` steps kept by orbax's
`CheckpointManager`. A save is written into ``<step>.orbax-checkpoint-tmp-*`` and renamed to ``<step>``
only when complete (orbax's atomic finalisation on a local file system), so a process killed at any
moment, during a save included, leaves the earlier checkpoints untouched and at most an unfinished
temporary directory, which is ignored and removed by the next run. (No fsync is made: the guarantee
covers a killed process, not a power cut.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from rnn_jax import _checks
from rnn_jax.config import Config

FORMAT_VERSION = 2  # 2: the optimiser state is `optax.flatten`'s flat vectors (`rnn_jax.optim.make_optimizer`)

# Run options that may differ between a run and its resumption: they change what is reported or
# where, never the sequence of updates. Every other field of the config must be equal, but for run.steps where
# `steps_change_refused` allows it.
RESUMABLE_CHANGES = frozenset(
    {
        "out",
        "progress",
        "resume",
        "log_every",
        "eval_every",
        "eval_batches",
        "checkpoint_every",
        "keep_checkpoints",
        "tensorboard",
    }
)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or restored; the message names the directory and the reason."""


class Position(NamedTuple):
    """Everything a run needs to continue at the next step exactly as if it had never stopped."""

    state: Any  # train.TrainState: step [] int32, params, opt_state
    carried: Any  # TBPTT: the state entering the next window (the cell's carry, [B, H] leaves); else ()
    key: jax.Array  # [2] uint32: jax.random.key_data of the training batches' (or stream's) key


def directory_of(workdir: str) -> str:
    """Where a run writing to ``workdir`` keeps its checkpoints."""
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def digest(tree: Any) -> str:
    """SHA-256 over every leaf's dtype, shape and bytes, in the tree's order."""
    sha = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        array = np.asarray(leaf)
        sha.update(f"{array.dtype}{array.shape}".encode())
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()


def config_differences(saved: dict[str, Any], current: dict[str, Any], step: int | None = None) -> list[str]:
    """``"section.field: checkpoint A, now B"`` for every field that differs and must not.

    A field the checkpoint lacks (written by an rnn-jax from before the field existed) counts as the
    field's default, which is what that older rnn-jax computed with. ``run.steps`` may differ when
    `steps_change_refused` finds no reason against it for a checkpoint of ``step`` (None: it may not).
    """
    defaults = Config().to_dict()
    differences = []
    for section in sorted(set(saved) | set(current)):
        old = {**defaults.get(section, {}), **saved.get(section, {})}
        new = current.get(section, {})
        for name in sorted(set(old) | set(new)):
            if section == "run" and name in RESUMABLE_CHANGES:
                continue
            before, now = old.get(name, "<absent>"), new.get(name, "<absent>")
            if before != now:
                difference = f"{section}.{name}: checkpoint {before!r}, now {now!r}"
                if section == "run" and name == "steps" and step is not None:
                    reason = steps_change_refused(current, step)
                    if not reason:
                        continue
                    difference += f" ({reason})"
                differences.append(difference)
    return differences


def steps_change_refused(current: dict[str, Any], step: int) -> str:
    """Why a run resumed from a checkpoint of ``step`` may not run to another ``run.steps`` than the run that wrote
    it, or "" when it may.

    The updates of a run do not depend on its length, so that a run resumed with more steps (or fewer, but no fewer
    than the checkpoint's) ends where a run started with that many would, except where the length enters them: a
    learning-rate schedule other than "constant" decays over the run's length, and truncated BPTT's stream is drawn
    for it.
    """
    schedule = current.get("optim", {}).get("schedule", "constant")
    if schedule != "constant":
        return (
            f"the {schedule!r} learning-rate schedule spans the run's length, so a run of another length trains "
            "differently from its first step; --steps can change on resume only with the constant schedule"
        )
    if current.get("run", {}).get("tbptt_k1") is not None:
        return "truncated BPTT's stream is drawn for the run's length, so --steps cannot change on resume with it"
    if current["run"]["steps"] < step:
        return f"the checkpoint is of step {step}, past the new --steps"
    return ""


def open_run(workdir: str | None, config: Any, start: Position) -> tuple[Checkpoints | None, Position]:
    """The run's `Checkpoints` (None without a ``workdir``) and the position to start from: the newest
    checkpoint when ``config.run.resume`` and there is one, else ``start`` (which also serves as the template)."""
    if workdir is None:
        return None, start
    run = config.run
    checkpoints = Checkpoints(
        directory_of(workdir), config, every=run.checkpoint_every, keep=run.keep_checkpoints, resume=run.resume
    )
    if not run.resume:
        return checkpoints, start
    try:
        return checkpoints, checkpoints.restore_latest(start) or start
    except BaseException:
        checkpoints.close()
        raise


class Checkpoints:
    """The checkpoints of one run: ``save`` every ``every`` steps and at the last, ``restore_latest``.

    Args:
      directory: the checkpoint directory (`directory_of(workdir)`).
      config: the run's `Config` (a dataclass); stored with every checkpoint and checked on restore.
      every: save at every multiple of this step (0: only at the last step).
      keep: how many of the most recent checkpoints to keep (>= 1).
      resume: whether the run continues from this directory; without it, a directory that already
        holds checkpoints is refused rather than mixed with a new run.
      read_only: only ``restore_latest`` (as `rnn_jax.train.load_trained` does): nothing is created, and a save
        under way in the directory (a run still training) is left alone, where a writer first deletes the
        unfinished saves it finds.
    """

    def __init__(self, directory: str, config: Any, *, every: int, keep: int, resume: bool, read_only: bool = False):
        if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 0:  # True was every=1
            raise ValueError(f"checkpoint_every: expected a non-negative integer, got {every!r}")
        keep = _checks.positive_int("keep_checkpoints", keep)
        self.directory, self.every, self._read_only = directory, int(every), read_only
        self._config = dataclasses.asdict(config)
        writes = {"max_to_keep": keep, "create": True, "cleanup_tmp_directories": True}
        reads = {"create": False, "cleanup_tmp_directories": False}  # orbax's read_only warns at every open
        options = ocp.CheckpointManagerOptions(**(reads if read_only else writes), enable_async_checkpointing=False)
        # handlers named up front (not only item names): `item_metadata` reads the stored shapes before a restore
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
        latest = self._manager.latest_step()
        if not resume and latest is not None:
            self._manager.close()
            raise CheckpointError(
                f"{directory} already holds checkpoints (latest step {latest}): pass --resume to continue that run, "
                "or choose another --out"
            )

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def due(self, step: int, last_step: int) -> bool:
        """Whether the loop saves after ``step``."""
        return step == last_step or (self.every > 0 and step % self.every == 0)

    def save(self, position: Position) -> None:
        """Writes ``position`` as the checkpoint of its step (blocking; atomic on completion).

        A step is saved once: orbax skips, without a word, a step that is not after the newest checkpoint (a
        restore gave back the first save), so such a save is refused instead. Replacing a good checkpoint would
        first delete it, which the atomic save exists to avoid; the train loop saves each step at most once.

        Raises:
          ValueError: ``position.state.step`` is not a non-negative integer scalar.
          CheckpointError: the directory already holds a checkpoint of this step or a later one, or was opened
            ``read_only``.
        """
        step = _step_of(position)
        where = os.path.join(self.directory, str(step))
        if self._read_only:
            raise CheckpointError(f"{where}: cannot save, the checkpoints were opened read_only")
        latest = self._manager.latest_step()
        if latest is not None and step in self._manager.all_steps():
            raise CheckpointError(
                f"{where}: a checkpoint of step {step} already exists; a checkpoint is never replaced (the first "
                "save of a step is kept), so save each step once, or to another directory"
            )
        if latest is not None and step < latest:
            raise CheckpointError(
                f"{where}: step {step} is before the newest checkpoint in {self.directory}, step {latest}; "
                "checkpoints are saved in increasing step order"
            )
        meta = {"format_version": FORMAT_VERSION, "step": step, "config": self._config, "digest": digest(position)}
        saved = self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(position), meta=ocp.args.JsonSave(meta))
        )
        if not saved:  # every reason orbax has to skip is refused above; this keeps a new one from being silent
            raise CheckpointError(f"{where}: orbax-checkpoint declined to save step {step}")

    def restore_latest(self, template: Position) -> Position | None:
        """The newest checkpoint, in the structure, dtypes and shapes of ``template``; None when there is none.

        Raises:
          CheckpointError: the checkpoint has another format version, was written by an incompatible
            config or another RNG key, stores other arrays than ``template`` (paths, shapes or dtypes: the
            message says that the checkpoint is not damaged), cannot be read, or does not match its digest.
        """
        step = self._manager.latest_step()
        if step is None:
            return None
        where = os.path.join(self.directory, str(step))
        meta = self._read(step, where, meta=ocp.args.JsonRestore())["meta"]
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            version = meta.get("format_version") if isinstance(meta, dict) else None
            raise CheckpointError(
                f"{where}: checkpoint format version {version!r}, this rnn-jax reads version {FORMAT_VERSION}"
            )
        differences = config_differences(meta.get("config", {}), self._config, step)
        if differences:
            raise CheckpointError(
                f"{where}: written by an incompatible config, so resuming could not reproduce the run: "
                + "; ".join(differences)
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        mismatch = _template_differences(abstract, self._stored(step, where))
        if mismatch:
            more = f" (and {len(mismatch) - 3} more)" if len(mismatch) > 3 else ""
            raise CheckpointError(
                f"{where}: the template does not match the checkpoint of step {step}: {'; '.join(mismatch[:3])}"
                f"{more}. This is a mismatch with the template, not damage to the checkpoint (do not delete it): "
                "restore it with the model it was saved from"
            )
        position = Position(*self._read(step, where, state=ocp.args.StandardRestore(abstract))["state"])
        if digest(position) != meta.get("digest"):
            raise CheckpointError(f"{where}: the arrays do not match the digest written with them (corrupted)")
        if int(position.state.step) != step:
            raise CheckpointError(f"{where}: holds step {int(position.state.step)}, expected {step}")
        if not np.array_equal(jax.device_get(position.key), jax.device_get(template.key)):
            raise CheckpointError(f"{where}: written with another RNG key (another seed or PRNG implementation)")
        return position

    def _stored(self, step: int, where: str) -> dict[str, tuple[tuple[int, ...], str]]:
        """``{path: (shape, dtype)}`` of the arrays of the checkpoint of ``step``, from its metadata (nothing
        restored)."""
        try:
            tree = self._manager.item_metadata(step)["state"]
            if tree is None:
                raise ValueError("no metadata of the 'state' item")
            return _arrays(tree.tree)
        except Exception as error:  # a missing or damaged _METADATA file
            raise _damaged(where, error) from error

    def _read(self, step: int, where: str, **items) -> dict[str, Any]:
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:  # orbax and tensorstore raise many types for damaged files
            raise _damaged(where, error) from error

    def close(self) -> None:
        """Closes the manager after the deletion of unfinished saves it started in the background has ended: orbax
        0.11's ``close`` does not wait for it (its ``save`` does), so a run refused before its first save (a damaged
        checkpoint on ``--resume``) printed that thread's traceback at interpreter exit."""
        cleanup = getattr(self._manager, "_cleanup_tmp_directory_future", None)
        if cleanup is not None:  # best effort: close runs in `finally` blocks and must not hide the error raised
            with contextlib.suppress(Exception):
                cleanup.result()
        self._manager.close()


def _template_differences(template: Any, stored: dict[str, tuple[tuple[int, ...], str]]) -> list[str]:
    """``"template: PATH has shape A, the checkpoint stores B"`` (or dtype, or an array that only one side has)
    for every array where ``template`` (a tree of arrays or `jax.ShapeDtypeStruct`) and ``stored`` (`_arrays` of a
    checkpoint's metadata) differ, in the template's order, then the checkpoint's."""
    wanted, differences = _arrays(template), []
    for path, (shape, dtype) in wanted.items():
        if path not in stored:
            differences.append(f"template: {path} (shape {shape}, {dtype}) is not in the checkpoint")
            continue
        stored_shape, stored_dtype = stored[path]
        if shape != stored_shape:
            differences.append(f"template: {path} has shape {shape}, the checkpoint stores {stored_shape}")
        elif dtype != stored_dtype:
            differences.append(f"template: {path} has dtype {dtype}, the checkpoint stores {stored_dtype}")
    differences += [
        f"the checkpoint stores {path} (shape {shape}, {dtype}), the template has no such array"
        for path, (shape, dtype) in stored.items()
        if path not in wanted
    ]
    return differences


def _arrays(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"state.params.w_x": (shape, dtype name)}`` for every leaf of ``tree``: a NamedTuple's field and a dict's
    key give the same path (orbax stores NamedTuples as dicts), a sequence's entry its index."""
    arrays = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype  # a Python scalar has none
        arrays[jax.tree_util.keystr(path, simple=True, separator=".")] = (tuple(np.shape(leaf)), str(np.dtype(dtype)))
    return arrays


def _step_of(position: Position) -> int:
    """``position.state.step`` as an int, or a ValueError unless it is a non-negative integer scalar."""
    step = getattr(getattr(position, "state", None), "step", None)
    value = None if step is None else np.asarray(jax.device_get(step))
    if value is None or value.ndim != 0 or not np.issubdtype(value.dtype, np.integer) or value < 0:
        raise ValueError(f"position.state.step: expected a non-negative integer scalar, got {step!r}")
    return int(value)


def _damaged(where: str, error: Exception) -> CheckpointError:
    """The error for a checkpoint whose files orbax or tensorstore cannot read."""
    return CheckpointError(
        f"{where}: cannot read the checkpoint ({error_summary(error)}); it is damaged "
        "or incomplete. Delete this step's directory to resume from the one before."
    )


def error_summary(error: BaseException) -> str:
    """``"Type: first line"`` of an error from orbax or tensorstore, without the TensorStore spec (dozens of lines)
    that orbax appends to it, at most 300 characters of text."""
    detail = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0][:300]
    return f"{type(error).__name__}: {detail}"
