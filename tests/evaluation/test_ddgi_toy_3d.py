"""The DDGI-3D toy evaluation with a random tiny tri-plane generator and fresh heads: every row and column
scored, the ground truth as the judges see the world, the depth error of known depths, bad input in one line."""

import dataclasses
import math

import jax
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.checkpoint import load_config as load_system_config
from cdiff_jax.checkpoint import save_generator
from cdiff_jax.config import StyleGAN2Config, load_config
from cdiff_jax.data import toy_faces_3d as W
from cdiff_jax.ddgi.features import heads_config
from cdiff_jax.ddgi.heads import DDGIHeads, save_heads
from cdiff_jax.evaluation import ddgi_toy_3d as D
from cdiff_jax.evaluation import judges as J
from cdiff_jax.evaluation import miniature as M
from cdiff_jax.nn.eg3d import TriPlaneGenerator
from cdiff_jax.nn.stylegan2 import Generator

pytestmark = pytest.mark.slow

# The toy world's generator (its cameras and ray range), shrunk: 6 W+ entries, 4 samples per ray and no
# importance pass (half the renderer to compile).
EG3D = dataclasses.replace(
    load_config("toy_eg3d.py"),
    z_dim=8,
    w_dim=8,
    mapping_layers=1,
    plane_resolution=16,
    plane_channels=4,
    channel_base=64,
    channel_max=8,
    depth_resolution=4,
    depth_resolution_importance=0,
)
GAN2D = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=64, mapping_layers=1, channel_base=64, channel_max=8)
COUNT, STEPS = 4, 3
ROWS = [D.GROUND_TRUTH, D.CEILING, f"DDGI-3D M, step {STEPS}/{STEPS}", f"DDGI-3D M + T, step {STEPS}/{STEPS}"]
SIDE = ["yaw -20", "yaw +20"]


def random_module(build, seed: int):
    """The module `build` makes with its state drawn from N(0, 0.1), without the seconds an eager initialisation
    takes (fresh heads would also give every face w_avg)."""
    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)
    return nnx.merge(graphdef, jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(x.dtype), state))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddgi_toy_3d")
    save_generator(root / "eg3d", random_module(lambda: TriPlaneGenerator(EG3D, rngs=nnx.Rngs(0)), 2))
    save_generator(root / "gan2d", random_module(lambda: Generator(GAN2D, rngs=nnx.Rngs(0)), 0))
    cfg = heads_config(
        load_system_config(M.DEMO_CHECKPOINT), EG3D, ("text", "mask"), mapping_channels=8, modulation_channels=8
    )
    for name, heads_cfg, seed in (
        ("mapping", cfg, 0),
        ("heads", cfg, 1),
        ("heads2d", dataclasses.replace(cfg, num_ws=GAN2D.num_ws), 0),
    ):
        save_heads(root / name, random_module(lambda c=heads_cfg: DDGIHeads(c, rngs=nnx.Rngs(0)), seed))
    return root


def noise_trajectories(system, examples, *, steps, batch, seed):
    """Trajectories of Gaussian x_t: what the heads read, without compiling the sampler (15 s here), which the
    2D evaluation's test runs and checks against the miniature table."""
    cfg = system.cfg
    shape = (len(examples), steps, cfg.latent_size, cfg.latent_size, cfg.autoencoder.embed_dim)
    return D.ddgi_toy.Trajectories(
        np.zeros((len(examples), 64, 64, 3), np.uint8),
        np.random.default_rng(seed).normal(size=shape).astype(np.float32),
        np.linspace(900, 0, steps).astype(np.int32),
        0.0,
    )


@pytest.fixture(scope="module")
def evaluated(root):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(D.ddgi_toy, "sample_trajectories", noise_trajectories)
        return D.run(
            root / "eg3d",
            root / "mapping",
            root / "heads",
            count=COUNT,
            steps=STEPS,
            inversion_steps=2,
            batch=COUNT,
            render_batch=COUNT,
        )


def test_every_row_and_column_is_scored_in_range(evaluated):
    results, seen, names = evaluated
    assert list(results) == ROWS and names == ["frontal", *SIDE]
    for row, r in results.items():
        assert seen[row].images.shape == (COUNT, 3, 64, 64, 3) and seen[row].images.dtype == np.uint8
        assert seen[row].depth.shape == (COUNT, 3, 64, 64, 1)
        for key in ("mask_accuracy", "mask_miou", "beard_accuracy", "age_accuracy", "view_agreement"):
            assert 0 <= r[key] <= 1, (row, key)
        assert list(r["views"]) == SIDE
        for view in r["views"].values():
            assert all(0 <= view[k] <= 1 for k in ("parser_accuracy", "parser_miou", "agreement")), row
            if row == D.GROUND_TRUTH:
                assert "depth_error_head" not in view  # the proxy's own depth: not applicable
            else:  # the renderer's depth lies within its ray range, the proxy's within 2.5..3.1
                assert 0 <= view["depth_error_head"] < 1 and 0 <= view["depth_error_all"] < 1, row
    markdown = D.table(results)
    assert f"| {D.GROUND_TRUTH} |" in markdown and "| - |" in markdown and "yaw +20: depth error" in markdown
    picture = D.picture(M.held_out_examples(2), seen, names, faces=2)
    assert picture.shape[0] > 2 * len(ROWS) * 64 and picture.shape[1] > 5 * 66  # map, 3 views, depth; labels
    m, mt = (seen[row].images for row in ROWS[2:])
    assert not np.array_equal(m, mt) and not np.array_equal(m[0], m[1])  # each row renders its heads' codes


