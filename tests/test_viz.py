import numpy as np

from cdiff_jax import viz


def find(picture: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    """Where `tile` sits in `picture`, exactly (top-left corners)."""
    h, w = tile.shape[:2]
    return [
        (y, x)
        for y in range(picture.shape[0] - h + 1)
        for x in range(picture.shape[1] - w + 1)
        if np.array_equal(picture[y : y + h, x : x + w], tile)
    ]


def test_influence_picture_shows_each_sample_its_mean_map_and_every_step_on_one_scale():
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 256, (2, 16, 16, 3), np.uint8)
    maps = np.zeros((3, 2, 4, 4))
    maps[:, 1] = 1.0  # the second sample is this expert's everywhere, the first nowhere
    maps[1, 0, :2] = 1.0  # at the middle step, the first sample's top half
    picture = viz.influence_picture(samples, maps, ["t=3", "t=2", "t=1"], "text")
    ((y0, x0),) = find(picture, samples[0])
    ((y1, x1),) = find(picture, samples[1])
    assert x0 == x1 and y1 > y0  # a row per sample
    step = x1 + 2 * (16 + 2)  # after the sample and its mean map
    low, high = viz.heatmap(np.zeros((1, 1)))[0, 0], viz.heatmap(np.ones((1, 1)))[0, 0]
    assert (picture[y1 : y1 + 16, step : step + 16] == high).all()
    assert (picture[y0 : y0 + 16, step : step + 16] == low).all()
    middle = picture[y0 : y0 + 16, step + 18 : step + 34]
    assert (middle[:8] == high).all() and (middle[8:] == low).all()  # a latent cell covers 4x4 pixels
    mean = picture[y0 : y0 + 16, x0 + 18 : x0 + 34]
    np.testing.assert_array_equal(mean, viz.blend(samples[0], viz.heatmap(viz.enlarge(maps[:, 0].mean(0), 16)), 0.5))
    # the colour scale, right of the last step: the ramp from 1 at the top to 0 at the bottom
    scale = picture[:, step + 3 * 18 :]
    assert find(scale, high[None, None].repeat(10, 1)) and find(scale, low[None, None].repeat(10, 1))


def test_titled_puts_the_thumbnail_and_the_wrapped_title_above_the_picture():
    picture = np.zeros((20, 200, 3), np.uint8)
    thumb = np.full((12, 12, 3), 77, np.uint8)
    short = viz.titled(picture, "a caption", thumbnail=thumb)
    long = viz.titled(picture, "a caption " * 30, thumbnail=thumb)
    assert short.shape[1] == long.shape[1] and long.shape[0] > short.shape[0] + 20  # wrapped to the width
    assert find(short, thumb) and find(long, picture)
    assert (short[: short.shape[0] - 20] != 255).any()  # the title is written
