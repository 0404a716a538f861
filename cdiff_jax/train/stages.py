"""What each stage of training is: its model and trainable part, its data, its compiled steps, its validation,
pictures and export, as a `Stage` the loop in trainer.py runs without knowing which it is.

  diffusion_stage: the collab, expert and autoencoder stages (a latent diffusion system, part of it trainable);
  gan_stage: a StyleGAN2 generator and discriminator from scratch (DDGI's frozen GAN);
  ddgi_stage: DDGI's heads on a trajectory cache, the system and the GAN frozen.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdiff_jax import viz
from cdiff_jax.checkpoint import load_config as load_config_of
from cdiff_jax.checkpoint import load_gan, load_system, save_generator, save_system
from cdiff_jax.config import NO_SUPERRESOLUTION, EG3DConfig, StyleGAN2Config, StyleGAN2DiscriminatorConfig, load_config
from cdiff_jax.data import toy_faces, toy_faces_3d
from cdiff_jax.data.celeba_multimodal import data_sources
from cdiff_jax.data.pipeline import ToModelInputs, make_loader
from cdiff_jax.ddgi.features import heads_config
from cdiff_jax.ddgi.gan import is_3d
from cdiff_jax.ddgi.heads import DDGIHeads, load_heads, save_heads
from cdiff_jax.ddgi.trajectories import DDGIInputs, TrajectoryCache
from cdiff_jax.diffusion.schedule import make_schedule
from cdiff_jax.latents import reconstruct
from cdiff_jax.nn.arcface import ArcFace
from cdiff_jax.nn.autoencoder import posterior_sample
from cdiff_jax.nn.discriminator import DiscriminatorConfig, PatchDiscriminator
from cdiff_jax.nn.eg3d import TriPlaneGenerator, map_latents, orbit_views
from cdiff_jax.nn.lpips import LPIPS
from cdiff_jax.nn.remat import set_policy
from cdiff_jax.nn.stylegan2 import Generator, generate
from cdiff_jax.nn.stylegan2_discriminator import Discriminator
from cdiff_jax.noise import normal
from cdiff_jax.optimization import adam
from cdiff_jax.parallel import global_batch, param_sharding, replicate
from cdiff_jax.progress import log
from cdiff_jax.sampling import SamplerSettings, sample
from cdiff_jax.system import LatentDiffusionSystem, abstract_system, init_system
from cdiff_jax.train import autoencoder_step, gan_step
from cdiff_jax.train.config import FRESH_TOY_FACES, TOY_3D_WORLD, TrainConfig
from cdiff_jax.train.ddgi_step import DDGI_STAGES, DDGIObjective, ddgi_images, ddgi_train_steps
from cdiff_jax.train.objectives import BATCH_KEYS, diffusion_loss, loss_draws
from cdiff_jax.train.step import StepSettings, init_train_state, train_steps, trainable_filter, trainable_prefixes
from cdiff_jax.train.triplane_step import AutoDecoder, triplane_train_steps


def build_system(cfg: TrainConfig) -> LatentDiffusionSystem:
    """The starting system: from our checkpoint directory or a config, then `init_from` subtrees.

    An autoencoder taken from a donor brings its latent scale_factor and latent_shift along: the
    latents the diffusion models learn are only defined together with them.
    """
    source = pathlib.Path(cfg.system.partition(":")[0])
    system = load_system(source) if source.is_dir() else init_system(load_config(cfg.system), cfg.seed)
    for prefix, directory in cfg.init_from:
        if prefix == "autoencoder":
            donor = load_config_of(directory).autoencoder
            system = _with_latent_normalisation(system, donor.scale_factor, donor.latent_shift)
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
                raise ValueError(
                    f"init_from {directory}: {'.'.join(map(str, path))} does not fit the system being trained"
                )
            flat[path].set_value(value.get_value())
            copied += 1
        if not copied:
            raise ValueError(f"init_from {directory}: it has no parameters under {prefix!r}")
    nnx.update(system, state)
    return system


@dataclasses.dataclass
class Stage:
    """What differs between stages: the initial train state, the data, the compiled steps, validation,
    pictures and what the finished run exports."""

    state: object
    loader: object  # the grain loader of training batches
    run: Callable  # (state, batches [k, B, ...]) -> (state, metrics)
    write_samples: Callable  # (exported params, png path) -> None
    export: Callable  # (exported params, workdir) -> None
    evaluate: Callable | None = None  # (exported params, batch, key) -> scalar validation loss
    test_source: object = None  # what `evaluate` reads


def diffusion_stage(cfg: TrainConfig, mesh) -> Stage:
    """The collab, expert and autoencoder stages: a latent diffusion system, part of it trainable."""
    system = build_system(cfg)
    set_policy(system, cfg.remat)  # a static attribute: the graphdef carries it into every compiled step
    prefixes = trainable_prefixes(cfg.stage, system.cfg, cfg.modality)
    graphdef, params, frozen = nnx.split(system, trainable_filter(prefixes), ...)
    frozen = jax.device_put(frozen, param_sharding(frozen, mesh, cfg.fsdp_min_size))
    sources = data_sources(cfg.data_dir, resolution=cfg.resolution, test_size=cfg.test_size)
    loader = make_loader(
        sources["train"],
        global_batch=cfg.global_batch,
        seed=cfg.seed,
        worker_count=cfg.data_workers,
        crop_zoom=cfg.crop_zoom,
    )
    test = sources["test"]
    key = jax.random.key(cfg.seed)
    export = functools.partial(_export_system, cfg, graphdef, frozen, test, mesh)
    if cfg.stage == "autoencoder":
        if cfg.ema_decay:
            raise ValueError("the autoencoder stage keeps no parameter average (LDM's does not); set ema_decay=0")
        if cfg.perceptual_weight > 0 and not cfg.perceptual_weights:
            raise ValueError(
                "the autoencoder stage's perceptual (LPIPS) term needs weights: set perceptual_weights=PATH "
                "(an LDM autoencoder checkpoint, which holds them under loss.perceptual_loss., or an LPIPS state "
                "dict), or perceptual_weight=0 to train on L1 + KL + GAN alone"
            )
        lpips = None
        if cfg.perceptual_weight > 0:
            lpips = replicate(nnx.split(LPIPS.from_checkpoint(cfg.perceptual_weights)), mesh)
        disc = PatchDiscriminator(
            DiscriminatorConfig(filters=cfg.disc_filters, layers=cfg.disc_layers), rngs=nnx.Rngs(cfg.seed + 1)
        )
        disc_graphdef, disc_params = nnx.split(disc)
        tx = disc_tx = adam(cfg.learning_rate, betas=autoencoder_step.ADAM_BETAS)
        objective = autoencoder_step.AutoencoderObjective(
            kl_weight=cfg.kl_weight,
            perceptual_weight=cfg.perceptual_weight,
            disc_start=cfg.disc_start,
            disc_weight=cfg.disc_weight,
            accumulation=cfg.gradient_accumulation,
        )
        state = autoencoder_step.init_autoencoder_state(params, tx, disc_params, disc_tx)
        return Stage(
            state=jax.device_put(state, param_sharding(state, mesh, cfg.fsdp_min_size)),
            loader=loader,
            run=lambda state, batches: autoencoder_step.autoencoder_train_steps(
                graphdef, frozen, state, batches, key, tx, disc_graphdef, disc_tx, lpips, objective
            ),
            write_samples=lambda p, path: write_reconstructions(cfg, nnx.merge(graphdef, p, frozen), test, path),
            export=export,
            evaluate=lambda p, batch, k: _eval_reconstruction(
                graphdef, p, frozen, batch, k, lpips, cfg.perceptual_weight
            ),
            test_source=test,
        )
    tx = adam(cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = replicate(make_schedule(nnx.merge(graphdef, params, frozen).cfg.schedule), mesh)
    settings = StepSettings(
        condition_dropout=cfg.condition_dropout, ema_decay=cfg.ema_decay, accumulation=cfg.gradient_accumulation
    )
    state = init_train_state(params, tx, ema=cfg.ema_decay > 0)
    return Stage(
        state=jax.device_put(state, param_sharding(state, mesh, cfg.fsdp_min_size)),
        loader=loader,
        run=lambda state, batches: train_steps(graphdef, frozen, state, batches, schedule, key, tx, settings),
        write_samples=lambda p, path: write_samples(cfg, graphdef, p, frozen, test, path),
        export=export,
        evaluate=lambda p, batch, k: _eval_loss(graphdef, p, frozen, batch, schedule, k),
        test_source=test,
    )


def gan_stage(cfg: TrainConfig, mesh) -> Stage:
    """The gan stage: a StyleGAN2 generator (`cfg.system` names its config) and a resnet discriminator of the
    same widths, trained from scratch; exports G_ema to WORKDIR/generator."""
    g_cfg = load_config(cfg.system)
    if not isinstance(g_cfg, StyleGAN2Config):
        raise ValueError(
            f"the gan stage trains a StyleGAN2 generator: system {cfg.system!r} gives a "
            f"{type(g_cfg).__name__}; name a config returning a StyleGAN2Config (e.g. toy_gan.py)"
        )
    if cfg.resolution != g_cfg.img_resolution:
        raise ValueError(
            f"the generator makes {g_cfg.img_resolution}x{g_cfg.img_resolution} images but the data "
            f"resolution is {cfg.resolution}; set resolution={g_cfg.img_resolution} "
            "or change the generator"
        )
    if cfg.r1_interval % cfg.steps_per_call:
        raise ValueError(
            f"steps_per_call {cfg.steps_per_call} must divide r1_interval {cfg.r1_interval} (an R1 "
            "iteration is the first of a call)"
        )
    group = min(4, cfg.global_batch)
    if cfg.global_batch % group:
        raise ValueError(
            f"global_batch {cfg.global_batch} must be a multiple of the discriminator's minibatch-stddev "
            f"group of {group}"
        )
    images = gan_images(cfg)
    d_cfg = StyleGAN2DiscriminatorConfig(
        img_resolution=g_cfg.img_resolution,
        img_channels=g_cfg.img_channels,
        channel_base=g_cfg.channel_base,
        channel_max=g_cfg.channel_max,
        mbstd_group_size=group,
    )
    g_graphdef, g_params, g_buffers = _init_jitted(lambda: Generator(g_cfg, rngs=nnx.Rngs(cfg.seed)), nnx.Param)
    d_graphdef, d_params = _init_jitted(lambda: Discriminator(d_cfg, rngs=nnx.Rngs(cfg.seed + 1)))
    g_tx, d_tx = gan_step.optimizers(cfg.learning_rate, cfg.r1_interval)
    state = gan_step.init_gan_state(g_params, g_buffers, d_params, g_tx, d_tx)
    objective = gan_step.GANObjective(
        batch=cfg.global_batch,
        r1_gamma=cfg.r1_gamma,
        r1_interval=cfg.r1_interval,
        style_mixing=cfg.style_mixing,
        ema_kimg=cfg.gan_ema_kimg,
        ema_rampup=cfg.gan_ema_rampup,
        w_avg_beta=g_cfg.w_avg_beta,
    )
    key = jax.random.key(cfg.seed)

    def run(state, batches):
        with_r1 = int(state.step) % cfg.r1_interval == 0
        return gan_step.gan_train_steps(g_graphdef, d_graphdef, state, batches, key, g_tx, d_tx, objective, with_r1)

    def write_gan_samples(exported, path):
        images = generate(
            g_graphdef, nnx.merge_state(*exported), normal(jax.random.key(cfg.seed), (cfg.sample_count, g_cfg.z_dim))
        )
        if jax.process_index() == 0:
            viz.save_png(path, viz.grid(viz.to_uint8(np.asarray(images)), cols=int(np.ceil(np.sqrt(len(images))))))

    def export(exported, workdir):
        save_generator(workdir / "generator", nnx.merge(g_graphdef, *exported), overwrite=True)
        log.info("trained generator (G_ema) written to %s", workdir / "generator")

    return Stage(
        state=jax.device_put(state, param_sharding(state, mesh, cfg.fsdp_min_size)),
        loader=make_loader(
            images,
            global_batch=cfg.global_batch,
            seed=cfg.seed,
            shuffle=not cfg.data_dir.startswith(FRESH_TOY_FACES),
            worker_count=cfg.data_workers,
        ),
        run=run,
        write_samples=write_gan_samples,
        export=export,
    )


def triplane_stage(cfg: TrainConfig, mesh) -> Stage:
    """The triplane stage: an EG3D generator (`cfg.system` names its config) fitted to the toy 3D world as an
    auto-decoder; exports WORKDIR/generator, whose w_avg is the mean w of the learned codes, and the codes."""
    g_cfg = load_config(cfg.system)
    if not isinstance(g_cfg, EG3DConfig) or g_cfg.superresolution != NO_SUPERRESOLUTION:
        raise ValueError(
            f"the triplane stage fits an EG3D generator without super-resolution: system {cfg.system!r} "
            "gives another; name a config like toy_eg3d.py"
        )
    seed = cfg.data_dir.removeprefix(TOY_3D_WORLD)
    if not cfg.data_dir.startswith(TOY_3D_WORLD) or not seed.isdigit() or int(seed) == 0:
        raise ValueError(
            f"data_dir {cfg.data_dir!r}: the triplane stage reads {TOY_3D_WORLD}SEED with a SEED other "
            "than 0 (the demo dataset's, whose held-out faces the evaluation uses)"
        )
    resolution = cfg.triplane_resolution or g_cfg.neural_rendering_resolution
    if toy_faces.IMAGE_SIZE % resolution:
        raise ValueError(f"triplane_resolution {resolution} must divide the toy world's {toy_faces.IMAGE_SIZE}")
    training_cfg = dataclasses.replace(g_cfg, neural_rendering_resolution=resolution, img_resolution=resolution)
    graphdef, params, buffers = _init_jitted(
        lambda: AutoDecoder(training_cfg, cfg.triplane_identities, rngs=nnx.Rngs(cfg.seed)), nnx.Param
    )
    tx = adam(cfg.learning_rate)
    key = jax.random.key(cfg.seed)

    def exported_generator(params) -> tuple[TriPlaneGenerator, jax.Array]:
        model = nnx.merge(graphdef, params, buffers)
        generator = nnx.eval_shape(lambda: TriPlaneGenerator(g_cfg, rngs=nnx.Rngs(0)))
        nnx.update(generator, nnx.state(model.generator))
        ws = map_latents(*nnx.split(generator), model.codes[...], jnp.zeros((len(model.codes), 25)))
        generator.mapping.w_avg.set_value(jnp.mean(ws[:, 0], axis=0))
        return generator, model.codes[...]

    def write_triplane_samples(params, path):
        generator, codes = exported_generator(params)
        yaws = np.linspace(-toy_faces_3d.MAX_YAW, toy_faces_3d.MAX_YAW, 5)
        cameras = toy_faces_3d.cameras(yaws, np.zeros_like(yaws))
        count = min(cfg.sample_count, len(codes))
        ws = map_latents(*nnx.split(generator), codes[:count], jnp.zeros((count, 25)))
        images, _ = orbit_views(*nnx.split(generator), ws, cameras, key)
        source = toy_faces_3d.ToyViews(int(seed), cfg.triplane_identities)
        truth = [
            toy_faces_3d.render(face["image"] / 127.5 - 1, face["labels"], cameras, g_cfg.img_resolution)["image"]
            for face in map(source.face, range(count))
        ]
        if jax.process_index() == 0:  # per identity, the toy world's views above the generator's
            rows = viz.to_uint8(np.stack([row for pair in zip(truth, images) for row in pair]))
            viz.save_png(path, viz.grid(rows, col_labels=[f"yaw {yaw:+.2f}" for yaw in yaws]))

    def export(params, workdir):  # every process saves its part of the generator, the first the codes
        from jax.experimental import multihost_utils

        generator, codes = exported_generator(params)
        save_generator(workdir / "generator", generator, overwrite=True)
        if not codes.is_fully_addressable:  # split across processes: gathered whole in each
            codes = multihost_utils.process_allgather(codes, tiled=True)
        if jax.process_index() == 0:
            with (workdir / "generator" / "codes.npy").open("wb") as f:  # also a gs:// workdir's epath.Path
                np.save(f, np.asarray(codes))
        log.info("fitted tri-plane generator written to %s (its identities' codes: codes.npy)", workdir / "generator")

    state = init_train_state(params, tx)
    return Stage(
        state=jax.device_put(state, param_sharding(state, mesh, cfg.fsdp_min_size)),
        loader=make_loader(
            toy_faces_3d.ToyViews(int(seed), cfg.triplane_identities),
            global_batch=cfg.global_batch,
            seed=cfg.seed,
            shuffle=False,
            worker_count=cfg.data_workers,
            inputs=toy_faces_3d.ViewInputs(resolution),
        ),
        run=lambda state, batches: triplane_train_steps(
            graphdef, buffers, state, batches, key, tx, cfg.triplane_depth_weight
        ),
        write_samples=write_triplane_samples,
        export=export,
    )


LPIPS_MIN_SIZE = 16  # VGG16's four 2x2 max-pools before LPIPS's last tap


def ddgi_stage(cfg: TrainConfig, mesh) -> Stage:
    """DDGI's mapping or modulation stage: heads trained on a trajectory cache, the diffusion system and the
    GAN frozen (a tri-plane GAN rendering at `triplane_resolution` while training, if set), LPIPS and ArcFace too
    where the loss uses them; exports WORKDIR/heads."""
    if not cfg.gan:
        raise ValueError(
            f"the {cfg.stage} stage needs the frozen GAN: set gan=DIR (a generator checkpoint: "
            "`cdiff convert G.pkl DIR`, or a gan stage's WORKDIR/generator)"
        )
    judge_files = cfg.ddgi_network_files()  # LPIPS's and ArcFace's, where their terms are on: present
    cache = TrajectoryCache(cfg.data_dir)
    system, generator = load_system(cfg.system), load_gan(cfg.gan)
    resolution = cfg.triplane_resolution
    if resolution and not (is_3d(generator) and generator.cfg.superresolution == NO_SUPERRESOLUTION):
        holds = "an EG3D generator with super-resolution" if is_3d(generator) else "a StyleGAN2 generator"
        raise ValueError(
            f"triplane_resolution={resolution}: only a tri-plane GAN without super-resolution renders "
            f"at it, and {cfg.gan} holds {holds}; set triplane_resolution=None"
        )
    size = cache[0]["image"].shape[0]
    if len({size, generator.cfg.img_resolution, system.cfg.autoencoder.resolution}) > 1:
        raise ValueError(
            f"resolutions differ: the GAN makes {generator.cfg.img_resolution}x"
            f"{generator.cfg.img_resolution} images, the trajectory cache holds {size}x{size} and the "
            f"diffusion system decodes {system.cfg.autoencoder.resolution}: use a GAN of the data's size"
        )
    if resolution and (size != toy_faces.IMAGE_SIZE or size % resolution):
        raise ValueError(
            f"triplane_resolution {resolution} must divide the toy world's {toy_faces.IMAGE_SIZE}, whose "
            f"images the trajectory cache must hold (it holds {size}x{size})"
        )
    if "perceptual_weights" in judge_files and (resolution or size) < LPIPS_MIN_SIZE:
        raise ValueError(
            f"LPIPS compares images of at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} and this stage trains "
            f'on {resolution or size}x{resolution or size}; set ddgi_perceptual="autoencoder"'
        )
    heads_source = dict(cfg.init_from).get("heads")
    if cfg.stage == "ddgi_modulation":
        if heads_source is None:
            raise ValueError(
                'the ddgi_modulation stage starts from trained M: set init_from=(("heads", "RUN/heads"),) '
                "with RUN a finished ddgi_mapping run"
            )
        heads = load_heads(heads_source)
        if heads.cfg.attention_gating != cfg.ddgi_attention_gating:  # T's gating is this stage's choice, not M's
            gated = DDGIHeads(
                dataclasses.replace(heads.cfg, attention_gating=cfg.ddgi_attention_gating), rngs=nnx.Rngs(cfg.seed)
            )
            nnx.update(gated, nnx.state(heads))
            heads = gated
    else:
        heads = DDGIHeads(
            heads_config(
                system.cfg,
                generator.cfg,
                cfg.ddgi_experts,
                mapping_channels=cfg.ddgi_mapping_channels,
                modulation_channels=cfg.ddgi_modulation_channels,
                attention_gating=cfg.ddgi_attention_gating,
            ),
            rngs=nnx.Rngs(cfg.seed),
        )
    if (heads.cfg.num_ws, heads.cfg.w_dim) != (generator.cfg.num_ws, generator.cfg.w_dim):
        raise ValueError(
            f"the heads make W+ codes of {heads.cfg.num_ws} x {heads.cfg.w_dim} but the GAN takes "
            f"{generator.cfg.num_ws} x {generator.cfg.w_dim}: train heads for this GAN"
        )
    trained = DDGI_STAGES[cfg.stage][0]
    graphdef, params, frozen_heads = nnx.split(
        heads, lambda path, value: isinstance(value, nnx.Param) and path[0] == trained, ...
    )
    frozen = replicate((nnx.split(system), nnx.split(generator)), mesh)
    objective = DDGIObjective(
        cfg.stage,
        heads.cfg.experts or cfg.ddgi_experts,
        cfg.ddgi_l2_weight,
        cfg.ddgi_perceptual_weight,
        cfg.ddgi_ground_truth_weight,
        resolution=resolution,
        perceptual=cfg.ddgi_perceptual,
        identity_weight=cfg.ddgi_identity_weight,
    )
    lpips_file, arcface_file = judge_files.get("perceptual_weights"), judge_files.get("ddgi_arcface_weights")
    judges = replicate(
        (
            nnx.split(LPIPS.from_checkpoint(lpips_file)) if lpips_file else None,
            nnx.split(ArcFace.from_checkpoint(arcface_file)) if arcface_file else None,
        ),
        mesh,
    )
    tx = adam(cfg.learning_rate)
    timesteps = replicate(jnp.asarray(cache.timesteps), mesh)
    key = jax.random.key(cfg.seed)
    state = init_train_state(params, tx)

    def write_ddgi_samples(params, path):
        records = [DDGIInputs().map(cache[i]) for i in range(min(cfg.sample_count, len(cache)))]
        batch = {name: np.stack([r[name] for r in records]) for name in records[0]}
        last = jnp.full((len(records),), len(cache.timesteps) - 1)
        images = _render_ddgi(
            graphdef,
            params,
            frozen_heads,
            frozen,
            batch,
            last,
            timesteps,
            dataclasses.replace(objective, resolution=None),
        )  # the samples at full size
        if jax.process_index() == 0:
            rows = np.stack(
                [
                    viz.to_uint8(batch["image"]),
                    viz.to_uint8(batch["diffusion_image"]),
                    viz.to_uint8(np.asarray(images)),
                ],
                axis=1,
            )
            viz.save_png(
                path,
                viz.grid(
                    rows.reshape((-1,) + rows.shape[2:]),
                    cols=3,
                    col_labels=["ground truth", "diffusion I_0", f"DDGI at step {cache.kept[-1]}"],
                ),
            )

    def export(params, workdir):
        save_heads(workdir / "heads", nnx.merge(graphdef, params, frozen_heads), overwrite=True)
        log.info("DDGI heads written to %s", workdir / "heads")

    return Stage(
        state=jax.device_put(state, param_sharding(state, mesh, cfg.fsdp_min_size)),
        loader=make_loader(
            cache,
            global_batch=cfg.global_batch,
            seed=cfg.seed,
            worker_count=cfg.data_workers,
            inputs=DDGIInputs() if resolution is None else DDGIInputsAt(resolution),
        ),
        run=lambda state, batches: ddgi_train_steps(
            graphdef, frozen_heads, state, batches, frozen, timesteps, key, tx, objective, judges
        ),
        write_samples=write_ddgi_samples,
        export=export,
    )


class DDGIInputsAt(DDGIInputs):
    """`DDGIInputs` with both targets area-averaged to a tri-plane GAN's training rendering resolution, as the
    triplane stage's views are (one function for both stages' targets)."""

    def __init__(self, resolution: int):
        self.resolution = resolution

    def map(self, record: dict) -> dict[str, np.ndarray]:
        inputs = super().map(record)
        targets = ("image", "diffusion_image")
        return {**inputs, **{name: toy_faces_3d.area_average(inputs[name], self.resolution) for name in targets}}


@jax.jit(static_argnames=("graphdef", "objective"))
def _render_ddgi(graphdef, params, frozen_heads, frozen, batch, k, timesteps, objective):
    (system_graphdef, system_state), (gan_graphdef, gan_state) = frozen
    return ddgi_images(
        nnx.merge(graphdef, params, frozen_heads),
        nnx.merge(system_graphdef, system_state),
        nnx.merge(gan_graphdef, gan_state),
        batch,
        k,
        timesteps,
        objective,
        jax.random.key(0),
    )


def gan_images(cfg: TrainConfig):
    """The gan stage's training images: endless fresh toy faces, or a prepared dataset's train split."""
    if not cfg.data_dir.startswith(FRESH_TOY_FACES):
        return data_sources(cfg.data_dir, resolution=cfg.resolution, test_size=cfg.test_size)["train"]
    seed = cfg.data_dir.removeprefix(FRESH_TOY_FACES)
    if not seed.isdigit() or int(seed) == 0:
        raise ValueError(
            f"data_dir {cfg.data_dir!r}: write {FRESH_TOY_FACES}SEED with a SEED other than 0 (the demo "
            "dataset's, whose held-out faces the evaluation uses)"
        )
    if cfg.resolution != toy_faces.IMAGE_SIZE:
        raise ValueError(
            f"toy faces are {toy_faces.IMAGE_SIZE}x{toy_faces.IMAGE_SIZE}; set resolution={toy_faces.IMAGE_SIZE}"
        )
    return toy_faces.FreshToyFaces(int(seed))


def _init_jitted(make, *filters):
    """(graphdef, *states) of the module `make()` builds, initialised in one compiled program (eager NNX
    initialisation of a many-layer network dispatches every random draw on its own)."""
    graphdef = nnx.split(nnx.eval_shape(make))[0]
    states = jax.jit(lambda: nnx.split(make(), *filters, ...)[1:] if filters else (nnx.split(make())[1],))()
    return (graphdef, *states)


def _export_system(cfg, graphdef, frozen, test, mesh, params, workdir: pathlib.Path) -> None:
    trained = nnx.merge(graphdef, params, frozen)
    if cfg.stage == "autoencoder":
        trained = with_latent_normalisation(trained, test, cfg, mesh)
    save_system(workdir / "system", trained, overwrite=True)
    log.info("trained system written to %s (use it with sample.py --checkpoint)", workdir / "system")


def validation_batches(cfg, source, mesh):
    """The first `val_batches` test batches, in order, as global arrays."""
    batch_size = min(cfg.global_batch, len(source))
    batch_size -= batch_size % jax.device_count()
    if not batch_size:
        raise ValueError(f"the test split has {len(source)} examples, fewer than the {jax.device_count()} devices")
    loader = make_loader(source, global_batch=batch_size, seed=0, shuffle=False)
    for _, batch in zip(range(cfg.val_batches), loader):
        yield global_batch(batch, mesh)


def validation_loss(cfg, evaluate, source, mesh) -> float:
    """Mean loss over the first `val_batches` test batches, with fixed randomness per batch."""
    losses = []
    for i, batch in enumerate(validation_batches(cfg, source, mesh)):
        losses.append(float(evaluate(batch, jax.random.key(i))))
    return float(np.mean(losses))


@jax.jit(static_argnames=("graphdef",))
def _eval_loss(graphdef, params, frozen, batch, schedule, key):
    system = nnx.merge(graphdef, params, frozen)
    return diffusion_loss(system, schedule, batch, loss_draws(system, schedule, batch["image"], key))


@jax.jit(static_argnames=("graphdef", "perceptual_weight"))
def _eval_reconstruction(graphdef, params, frozen, batch, key, lpips, perceptual_weight):
    system = nnx.merge(graphdef, params, frozen)
    return autoencoder_step.reconstruction_loss(system, batch["image"], key, lpips, perceptual_weight)


def with_latent_normalisation(system: LatentDiffusionSystem, source, cfg: TrainConfig, mesh) -> LatentDiffusionSystem:
    """The system with latent_shift = the per-channel mean of its posterior samples on test batches and
    scale_factor = 1 / their std after centring (LDM's scale_by_std, which does not centre).

    Centring matters because a linear noise schedule keeps some signal at t = T (abar_T = 4.7e-3 for the
    demo's), so an expert learns to read each channel's mean from x_T, and sampling starts from x_T of mean
    zero, which shifts every sample's colours (docs/research_log.md, "Measurement history moved from the code").
    """
    from jax.experimental import multihost_utils

    graphdef, state = nnx.split(system.autoencoder)
    # Each batch is split across processes: gathered whole in each (on one process, the array itself).
    latents = np.concatenate(
        [
            multihost_utils.process_allgather(
                _posterior_sample(graphdef, state, b["image"], jax.random.key(i)), tiled=True
            )
            for i, b in enumerate(validation_batches(cfg, source, mesh))
        ],
        dtype=np.float64,
    )
    channels = latents.reshape(-1, latents.shape[-1])
    shift = channels.mean(axis=0)
    scale = float(1.0 / (channels - shift).std())
    log.info(
        "latent normalisation for this autoencoder: scale_factor %.6g, latent_shift %s (written to the system config)",
        scale,
        ", ".join(f"{m:.6g}" for m in shift),
    )
    return _with_latent_normalisation(system, scale, tuple(float(m) for m in shift))


@jax.jit(static_argnames=("graphdef",))
def _posterior_sample(graphdef, state, images, key):
    autoencoder = nnx.merge(graphdef, state)
    mean, logvar = autoencoder.encode(images)
    return posterior_sample(mean, logvar, normal(key, mean.shape, mean.dtype))


def _with_latent_normalisation(
    system: LatentDiffusionSystem, scale: float, shift: tuple[float, ...]
) -> LatentDiffusionSystem:
    ae_cfg = system.cfg.autoencoder
    if (scale, shift) == (ae_cfg.scale_factor, ae_cfg.latent_shift):
        return system
    ae_cfg = dataclasses.replace(ae_cfg, scale_factor=scale, latent_shift=shift)
    normalised = abstract_system(dataclasses.replace(system.cfg, autoencoder=ae_cfg))
    nnx.update(normalised, nnx.state(system, nnx.Param))
    return normalised


def write_reconstructions(cfg, system, source, path: pathlib.Path) -> None:
    """Test images beside their reconstructions (posterior mean), in pairs of columns."""
    real = np.stack([ToModelInputs().map(source[i])["image"] for i in range(cfg.sample_count)])
    recon = reconstruct(*nnx.split(system.autoencoder), real)
    if jax.process_index() == 0:
        pairs = np.stack([viz.to_uint8(real), viz.to_uint8(np.asarray(recon))], axis=1)
        viz.save_png(path, viz.grid(pairs.reshape((-1,) + real.shape[1:]), cols=2))


def write_samples(cfg, graphdef, params, frozen, source, path: pathlib.Path) -> None:
    """A grid sampled from the first test conditions (every process computes, the first writes)."""
    system = nnx.merge(graphdef, params, frozen)
    examples = [ToModelInputs().map(source[i]) for i in range(cfg.sample_count)]
    conditions = {
        name: np.stack([e[BATCH_KEYS[m.kind]] for e in examples]) for name, m in system.cfg.modalities.items()
    }
    size, channels = system.cfg.latent_size, system.cfg.autoencoder.embed_dim
    x_T = normal(jax.random.key(cfg.seed), (cfg.sample_count, size, size, channels))
    g, state = nnx.split(system)
    result = sample(g, state, conditions, x_T, jax.random.key(cfg.seed + 1), SamplerSettings(steps=cfg.sample_steps))
    if jax.process_index() == 0:
        real = viz.to_uint8(np.stack([e["image"] for e in examples]))
        viz.save_png(
            path,
            viz.grid(
                np.stack([real, viz.to_uint8(np.asarray(result.images))])
                .swapaxes(0, 1)
                .reshape((-1,) + real.shape[1:]),
                cols=2,
            ),
        )
