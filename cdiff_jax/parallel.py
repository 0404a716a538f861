"""Device meshes and placement rules: the batch is split over the `data` axis, parameters replicated.

Sharding is decided here, by rule, and nowhere in model code: jitted functions receive
inputs already placed and XLA propagates the layout through the program.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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
