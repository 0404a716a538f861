"""DDGI's trajectory cache: what it keeps is what the sampler did, and it reads back as a data source."""

import jax
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.config import load_config
from cdiff_jax.ddgi.trajectories import TrajectoryCache, TrajectorySettings, build_cache, parse_conditions
from cdiff_jax.noise import normal
from cdiff_jax.sampling import SamplerSettings, sample
from cdiff_jax.system import init_system
from cdiff_jax.viz import to_uint8

SETTINGS = TrajectorySettings(steps=4, kept=(1, 2, 4), seed=3, batch=2)


def examples(count, size=32, encoded=False):
    """Toy examples; `encoded` captions are bytes, as the TFDS dataset gives them."""
    rng = np.random.default_rng(0)
    captions = [f"This man has beard of length {i}." for i in range(count)]
    return [
        {
            "image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "mask": rng.integers(0, 19, (size, size), dtype=np.uint8),
            "caption": caption.encode() if encoded else caption,
        }
        for caption in captions
    ]


@pytest.fixture(scope="module")
def system():
    return init_system(load_config("tiny_system.py"), seed=0)


@pytest.fixture(scope="module")
def cache(system, tmp_path_factory):
    # The cache's parent folder does not exist yet: build_cache makes it (before sampling, as its temporary).
    directory = tmp_path_factory.mktemp("c") / "runs" / "cache"
    return TrajectoryCache(build_cache(system, examples(3, encoded=True), directory, SETTINGS))


@pytest.mark.slow
def test_the_cache_holds_the_sampler_s_own_trajectory(system, cache):
    data = examples(3)
    cfg = system.cfg
    latent = (cfg.latent_size, cfg.latent_size, cfg.autoencoder.embed_dim)
    x_T = normal(jax.random.key(SETTINGS.seed), (3, *latent))
    # Step 1 is x_T itself; the last kept step is the input of the last denoising step.
    np.testing.assert_array_equal(np.stack([cache[i]["x_t"][0] for i in range(3)]), x_T)
    assert cache.kept == (1, 2, 4) and len(cache.timesteps) == 3 and np.all(np.diff(cache.timesteps) < 0)
    # I^d_0 of the second batch (example 2) equals a direct sampler call with the same noise and key.
    result = sample(
        *nnx.split(system),
        parse_conditions(cfg, data[2:]),
        x_T[2:],
        jax.random.fold_in(jax.random.key(SETTINGS.seed + 1), 2),
        SamplerSettings(steps=SETTINGS.steps, eta=SETTINGS.eta, record=True),
    )
    np.testing.assert_array_equal(cache[2]["diffusion_image"], to_uint8(result.images)[0])
    np.testing.assert_array_equal(cache[2]["x_t"][2], np.asarray(result.trajectory.x_t)[3, 0])


@pytest.mark.slow
def test_records_give_back_the_examples_conditions_and_images(cache):
    data = examples(3)
    assert len(cache) == 3
    for i in range(3):
        record = cache[i]
        assert record["caption"] == data[i]["caption"]  # text again, whatever the dataset stored
        np.testing.assert_array_equal(record["mask"], data[i]["mask"])
        np.testing.assert_array_equal(record["image"], data[i]["image"])
        assert record["x_t"].shape[0] == 3 and record["diffusion_image"].dtype == np.uint8


@pytest.mark.slow
def test_an_existing_directory_is_refused_before_sampling(system, cache):
    before = sorted(p.name for p in cache.directory.iterdir())
    with pytest.raises(FileExistsError, match="choose a new directory"):
        build_cache(system, examples(1), cache.directory, SETTINGS)
    assert sorted(p.name for p in cache.directory.iterdir()) == before


def test_bad_settings_and_examples_fail_in_one_line(system, tmp_path):
    with pytest.raises(ValueError, match=r"must lie in 1\.\.4"):
        TrajectorySettings(steps=4, kept=(0, 5))
    with pytest.raises(ValueError, match=r"lack \['caption'\]"):
        build_cache(system, [{k: v for k, v in examples(1)[0].items() if k != "caption"}], tmp_path / "c", SETTINGS)
    with pytest.raises(FileNotFoundError, match="not a DDGI trajectory cache"):
        TrajectoryCache(tmp_path)
    assert not (tmp_path / "c").exists()


def test_the_command_refuses_a_missing_dataset_in_one_line(tmp_path, capsys):
    from cdiff_jax.ddgi.trajectories import main

    assert main([str(tmp_path / "system"), str(tmp_path / "no_data"), str(tmp_path / "out"), "--count", "2"]) == 2
    assert "no prepared celeba_multimodal" in capsys.readouterr().err and not (tmp_path / "out").exists()
