"""JPEG decode + augmentation per data-loader worker, for each stage's training dataset.

One worker process runs ``dataset[i]`` serially, so a single-process loop over the items gives a
worker's images/s. A training step of batch B at S images/s on the GPU needs
``ceil(S / worker images/s)`` workers to keep the GPU busy; with ``--pipeline_json`` (a
``tools.bench.bench_pipeline --json`` file) that count is printed per stage and mode.

Images: a synthetic VOC-layout set of --size x --size JPEGs (quality 95; default 500, the long
side of a VOC image, so a little more work than the 500x375 average), CRF maps for stage 2 made
from its label maps, at the paper's settings (crop 448; stage 1 RandomResizeLong 448-768 and
colour jitter; stage 2 crop 448; stage 3 the VOC config's scale 0.5-1.5, flip, HSV jitter).

    python -m tools.bench.bench_loader [--size 500] [--images 24] [--pipeline_json bench.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from lib.errors import UserError, run_main
from tools.bench._bench import format_table


def make_data(root: Path, n: int, size: int):
    """(layout, ids, cls_labels, la_dir, ha_dir, label_dir) of a synthetic VOC-layout set."""
    from lib.datasets import get_layout
    from lib.io import channel_class_ids, load_cls_labels, save_crf
    from tools.data import make_cls_labels, make_synthetic_voc

    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), \
            contextlib.redirect_stderr(quiet):
        make_synthetic_voc.main(["--out", str(root), "--num_train", str(n), "--num_val", "1",
                                 "--size", str(size), "--seed", "0"])
        make_cls_labels.main(["--data_root", str(root)])
    layout = get_layout("voc", str(root), "train")
    ids = layout.ids()
    cls_labels = load_cls_labels(layout.cls_labels_path())
    from lib.datasets.datasets import load_label

    for iid in ids:  # CRF maps (la = ha) from the ground truth: one-hot over [bg, present classes]
        gt = load_label(layout.gt_path(iid))
        keys = channel_class_ids(np.flatnonzero(cls_labels[iid]))
        probs = np.stack([(gt == k) for k in keys]).astype(np.float32)
        for d in ("la", "ha"):
            save_crf(root / d / f"{iid}.npz", keys, probs)
    return layout, ids, cls_labels, root / "la", root / "ha", layout.gt_path(ids[0]).parent


def datasets(data, crop: int, seg_crop: int) -> dict:
    from lib.config import load_config
    from lib.datasets import AffinityDataset, ClassificationDataset, SegmentationDataset

    layout, ids, cls_labels, la, ha, label_dir = data
    cfg = load_config(Path(__file__).resolve().parents[2] / "voc" / "config_voc2012.py")
    return {
        "cam": ClassificationDataset(layout, cls_labels, crop=crop, resize_long=(448, 768), ids=ids),
        "aff": AffinityDataset(layout, ids, la, ha, crop=crop),
        "seg": SegmentationDataset(layout, label_dir=label_dir, crop=seg_crop,
                                   scale=cfg["RANDOM_SCALE"], flip=cfg["FLIP"], hsv=cfg["HSV"],
                                   train=True, ids=ids),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=500, help="side of the square JPEGs")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--crop_size", "--crop", dest="crop_size", type=int, default=448,
                    help="stage 1/2 crop")
    ap.add_argument("--seg_crop", type=int, default=448, help="stage 3 crop (VOC config CROP)")
    ap.add_argument("--pipeline_json", default=None,
                    help="tools.bench.bench_pipeline --json output: workers needed per training mode")
    args = ap.parse_args(argv)
    if args.images < 2:
        raise UserError("--images must be >= 2")
    import torch

    torch.set_num_threads(1)  # a loader worker's setting
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp), args.images, args.size)
        for stage, ds in datasets(data, args.crop_size, args.seg_crop).items():
            ds[0]  # warm-up: imports, lazy tables
            t0 = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            sec = (time.perf_counter() - t0) / len(ds)
            rows.append({"stage": stage, "ms_per_image": 1e3 * sec, "img_per_s_per_worker": 1 / sec})
    print(f"bench_loader: {args.images} synthetic {args.size}x{args.size} JPEGs, crop "
          f"{args.crop_size} (stage 3: {args.seg_crop}), one worker = one process, 1 thread")
    print(format_table(rows, ("stage", "ms_per_image", "img_per_s_per_worker")))
    if args.pipeline_json:
        bench = json.loads(Path(args.pipeline_json).read_text())["rows"]
        need = []
        for r in bench:
            per_worker = next((q["img_per_s_per_worker"] for q in rows if q["stage"] == r["stage"]), None)
            if r["kind"] == "train" and r.get("img_per_s") and per_worker:
                need.append({"stage": r["stage"], "mode": r["mode"], "gpu_img_per_s": r["img_per_s"],
                             "workers_needed": math.ceil(r["img_per_s"] / per_worker)})
        print("\n" + format_table(need, ("stage", "mode", "gpu_img_per_s", "workers_needed")))
    return 0


if __name__ == "__main__":
    run_main(main, "bench_loader")
