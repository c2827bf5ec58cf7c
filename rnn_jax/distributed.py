"""Data-parallel training on JAX's own sharding: the batch split over a 1-D device mesh, the rest replicated.

    mesh   = Mesh(devices[:N], ("batch",))
    state  -> NamedSharding(mesh, P())                 replicated: step, parameters, optimizer state
    batch  -> NamedSharding(mesh, P(None, "batch"))    inputs, targets, mask [T, B, ...]: split along B
              NamedSharding(mesh, P("batch"))          lengths [B] (and a TBPTT carry [B, H])

The gradient is taken per device (`value_and_grad`, a `jax.shard_map`): each device unrolls and
differentiates its B / N sequences, and ONE all-reduce after the backward pass combines the N
gradients, each weighted by its share of the scored steps, so the result is the whole batch's
gradient. The rest of the jitted step (clipping, the optimizer update) follows the shardings of
its arguments (GSPMD), and every device applies the same update to its copy of the parameters.
Left to GSPMD alone, the gradient's sums over time (the weight gradients that a backward scan
accumulates in its carry, replicated) would be all-reduced inside the loop, once per time step:
on two CPU devices that made the fast path's train step 2x slower than one device's. A TBPTT
update does the same per window (`mean_over_devices`). The losses and parameters equal those of a
one-device run up to the order of floating-point sums.

Multi-host: call ``jax.distributed.initialize()`` in every process before anything else touches
JAX; `make_mesh` then spans the devices of all processes, and every process builds the same
global batch (batches are pure functions of their key) and contributes the shards its own devices
hold (`jax.make_array_from_callback`). See the README's "Several devices and several hosts".

References:
  Xu, Y. et al. (2021). GSPMD: general and scalable parallelization for ML computation graphs.
  arXiv:2105.04663.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rnn_jax.tasks.base import Batch

AXIS = "batch"  # the name of the mesh's one axis


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def present_cpu_devices(count: int) -> bool:
    """Makes JAX's CPU backend present ``count`` devices (``jax_num_cpu_devices``); returns whether it took effect.

    XLA:CPU runs each of a recurrent step's small products on one core (it splits only large
    products over its threads), so a data-parallel step over one CPU device per core is how a
    train step uses the other cores. JAX fixes the count when its backends start: call this first.
    It does nothing (False) once they have started, or when ``XLA_FLAGS`` sets
    ``--xla_force_host_platform_device_count`` (the user's count stands). Other backends (GPU, TPU)
    are not affected.

    Raises:
      ValueError: if ``count`` is not a positive integer.
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count: expected a positive integer, got {count!r}")
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return False
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the backends have started; the count is fixed
        return False
    return True


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
            f"({available[0].platform}); on the CPU, `present_cpu_devices({devices})` before JAX starts (or "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices}) makes that many"
        )
    return Mesh(np.asarray(available[:devices]), (AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh | int, name: str = "batch_size") -> None:
    """Raises a ValueError naming both numbers unless ``batch_size`` divides evenly across the mesh (or across that
    many devices, before they are made: the command line checks ``--devices`` so)."""
    n = mesh if isinstance(mesh, int) else mesh.size
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


def _put(x: Any, sharding: NamedSharding) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):  # a shape only: placed for lowering, nothing allocated
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    # multi-host: every process holds the same global value; each supplies its own devices' shards
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` with every leaf replicated over the mesh (the train state: step, parameters, optimizer state).

    Here and in `shard` a leaf may be a `jax.ShapeDtypeStruct` (from `jax.eval_shape`): it comes back as one with
    the sharding, for lowering a jitted function before its arguments exist."""
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


def _batch_specs(batch: Batch) -> Batch:
    """`shard_batch`'s split as `jax.shard_map` specs (None where the batch has no mask or lengths)."""
    along_b = PartitionSpec(None, AXIS)  # [T, B, ...]
    mask = None if batch.mask is None else along_b
    return Batch(along_b, along_b, mask, None if batch.lengths is None else PartitionSpec(AXIS))


def scored_steps(batch: Batch, dtype: jnp.dtype) -> jax.Array:
    """How many (step, sequence) outputs the loss scores, in ``dtype``: the mask's sum, or T * B without a mask."""
    if batch.mask is None:
        return jnp.asarray(batch.inputs.shape[0] * batch.inputs.shape[1], dtype)
    return jnp.sum(batch.mask, dtype=dtype)


def value_and_grad(loss_fn: Callable[[Any, Batch], jax.Array], mesh: Mesh) -> Callable[[Any, Batch], Any]:
    """``(params, batch) -> (loss, grads)`` of ``loss_fn``, data parallel over ``mesh`` with one all-reduce.

    ``loss_fn`` is a mean over the scored steps (`rnn_jax.tasks.loss`). Device k holds n_k of the N
    scored steps and computes its own mean L_k and gradient g_k; the batch's loss is the weighted sum

        L = sum_k (n_k / N) L_k,      dL/dtheta = sum_k (n_k / N) g_k,

    one `psum` of the weighted (loss, gradient) pair, after the backward pass. ``params`` are
    replicated; ``batch`` is split along B (`shard_batch`).
    """

    def local(params: Any, batch: Batch) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        scored = scored_steps(batch, loss.dtype)  # n_k
        weighted = jax.tree.map(lambda g: g * scored.astype(g.dtype), (loss, grads))
        (loss, grads), total = jax.lax.psum((weighted, scored), AXIS)  # one all-reduce: each costs a rendezvous
        return jax.tree.map(lambda g: g / jnp.maximum(total, 1).astype(g.dtype), (loss, grads))

    def combined(params: Any, batch: Batch) -> Any:
        # check_vma=False: the unrolls' scans start from unsharded zeros (the shard_map docs' "scan-vma")
        run = jax.shard_map(
            local, mesh=mesh, in_specs=(PartitionSpec(), _batch_specs(batch)), out_specs=PartitionSpec(),
            check_vma=False,
        )  # fmt: skip
        return run(params, batch)

    return combined


def mean_over_devices(
    window_gradients: Callable[..., tuple[jax.Array, Any, Any]], mesh: Mesh
) -> Callable[..., tuple[jax.Array, Any, Any]]:
    """A TBPTT window's ``(params, entering, padded_inputs, padded_targets, index) -> (loss, carried, grads)``,
    data parallel over ``mesh`` with one all-reduce.

    Each device runs its B / N streams (``entering`` and ``carried`` [B, H] split along B, the padded
    streams [N, B, ...] along axis 1); the loss and gradient are the devices' mean, which is the
    whole batch's because every stream scores the same k1 steps of its window.
    """

    def local(params, entering, padded_inputs, padded_targets, index):
        loss, carried, grads = window_gradients(params, entering, padded_inputs, padded_targets, index)
        loss, grads = jax.lax.pmean((loss, grads), AXIS)
        return loss, carried, grads

    whole, rows, along_b = PartitionSpec(), PartitionSpec(AXIS), PartitionSpec(None, AXIS)
    return jax.shard_map(
        local, mesh=mesh, in_specs=(whole, rows, along_b, along_b, whole), out_specs=(whole, rows, whole),
        check_vma=False,
    )  # fmt: skip
