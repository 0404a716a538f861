"""The training loop, readable in one sitting: data -> compiled steps -> logs and checkpoints.

One trainer for every stage: the stage only decides which parameters are trainable. It
resumes from the latest checkpoint in the work directory, saves and exits cleanly on SIGTERM
or SIGINT, stops on a non-finite loss naming the last good checkpoint, and at intervals
writes validation loss, sample grids and checkpoints (last K plus the best).
"""

from __future__ import annotations

import pathlib
import signal

import jax
import numpy as np
from flax import nnx

from cdiff_jax.checkpoint import load_system, save_system
from cdiff_jax.config import load_config
from cdiff_jax.data.celeba_multimodal import data_sources
from cdiff_jax.data.pipeline import ToModelInputs, make_loader, restore_iterator_state, save_iterator_state
from cdiff_jax.diffusion.schedule import make_schedule
from cdiff_jax.parallel import data_mesh, global_batch, param_sharding, replicate
from cdiff_jax.sampling import SamplerSettings, sample
from cdiff_jax.system import LatentDiffusionSystem, init_system
from cdiff_jax.train.checkpoints import TrainCheckpoints
from cdiff_jax.train.config import TrainConfig
from cdiff_jax.train.metrics import MetricsWriter, ProgressLine
from cdiff_jax.train.objectives import BATCH_KEYS, diffusion_loss
from cdiff_jax.train.step import StepSettings, adamw, init_train_state, train_steps, trainable_filter, trainable_prefixes
from cdiff_jax import viz


class TrainingDiverged(RuntimeError):
    pass


