"""Data-parallel training on JAX's own sharding: the batch split over a 1-D device mesh, the rest replicated.

    mesh   = Mesh(devices[:N], ("batch",))
    state  -> NamedSharding(mesh, P())                 replicated: step, parameters, optimizer state
    batch  -> NamedSharding(mesh, P(None, "batch"))    inputs, targets, mask [T, B, ...]: split along B
              NamedSharding(mesh, P("batch"))          lengths [B] (and a TBPTT carry [B, H])

The jitted train step is not changed: `jax.jit` follows the shardings of its arguments (GSPMD), so
each device unrolls its B / N sequences, XLA inserts the all-reduce that combines the gradient
over the devices, and every device applies the same update to its copy of the parameters. The
losses and parameters equal those of a one-device run up to the order of floating-point sums.

Multi-host: call ``jax.distributed.initialize()`` in every process before anything else touches
JAX; `make_mesh` then spans the devices of all processes, and every process builds the same
global batch (batches are pure functions of their key) and contributes the shards its own devices
hold (`jax.make_array_from_callback`). See the README's "Several devices and several hosts".

References:
  Xu, Y. et al. (2021). GSPMD: general and scalable parallelization for ML computation graphs.
  arXiv:2105.04663.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rnn_jax.tasks.base import Batch

AXIS = "batch"  # the name of the mesh's one axis


def make_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``devices`` devices (all of them when None), its axis named ``"batch"``.

    Raises:
      ValueError: if ``devices`` is not a positive integer or exceeds the devices JAX sees.
    """
    available = jax.devices()
    if devices is None:
        devices = len(available)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ValueError(f"devices: expected a positive integer, got {devices!r}")
    if devices > len(available):
        raise ValueError(
            f"devices: asked for {devices} devices, but JAX sees {len(available)} "
            f"({available[0].platform}); on the CPU, XLA_FLAGS=--xla_force_host_platform_device_count={devices} "
            "makes that many"
        )
    return Mesh(np.asarray(available[:devices]), (AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
    """Raises a ValueError naming both numbers unless ``batch_size`` divides evenly across the mesh."""
    n = mesh.size
    if batch_size % n:
        raise ValueError(
            f"{name}: a batch of {batch_size} sequences does not divide evenly across {n} devices; "
            f"use a batch size that is a multiple of {n}, or --devices with a divisor of {batch_size}"
        )


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def split_along(mesh: Mesh, ndim: int, axis: int) -> NamedSharding:
    """An array of rank ``ndim`` split along ``axis`` over the mesh, whole along the others."""
    spec = [None] * ndim
    spec[axis] = AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    # multi-host: every process holds the same global value; each supplies its own devices' shards
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` with every leaf replicated over the mesh (the train state: step, parameters, optimizer state)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: _put(x, sharding), tree)


def shard(tree: Any, mesh: Mesh, axis: int) -> Any:
    """``tree`` with every leaf split along its ``axis`` over the mesh (e.g. a [B, H] carry with ``axis=0``)."""
    return jax.tree.map(lambda x: _put(x, split_along(mesh, x.ndim, axis)), tree)


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
    """``batch`` split along its batch axis B: axis 1 of inputs, targets and mask [T, B, ...], axis 0 of lengths.

    Raises:
      ValueError: if B does not divide evenly across the mesh's devices.
    """
    check_batch_size(batch.lengths.shape[0], mesh)
    inputs, targets, mask = shard((batch.inputs, batch.targets, batch.mask), mesh, axis=1)
    return Batch(inputs, targets, mask, shard(batch.lengths, mesh, axis=0))


def shard_or_replicate(batch: Batch, mesh: Mesh) -> Batch:
    """`shard_batch` when B divides across the devices, else replicated (held-out sets of any size)."""
    if batch.lengths.shape[0] % mesh.size == 0:
        return shard_batch(batch, mesh)
    return replicate(batch, mesh)