def test_the_ground_truth_row_is_what_the_judges_see_in_the_world(evaluated):
    results, _, _ = evaluated
    examples = M.held_out_examples(COUNT)
    judges = J.load_judges(M.DEMO_JUDGES)
    cameras = W.cameras([0.0, math.radians(-20), math.radians(20)], [0.0, 0.0, 0.0])
    views = [W.render(e["image"] / 127.5 - 1, e["labels"], cameras) for e in examples]
    images = np.stack([np.round((v["image"] + 1) * 127.5).astype(np.uint8) for v in views])  # [N, 3, 64, 64, 3]
    labels = np.stack([v["labels"] for v in views])
    assert np.array_equal(images[:, 0], [e["image"] for e in examples])  # the frontal view is the 2D toy face
    parsed = [np.asarray(J.parse(judges, J.from_uint8(images[:, v]))) for v in range(3)]
    beard, age = zip(
        *[[np.asarray(p) for p in J.attribute_predictions(judges, J.from_uint8(images[:, v]))] for v in range(3)]
    )
    truth = results[D.GROUND_TRUTH]
    input_maps = np.stack([e["labels"] for e in examples])
    assert truth["mask_accuracy"] == pytest.approx(np.mean(parsed[0] == input_maps))
    assert truth["beard_accuracy"] == pytest.approx(np.mean(beard[0] == [e["attributes"]["beard"] for e in examples]))
    for v, name in enumerate(SIDE, 1):
        assert truth["views"][name]["parser_accuracy"] == pytest.approx(np.mean(parsed[v] == labels[:, v]))
        assert truth["views"][name]["agreement"] == pytest.approx(np.mean((beard[v] == beard[0]) & (age[v] == age[0])))
    everywhere = np.all([(beard[v] == beard[0]) & (age[v] == age[0]) for v in (1, 2)], axis=0)
    assert truth["view_agreement"] == pytest.approx(np.mean(everywhere))


def test_the_depth_error_of_known_depths():
    """The world's own depth (from its renderer, at the generator's lower resolution) scores 0; offset by 0.05
    on the head and 0.2 elsewhere, 0.05 over the head's pixels and their pixel-weighted mean over all."""
    examples = M.held_out_examples(COUNT)
    cameras, names = D.view_cameras([-20.0, 20.0], 0.0)
    seen, world_labels = D.world_views(examples, cameras)
    judges = J.load_judges(M.DEMO_JUDGES)
    coarse = np.stack(
        [W.render(e["image"] / 127.5 - 1, e["labels"], cameras, resolution=32)["depth"] for e in examples]
    )
    _, _, head = W.cast(cameras, 32)
    head = head.reshape(1, 3, 32, 32, 1)
    offset = np.where(head, 0.05, 0.2)
    for depth, expected_head in ((coarse, 0.0), (coarse + offset, 0.05)):
        scored = D.score(judges, D.Seen(seen.images, depth), examples, world_labels, names, cameras)
        for v, name in enumerate(names[1:], 1):
            assert scored["views"][name]["depth_error_head"] == pytest.approx(expected_head, abs=1e-6)
            expected_all = 0.0 if expected_head == 0 else 0.05 * head[0, v].mean() + 0.2 * (1 - head[0, v].mean())
            assert scored["views"][name]["depth_error_all"] == pytest.approx(expected_all, abs=1e-6)


def test_bad_input_fails_in_one_line_before_any_work(root, monkeypatch, capsys):
    def work(*args, **kwargs):
        raise AssertionError("the evaluation started")

    monkeypatch.setattr(D, "world_views", work)
    cases = {
        "--yaw 40": ["--gan", str(root / "eg3d"), "--yaw", "40"],
        "a 2D generator": ["--gan", str(root / "gan2d")],
        "heads of another W+ size": ["--gan", str(root / "eg3d"), "--mapping-heads", str(root / "heads2d")],
    }
    expected = {
        "--yaw 40": "yaw within +-30",
        "a 2D generator": "not an EG3D generator",
        "heads of another W+ size": "the heads make W+ codes of 10 x 8 but the 3D-aware (EG3D) GAN takes 6 x 8",
    }
    for case, argv in cases.items():
        argv = ["--mapping-heads", str(root / "heads"), "--heads", str(root / "heads"), *argv]
        assert D.main(argv) == 2, case
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and expected[case] in err, (case, err)
    with pytest.raises(ValueError, match="not the toy 3D world's"):
        D.check_generator(dataclasses.replace(EG3D, avg_camera_radius=2.0))
