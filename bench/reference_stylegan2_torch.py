"""The official StyleGAN2 code's cost for what `bench/stylegan2.py --official ...` times, on the same machine.

Not part of the package and not run by the tests: it needs torch and a checkout of
NVlabs/stylegan2-ada-pytorch (its top folder, which holds `training/`, `torch_utils/` and `dnnlib/`),
in a separate Python 3.11 environment:

    python3.11 -m venv .venv-reference
    .venv-reference/bin/pip install torch==2.13.0 numpy requests   # dnnlib imports requests
    .venv-reference/bin/python bench/reference_stylegan2_torch.py --source ../stylegan2-ada-pytorch

Builds the official `Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3)` with its
default sizes (channel_base 32768, channel_max 512, 8 mapping layers, no fp16, no clamp) and random weights
(torch.manual_seed(0)), float32, eval, no_grad, 2 threads, and times one whole forward (mapping + synthesis,
truncation 1, noise_mode 'const') of batch 1. On CPU the official ops (bias_act, upfirdn2d, conv2d_gradfix)
take their reference (plain torch) paths; in eval at float32 the modulated convolutions take the official
fused (grouped) path.

With --serve it builds and warms up, prints `ready`, then times one forward per line read from stdin and
prints its seconds: bench/stylegan2.py drives it that way to alternate rounds with our generator.
"""

import argparse
import os
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="checkout of NVlabs/stylegan2-ada-pytorch")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--serve", action="store_true", help="time one forward per stdin line (for bench/stylegan2.py)")
    args = p.parse_args()
    sys.path.insert(0, args.source)

    import torch
    from training.networks import Generator

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=args.resolution, img_channels=3).eval()
    z = torch.randn(1, g.z_dim)
    c = torch.zeros(1, g.c_dim)

    def forward():
        start = time.perf_counter()
        with torch.no_grad():
            img = g(z, c, truncation_psi=1, noise_mode="const")
        seconds = time.perf_counter() - start
        assert img.shape == (1, 3, args.resolution, args.resolution) and img.dtype == torch.float32
        return seconds

    params = sum(p.numel() for p in g.parameters())
    info = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, official Generator "
        f"{args.resolution}x{args.resolution}, {params / 1e6:.1f} M parameters, load average {os.getloadavg()}"
    )
    forward()  # warm-up
    if args.serve:
        print(info, file=sys.stderr)
        print("ready", flush=True)
        for _ in sys.stdin:
            print(f"{forward():.6f}", flush=True)
        return
    print(info)
    times = [forward() for _ in range(args.repeats)]
    print(f"forward (mapping + synthesis), batch 1: best {min(times):.3f} s of {', '.join(f'{t:.3f}' for t in times)}")


if __name__ == "__main__":
    main()
