"""Dense-CRF throughput at VOC size with 1, 2, ... worker processes (lib.pool.BoundedPool).

Cases (synthetic image and maps of --size, default 375x500, the common VOC 500x375 landscape):

    stage1   infer_cam's per-image job: crf_from_cam for alpha 2 and alpha 4 (K present classes
             + background), both written as .npz, as every train_aug and val image gets
    final    infer_seg's test CRF on val: dense_crf on the 21-channel probabilities, PNG written

For each worker count W the same --images jobs go through the pool exactly as the stage scripts
submit them; images/s = images / wall seconds (pool start-up excluded, one warm-up job per
worker first), speedup = vs W = 1. W = 0 is the serial reference in this process.

    python -m tools.bench.bench_crf --crf_workers 1 2            # ~1-2 min on 2 idle cores
    python -m tools.bench.bench_crf --crf_workers 1 2 4 8 14 --images 64    # a 16-core GPU box

The speedup is only meaningful on otherwise idle cores.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lib.errors import UserError, run_main
from lib.pool import BoundedPool
from tools.bench._bench import format_table

CASES = ("stage1", "final")


def synthetic_inputs(size: tuple[int, int], classes: int, seed: int = 0):
    """(image (H, W, 3) uint8, keys (K,), cams (K, H, W) in [0, 1], probs (21, H, W)): smooth
    random blobs, so that the CRF sees edges and uncertain regions as on real images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size

    def smooth(c: int, cells: int = 6) -> np.ndarray:
        coarse = rng.random((c, cells, cells)).astype(np.float32)
        return np.stack([np.asarray(Image.fromarray(m).resize((w, h), Image.BICUBIC)) for m in coarse])

    image = (np.clip(smooth(3).transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
    keys = np.sort(rng.choice(20, size=classes, replace=False)).astype(np.int64)
    cams = np.clip(smooth(classes), 0, 1) ** 2
    cams = (cams / cams.reshape(classes, -1).max(1)[:, None, None]).astype(np.float32)
    logits = smooth(21) * 6
    probs = np.exp(logits - logits.max(0))
    probs = (probs / probs.sum(0)).astype(np.float32)
    return np.ascontiguousarray(image), keys, cams, probs


def _final_job(out_path, probs, image):
    from stage3_seg.infer_seg import _finish

    return _finish(out_path, probs, image, True)


def run_case(case: str, workers: int, n: int, inputs, out_dir: Path) -> float:
    """Wall seconds of ``n`` jobs of ``case`` through a pool of ``workers`` (after warm-up)."""
    from stage1_cam.infer_cam import _crf_job

    image, keys, cams, probs = inputs

    def submit(pool, i):
        if case == "stage1":
            pool.submit(_crf_job, (image, keys, cams, [(a, out_dir / f"alpha_{a}" / f"{i}.npz")
                                                       for a in (2.0, 4.0)]))
        else:
            pool.submit(_final_job, str(out_dir / "final" / f"{i}.png"), probs, image)

    with BoundedPool(workers) as pool:
        for i in range(max(1, workers)):  # warm-up: imports in every worker
            submit(pool, f"warm{i}")
        pool.results()
        t0 = time.perf_counter()
        for i in range(n):
            submit(pool, i)
        pool.results()
        return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crf_workers", "--workers", dest="crf_workers", type=int, nargs="+", default=[1, 2],
                    help="pool sizes to time (0 = serial in this process)")
    ap.add_argument("--images", type=int, default=8, help="jobs per measurement")
    ap.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    ap.add_argument("--classes", type=int, default=2, help="present foreground classes K (stage1)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.images < 1 or min(args.crf_workers) < 0 or not 1 <= args.classes <= 20:
        raise UserError("--images must be >= 1, --crf_workers >= 0, --classes in 1..20")

    inputs = synthetic_inputs(tuple(args.size), args.classes)
    print(f"bench_crf: {args.size[0]}x{args.size[1]}, stage1 = alpha 2 + alpha 4 with "
          f"{args.classes}+1 labels, final = 21 labels; {args.images} images per measurement",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            base = None
            for w in args.crf_workers:
                sec = run_case(case, w, args.images, inputs, Path(tmp))
                ips = args.images / sec
                base = base or (ips if w == 1 else None)
                rows.append({"case": case, "workers": w, "s_per_image": sec / args.images,
                             "img_per_s": ips, "speedup_vs_1": ips / base if base else None})
                print(format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    print("\n" + format_table(rows, COLUMNS))
    if args.json:
        import torch

        from tools.bench._bench import write_json

        write_json(args.json, rows, torch.device("cpu"), size=args.size, classes=args.classes)
    return 0


COLUMNS = ("case", "workers", "s_per_image", "img_per_s", "speedup_vs_1")

if __name__ == "__main__":
    run_main(main, "bench_crf")
