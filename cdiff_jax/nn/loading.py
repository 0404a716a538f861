"""Fill a Flax module from an official state dict by a key map, strictly, with every problem in one error.

Every ported network (LPIPS, the FID Inception, the face parser, ArcFace, ...) is loaded the same way:
build the module abstractly, map each of our variable paths to the official key, convert the layout
(`to_flax_layout`), check the shape, and fail once naming the first few missing, misshaped or unused
keys -- as torch's strict `load_state_dict` would, so a file of the wrong network never loads quietly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdiff_jax.weights.layout import to_flax_layout
from cdiff_jax.weights.state_dict_io import CheckpointReadError


def variable_paths(model: nnx.Module) -> list[str]:
    """Our dotted variable paths (`blocks.0.conv.kernel`), parameters and statistics alike."""
    return [".".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model))]


def load_state_dict(
    model: nnx.Module,
    tensors: Mapping[str, np.ndarray],
    official_key: Mapping[str, str],
    *,
    source: str,
    network: str,
    ignored: Callable[[str], bool] = lambda key: False,
) -> nnx.Module:
    """`model` (an abstract one from `nnx.eval_shape` is fine) with every variable read from `tensors`.

    `official_key` maps each of our paths to its key; file keys no path uses are an error unless
    `ignored(key)` (e.g. BatchNorm's `num_batches_tracked`). Floats are upcast to float32 exactly.
    """
    state = nnx.state(model)
    problems, used = [], set()
    for path, variable in nnx.to_flat_state(state):
        ours = ".".join(map(str, path))
        key = official_key[ours]
        used.add(key)
        if key not in tensors:
            problems.append(f"missing {key}")
            continue
        value = to_flax_layout(np.asarray(tensors[key], np.float32), str(path[-1]))
        if value.shape != variable.shape:
            problems.append(f"{key} has shape {value.shape}, expected {tuple(variable.shape)}")
            continue
        variable.set_value(jnp.asarray(value))
    unused = [key for key in tensors if key not in used and not ignored(key)]
    problems += [f"unexpected {key}" for key in unused]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointReadError(
            f"{source}: not {network} weights: {'; '.join(problems[:5])}{more}; pass the {network} file"
        )
    nnx.update(model, state)
    return model
