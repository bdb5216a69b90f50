"""Seconds per image of the random walk, dense vs sparse (lib/random_walk.py).

VOC size: a 500x375 image padded to 504x376 gives a 63x47 feature map with 448 AffinityNet
channels. Rows for C+1 = 21 walked channels (all VOC classes) and C+1 = 3 (background + two
present classes, the common case: the walk only needs the present classes). Two timings per row:
"full" = features (D, h, w) -> walked CAMs (pair affinities + matrix + walk), "walk" = from the
(P,) pair affinities (what remains when the network already returns affinities).

    python -m tools.bench.bench_random_walk [--threads 2] [--repeats 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import torch

from lib.affinity import pair_affinity
from lib.errors import check_args, run_main
from lib.random_walk import random_walk
from tools.bench._bench import time_fn


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--height", type=int, default=63)
    ap.add_argument("--width", type=int, default=47)
    ap.add_argument("--dim", type=int, default=448)
    ap.add_argument("--channels", type=int, nargs="+", default=[21, 3], help="C+1 values to time")
    args = ap.parse_args(argv)
    check_args(args, {"repeats": ">= 1", "threads": ">= 1", "height": ">= 1", "width": ">= 1",
                      "dim": ">= 1", "channels": ">= 2"})

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    # Small feature spread so that the affinities are spread over (0, 1), not all ~0.
    feats = torch.randn(args.dim, args.height, args.width, generator=g).mul_(0.05).to(device)
    aff = pair_affinity(feats)

    print(f"random walk, map {args.height}x{args.width}, D={args.dim}, beta 8, logt 6, radius 5, "
          f"device {device}, torch threads {args.threads}, {args.repeats} repeats, torch {torch.__version__}")
    header = (f"{'C+1':>4} | {'method':>6} | {'full best':>9} | {'full med':>8} | "
              f"{'walk best':>9} | {'walk med':>8} | max|dense-sparse|/max")
    print(header)
    print("-" * len(header))
    for k in args.channels:
        cams = torch.rand(k, args.height, args.width, generator=g).to(device)
        dense = random_walk(cams, aff, method="dense")
        for method in ("dense", "sparse"):
            full = time_fn(lambda: random_walk(cams, feats, method=method), args.repeats, device)
            walk = time_fn(lambda: random_walk(cams, aff, method=method), args.repeats, device)
            err = ""
            if method == "sparse":
                sparse = random_walk(cams, aff, method="sparse")
                err = f"{((dense - sparse).abs().max() / dense.abs().max()).item():.2e}"
            print(f"{k:>4} | {method:>6} | {full[0]:>9.3f} | {full[1]:>8.3f} | "
                  f"{walk[0]:>9.3f} | {walk[1]:>8.3f} | {err}")
    print("(seconds per image)")


if __name__ == "__main__":
    run_main(main, "bench_random_walk")
