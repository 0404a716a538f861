"""The interactive page's time from request to images, against the same sampling without the page.

    python bench/app_latency.py [--steps 50] [--batch 4] [--warm 3]

With the page's defaults (the demo models, the example mask and caption, 50 DDIM steps, batch 4, released weights)
it times, in one process: sample.py's function path (parse_args, validate, generate: what the page calls) and then a
local server of the page asked through gradio's own client (the mask upload, the pictures of every step, PNG
encoding and downloads on top). Each first request includes the sampler's compilation (the caches are cleared in
between); the warm figures are medians of --warm more requests each with other seeds, the two taking turns so that
a busy machine slows both alike. Prints markdown rows.
"""

import argparse
import socket
import statistics
import tempfile
import time

import jax
from gradio_client import Client, handle_file

from cdiff_jax import app
from cdiff_jax.checkpoint import load_system
from cdiff_jax.commands import sample as sample_command
from cdiff_jax.requests import DEMO_CAPTION, DEMO_CHECKPOINT, DEMO_MASK


def seconds(run, seed) -> float:
    start = time.perf_counter()
    run(seed)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warm", type=int, default=3)
    args = p.parse_args()
    workspace = tempfile.TemporaryDirectory(prefix="app_latency_")  # removed when the program ends
    folder = workspace.name

    system = load_system(DEMO_CHECKPOINT)

    def request(seed):
        return sample_command.validate(
            sample_command.parse_args(
                [
                    "--checkpoint",
                    str(DEMO_CHECKPOINT),
                    "--mask",
                    str(DEMO_MASK),
                    "--text",
                    DEMO_CAPTION,
                    "--steps",
                    str(args.steps),
                    "--batch",
                    str(args.batch),
                    "--seed",
                    str(seed),
                    "--save-influence",
                    "--out",
                    f"{folder}/out",
                ]
            )
        )

    def baseline(seed):
        sample_command.generate(system, request(seed), on_step=lambda done, total: None)  # a reporter, as sample.py

    request(0)  # the tokenizer's first load, once for both: the first requests differ by compilation alone
    first = {"direct": seconds(baseline, 0)}
    jax.clear_caches()

    blocks = app.build(str(DEMO_CHECKPOINT))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    blocks.launch(
        server_name="127.0.0.1", server_port=port, share=False, ssr_mode=False, quiet=True, prevent_thread_lock=True
    )
    client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=folder)
    mask = handle_file(str(DEMO_MASK))

    def page(seed):
        client.predict(
            {"background": mask, "layers": [], "composite": mask},
            DEMO_CAPTION,
            "released",
            args.steps,
            "ddim",
            seed,
            args.batch,
            api_name="/sample",
        )

    try:
        first["page"] = seconds(page, 0)
        warm = {"direct": [], "page": []}
        for seed in range(1, args.warm + 1):
            warm["direct"].append(seconds(baseline, seed))
            warm["page"].append(seconds(page, seed))
    finally:
        blocks.close()
    direct, served = statistics.median(warm["direct"]), statistics.median(warm["page"])
    print(f"| what | first request (compilation included) | warm request (median of {args.warm}) |\n|---|---|---|")
    print(
        f"| sample.py's path (validate + generate), {args.steps} DDIM steps, batch {args.batch} | "
        f"{first['direct']:.1f} s | {direct:.2f} s |"
    )
    print(
        f"| the page through gradio_client, same request | {first['page']:.1f} s "
        f"({first['page'] / first['direct']:.2f}x) | {served:.2f} s ({served / direct:.2f}x) |"
    )


if __name__ == "__main__":
    main()
