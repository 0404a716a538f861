"""Device meshes and placement rules: the batch is split over the `data` axis, parameters replicated.

Sharding is decided here, by rule, and nowhere in model code: jitted functions receive
inputs already placed and XLA propagates the layout through the program.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all (or the given) devices, across every host."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA,))


def shard_batch(tree, mesh: Mesh):
    """Place every array with its leading (batch) axis split across the mesh."""

    def place(x):
        if x.shape[0] % mesh.size:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by the {mesh.size} devices of the mesh")
        return jax.device_put(x, NamedSharding(mesh, P(DATA)))

    return jax.tree.map(place, tree)


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def param_sharding(tree, mesh: Mesh, min_size: int | None = None):
    """The sharding rule for parameters (and optimizer state shaped like them).

    Small tensors are replicated. With `min_size`, a tensor of at least that many elements is
    split over the mesh along its largest axis that the device count divides (FSDP-style);
    XLA inserts the gathers. Returns a tree of NamedShardings matching `tree`.
    """

    def rule(x):
        if min_size is not None and x.size >= min_size:
            for axis in sorted(range(x.ndim), key=lambda a: -x.shape[a]):
                if x.shape[axis] % mesh.size == 0:
                    spec = [None] * x.ndim
                    spec[axis] = DATA
                    return NamedSharding(mesh, P(*spec))
        return NamedSharding(mesh, P())

    return jax.tree.map(rule, tree)


def global_batch(local_tree, mesh: Mesh, batch_axis: int = 0):
    """Per-process numpy batches -> global arrays split over `data` along `batch_axis`.

    Each process passes its own slice of the global batch (what its data shard produced); on
    one process this is the whole batch.
    """
    spec = [None] * (batch_axis + 1)
    spec[batch_axis] = DATA
    sharding = NamedSharding(mesh, P(*spec))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_tree)