def build_system(cfg: TrainConfig) -> LatentDiffusionSystem:
    """The starting system: from our checkpoint directory or a config, then `init_from` subtrees."""
    source = pathlib.Path(cfg.system.partition(":")[0])
    system = load_system(source) if source.is_dir() else init_system(load_config(cfg.system), cfg.seed)
    state = nnx.state(system, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    for prefix, directory in cfg.init_from:
        parts = tuple(int(p) if p.isdigit() else p for p in prefix.split("."))
        donor = dict(nnx.to_flat_state(nnx.state(load_system(directory), nnx.Param)))
        copied = 0
        for path, value in donor.items():
            if path[: len(parts)] != parts:
                continue
            if path not in flat or flat[path].shape != value.shape:
                raise ValueError(f"init_from {directory}: {'.'.join(map(str, path))} does not fit the system being trained")
            flat[path].set_value(value.get_value())
            copied += 1
        if not copied:
            raise ValueError(f"init_from {directory}: it has no parameters under {prefix!r}")
    nnx.update(system, state)
    return system


def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and before // every != after // every


class _StopRequest:
    """Remembers a SIGTERM/SIGINT so the loop can save and leave at the next step boundary."""

    def __init__(self):
        self.signum = None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum

    def requested(self) -> bool:
        flag = np.asarray(self.signum is not None)
        if jax.process_count() > 1:  # every host stops at the same step
            from jax.experimental import multihost_utils

            flag = multihost_utils.process_allgather(flag).any()
        return bool(flag)


def train(cfg: TrainConfig, workdir: str | pathlib.Path) -> int:
    workdir = pathlib.Path(workdir)
    lead = jax.process_index() == 0
    if cfg.global_batch % jax.device_count():
        raise ValueError(f"global_batch {cfg.global_batch} must be divisible by the {jax.device_count()} devices")

    system = build_system(cfg)
    prefixes = trainable_prefixes(cfg.stage, system.cfg, cfg.modality)
    graphdef, params, frozen = nnx.split(system, trainable_filter(prefixes), ...)
    mesh = data_mesh()
    frozen = jax.device_put(frozen, param_sharding(frozen, mesh, cfg.fsdp_min_size))
    tx = adamw(cfg.learning_rate, cfg.weight_decay)
    state = init_train_state(params, tx)
    state = jax.device_put(state, param_sharding(state, mesh, cfg.fsdp_min_size))
    schedule = replicate(make_schedule(system.cfg.schedule), mesh)
    key = jax.random.key(cfg.seed)
    settings = StepSettings(condition_dropout=cfg.condition_dropout)

    sources = data_sources(cfg.data_dir, resolution=cfg.resolution, test_size=cfg.test_size)
    batches = iter(make_loader(sources["train"], global_batch=cfg.global_batch, seed=cfg.seed))

    checkpoints = TrainCheckpoints(workdir / "checkpoints", keep=cfg.keep_checkpoints)
    latest = checkpoints.latest_step()
    if latest is not None:
        state, data_state = checkpoints.restore(latest, state)
        restore_iterator_state(batches, data_state)
        if lead:
            print(f"resumed from {checkpoints.path(latest)}")

    writer = MetricsWriter(workdir / "train", enabled=lead)
    val_writer = MetricsWriter(workdir / "val", enabled=lead)
    progress = ProgressLine(cfg.steps)
    stop = _StopRequest()
    step = int(state.step)
    try:
        while step < cfg.steps:
            k = min(cfg.steps_per_call, cfg.steps - step)
            local = [next(batches) for _ in range(k)]
            stacked = {name: np.stack([b[name] for b in local]) for name in local[0]}
            state, metrics = train_steps(graphdef, frozen, state, global_batch(stacked, mesh, batch_axis=1),
                                         schedule, key, tx, settings)
            finite = np.asarray(metrics.finite)
            if not finite.all():
                bad = step + int(np.argmin(finite)) + 1
                last = checkpoints.latest_step()
                where = checkpoints.path(last) if last is not None else "none saved yet"
                raise TrainingDiverged(f"non-finite loss or gradient at step {bad}; last good checkpoint: {where}")
            before, step = step, int(state.step)
            losses = np.asarray(metrics.loss)
            progress.update(step, {"loss": float(losses.mean())}, examples_per_step=cfg.global_batch)
            if _crossed(before, step, cfg.log_every) or step == cfg.steps:
                writer.write(step, {"loss": float(losses.mean()), "grad_norm": float(np.mean(metrics.grad_norm)),
                                    "learning_rate": cfg.learning_rate})
            val_loss = None
            if _crossed(before, step, cfg.val_every):
                val_loss = validation_loss(cfg, graphdef, state.params, frozen, schedule, sources["test"], mesh)
                val_writer.write(step, {"loss": val_loss})
            if _crossed(before, step, cfg.sample_every):
                write_samples(cfg, graphdef, state.params, frozen, sources["test"], workdir / "samples" / f"{step:07d}.png")
            # Validated states are always saved, so the best one by validation loss can be kept.
            if _crossed(before, step, cfg.checkpoint_every) or val_loss is not None or step == cfg.steps:
                checkpoints.save(step, state, save_iterator_state(batches), val_loss)
            if stop.requested():
                checkpoints.save(step, state, save_iterator_state(batches), wait=True)
                if lead:
                    print(f"\nstopped by signal {stop.signum} at step {step}; saved {checkpoints.path(step)}")
                return 0
    finally:
        checkpoints.close()
        writer.close()
        val_writer.close()
    if jax.process_count() == 1:
        save_system(workdir / "system", nnx.merge(graphdef, state.params, frozen), overwrite=True)
        print(f"trained system written to {workdir / 'system'} (use it with sample.py --checkpoint)")
    return 0


def validation_loss(cfg, graphdef, params, frozen, schedule, source, mesh) -> float:
    """Mean loss over the first `val_batches` test batches, with fixed randomness per batch."""
    batch_size = min(cfg.global_batch, len(source))
    batch_size -= batch_size % jax.device_count()
    if not batch_size:
        raise ValueError(f"the test split has {len(source)} examples, fewer than the {jax.device_count()} devices")
    loader = make_loader(source, global_batch=batch_size, seed=0, shuffle=False)
    losses = []
    for i, batch in zip(range(cfg.val_batches), loader):
        batch = global_batch(batch, mesh)
        losses.append(float(_eval_loss(graphdef, params, frozen, batch, schedule, jax.random.key(i))))
    return float(np.mean(losses))


@jax.jit(static_argnames=("graphdef",))
def _eval_loss(graphdef, params, frozen, batch, schedule, key):
    return diffusion_loss(nnx.merge(graphdef, params, frozen), schedule, batch, key)


def write_samples(cfg, graphdef, params, frozen, source, path: pathlib.Path) -> None:
    """A grid sampled from the first test conditions (every process computes, the first writes)."""
    system = nnx.merge(graphdef, params, frozen)
    examples = [ToModelInputs().map(source[i]) for i in range(cfg.sample_count)]
    conditions = {name: np.stack([e[BATCH_KEYS[m.kind]] for e in examples]) for name, m in system.cfg.modalities.items()}
    size, channels = system.cfg.latent_size, system.cfg.autoencoder.embed_dim
    x_T = jax.random.normal(jax.random.key(cfg.seed), (cfg.sample_count, size, size, channels))
    g, state = nnx.split(system)
    result = sample(g, state, conditions, x_T, jax.random.key(cfg.seed + 1), SamplerSettings(steps=cfg.sample_steps))
    if jax.process_index() == 0:
        real = viz.to_uint8(np.stack([e["image"] for e in examples]))
        viz.save_png(path, viz.grid(np.stack([real, viz.to_uint8(np.asarray(result.images))]).swapaxes(0, 1)
                                    .reshape((-1,) + real.shape[1:]), cols=2))
