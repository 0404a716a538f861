"""The interactive page as its users reach it: through gradio's own client (good and bad requests on one server)
and in a real headless browser (Debian's Chromium). Every sampling request here is the same program (demo
models, ddim, 4 steps, batch 2, influence recorded), so the server compiles once."""

import pathlib
import socket

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402 -- gradio is optional (the demo extra)
from gradio_client.exceptions import AppError  # noqa: E402

from cdiff_jax import app  # noqa: E402
from cdiff_jax.commands.sample import main as sample_main  # noqa: E402
from cdiff_jax.data.masks import PALETTE, load_label_map  # noqa: E402
from cdiff_jax.requests import DEMO_CHECKPOINT, DEMO_MASK, UsageError  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CAPTION = "This man has a beard. He is in his forties."
SIDE = 64  # the demo models' images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    blocks = app.build(str(DEMO_CHECKPOINT))
    port = free_port()
    blocks.launch(
        server_name="127.0.0.1", server_port=port, share=False, ssr_mode=False, quiet=True, prevent_thread_lock=True
    )
    yield f"http://127.0.0.1:{port}/"
    blocks.close()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return Client(server, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def drawn(path) -> dict:
    """The image editor's value for a mask file, as the page sends it."""
    return {"background": handle_file(str(path)), "layers": [], "composite": handle_file(str(path))}


def ask(client, mask, caption=CAPTION, mode="released", steps=4, sampler="ddim", seed=0, batch=2):
    return client.predict(
        None if mask is None else drawn(mask), caption, mode, steps, sampler, seed, batch, api_name="/sample"
    )


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def sample_py_error(capsys, *argv) -> str:
    """sample.py's one-line message for these arguments (what the page must say too)."""
    assert sample_main([str(a) for a in argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1
    return lines[0].removeprefix("error: ")


def test_a_mask_and_a_caption_give_samples_and_influence_maps_as_sample_py(client, tmp_path, capsys):
    status, gallery, slider, mask_map, text_map = ask(client, DEMO_MASK)
    assert status.startswith("2 samples in")
    samples = [pixels(item["image"]) for item in gallery]
    assert [s.shape for s in samples] == [(SIDE, SIDE, 3)] * 2
    # the mean over the recorded steps first; the slider then reaches each step
    assert slider["maximum"] == 4 and slider["value"] == 0
    for name, path in (("mask", mask_map), ("text", text_map)):
        expected = app.influence_at(np.stack(samples), np.zeros((2, 16, 16)), name, "mean over the 4 steps", "mean")
        assert pixels(path).shape == expected.shape
    last_mask, _ = client.predict(4, api_name="/show_step")
    assert pixels(last_mask).shape[1] == pixels(mask_map).shape[1]
    assert not np.array_equal(pixels(last_mask), pixels(mask_map))
    # the same request through sample.py gives the same pictures
    assert (
        sample_main(
            [
                "--checkpoint",
                str(DEMO_CHECKPOINT),
                "--mask",
                str(DEMO_MASK),
                "--text",
                CAPTION,
                "--steps",
                "4",
                "--batch",
                "2",
                "--save-influence",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    for i, picture in enumerate(samples):
        np.testing.assert_array_equal(picture, pixels(tmp_path / f"out/images/{i:03d}.png"))
    capsys.readouterr()


def test_bad_inputs_give_sample_py_messages_and_the_server_goes_on(client, tmp_path, capsys):
    colours = np.asarray(Image.open(DEMO_MASK).convert("RGB"))
    bad = colours.copy()
    bad[:8, :8] = (128, 128, 128)  # no class is near grey
    Image.fromarray(bad).save(tmp_path / "mask.png")
    expected = sample_py_error(capsys, "--mask", tmp_path / "mask.png", "--text", CAPTION, "--out", tmp_path / "o")
    assert "(128, 128, 128) x64" in expected
    with pytest.raises(AppError) as refused:
        ask(client, tmp_path / "mask.png")
    assert refused.value.message == expected.replace(f"{tmp_path}/", "")

    for caption, steps, flags in (
        ("  ", 4, ["--text", "  "]),
        (CAPTION, 0, ["--steps", "0"]),
        (CAPTION, 5000, ["--steps", "5000"]),
    ):
        expected = sample_py_error(capsys, *flags, "--out", tmp_path / "o")
        assert expected.startswith(flags[0])
        with pytest.raises(AppError) as refused:
            ask(client, DEMO_MASK, caption=caption, steps=steps)
        assert refused.value.message == expected
    with pytest.raises(AppError, match="no mask: draw or upload one"):
        ask(client, None)

    # after those, a mask as a brush leaves it: edges a little off the palette, the background transparent;
    # read as the exact mask, so the samples are the example's
    labels = load_label_map(DEMO_MASK)
    brushed = np.concatenate([colours, np.full(colours.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    brushed[labels == 0] = (255, 255, 255, 0)
    edge = (labels != 0) & (np.roll(labels, 1, axis=1) != labels)
    brushed[edge, :3] = np.clip(brushed[edge, :3].astype(int) + (12, -12, 12), 0, 255)
    Image.fromarray(brushed, "RGBA").save(tmp_path / "brushed.png")
    _, gallery, *_ = ask(client, tmp_path / "brushed.png")
    _, exact, *_ = ask(client, DEMO_MASK)
    for a, b in zip(gallery, exact):
        np.testing.assert_array_equal(pixels(a["image"]), pixels(b["image"]))


def test_modes_choose_the_conditions(tmp_path):
    def argv(mode, mask=tmp_path / "mask.png"):
        return app.command_line("ckpt", mask, "a man", mode, 4, "ddim", 0, 2, tmp_path)

    assert argv("equal")[argv("equal").index("--mode") + 1] == "equal"
    assert "--text" in argv("equal") and "--mask" in argv("equal")
    assert "--text" not in argv("mask alone") and "--mask" in argv("mask alone")
    assert "--mask" not in argv("text alone", mask=None) and "--text" in argv("text alone", mask=None)
    with pytest.raises(UsageError, match="steps is empty"):
        app.command_line("ckpt", None, "a man", "text alone", None, "ddim", 0, 2, tmp_path)


def test_a_cleared_or_transparent_canvas_is_background(tmp_path):
    canvas = np.zeros((4, 4, 4), np.uint8)
    canvas[2:] = 255  # the editor's cleared canvas: opaque white
    canvas[0, 0] = (*PALETTE[13], 255)
    canvas[0, 1] = (*PALETTE[13], 250)  # a stroke's soft edge over nothing: hair, a little darker
    labels = load_label_map(app.mask_file({"composite": canvas}, tmp_path))
    assert labels[0, 0] == labels[0, 1] == 13 and (labels.reshape(-1)[2:] == 0).all()
    assert app.mask_file({"composite": None}, tmp_path) is None


BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install chromium (CI installs it)")
def test_the_page_in_a_real_browser(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(  # a fresh profile (user data dir), no network but ours
            tmp_path / "profile",
            executable_path=str(CHROMIUM),
            args=BROWSER_FLAGS,
            headless=True,
            viewport={"width": 1280, "height": 1400},
        )
        try:
            page = browser.new_page()
            visited = []
            page.on("request", lambda r: visited.append(r.url))
            page.goto(server)
            page.fill("#caption textarea", CAPTION)
            page.locator("label:has-text('steps') input").fill("4")
            page.locator("label:has-text('batch') input").fill("2")
            page.wait_for_selector("#mask canvas")
            page.screenshot(path=tmp_path / "before.png")
            page.click("#run")
            loaded = (
                "[...document.querySelectorAll('#samples img, #influence_mask img, #influence_text img')]"
                ".filter(i => i.complete && i.naturalWidth > 0)"
            )
            page.wait_for_function(f"{loaded}.length >= 4", timeout=120_000)
            sizes = page.evaluate(f"{loaded}.map(i => [i.closest('[id]').id, i.naturalWidth, i.naturalHeight])")
            box = page.locator("#samples").bounding_box()
            page.screenshot(path=tmp_path / "after.png")
        finally:
            browser.close()
    assert [s for s in sizes if s[0] == "samples"][:2] == [["samples", SIDE, SIDE]] * 2
    assert {s[0] for s in sizes} >= {"influence_mask", "influence_text"}
    assert all(url.startswith(server) or url.startswith(("data:", "blob:")) for url in visited), visited
    before, after = pixels(tmp_path / "before.png"), pixels(tmp_path / "after.png")
    x, y, w, h = (round(v) for v in (box["x"], box["y"], box["width"], box["height"]))
    region, blank = after[y : y + h, x : x + w], before[y : y + h, x : x + w]
    assert region.std() > 20 and np.abs(region.astype(int) - blank).mean() > 10  # faces where the page was blank
