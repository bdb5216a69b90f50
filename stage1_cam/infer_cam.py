"""Stage 1 — multi-scale + flip CAM inference and dense-CRF probability maps (docs/METHOD.md section 4).

For each image: 4 scales x {original, flip} passes of ``0.5 * cam + 0.5 * cam_rv``, each
label-conditioned (multiply by [1, y], renormalise over channels), foreground channels upsampled
to the image and un-flipped; the mean M (C,H,W) keeps only the maximal class per pixel and each
class map is divided by its maximum. Saves ``<out_cam>/<id>.npz`` (lib.io CAM format) and, for
each alpha, the CRF of [(1 - max_k M_k)^alpha, M_present] as ``<out_crf>/alpha_<a>/<id>.npz``.
For networks trained from scratch (the demo), ``--cam_source relu_logits`` replaces the softmax
by ReLU'd foreground logits and ``--cam_power`` narrows the maps (``multiscale_cam``,
``normalise_cams``).

Usage: python -m stage1_cam.infer_cam --weights cam.pth --infer_list val --data_root DIR \
         --out_cam EXP/plabels/val/cam --out_crf EXP/plabels/val/crf
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lib.cli import add_backbone_width, add_bool, add_data_args, add_num_workers, not_in_paper
from lib.workers import crf_workers, infer_loader_workers, workers_arg
from lib.crf import crf_from_cam_alphas
from lib.datasets import MultiScaleInferenceDataset, resolve_list
from lib.errors import check_args, run_main
from lib.inference import InferenceRun
from lib.io import load_cls_labels, save_cam, save_crf
from lib.models import build_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="trained CAM network (.pth state_dict)")
    p.add_argument("--infer_list", default="val", help="split name or list file")
    add_data_args(p)
    p.add_argument("--cls_labels", default=None)
    p.add_argument("--out_cam", required=True, help="folder of CAM .npz artifacts")
    p.add_argument("--out_crf", default=None, help="folder for crf/alpha_<a>/ (omit to skip the CRF)")
    p.add_argument("--crf_alphas", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0])
    add_bool(p, "flip", True, "add the horizontal flip of every scale", old="--no_flip")
    add_backbone_width(p)
    add_num_workers(p)
    p.add_argument("--crf_workers", type=workers_arg, default="auto",
                   help="processes running the dense CRF (0: in the main process); one core each; "
                        "auto (default): the cores the loaders leave (lib/workers.py). "
                        "At VOC size the CRF, not the network, bounds a GPU run: give it the cores "
                        "the data loaders leave free (docs/PERFORMANCE.md)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0)
    demo = not_in_paper(p)
    demo.add_argument("--cam_source", default="softmax", choices=["softmax", "relu_logits"],
                      help="softmax = the paper's label-conditioned channel softmax (background "
                           "channel included); relu_logits = ReLU of the foreground logits, the "
                           "classic CAM (PSA), for networks whose background channel is untrained "
                           "(the demo trains stage 1 from scratch with GAP)")
    demo.add_argument("--cam_power", type=float, default=1.0,
                      help="raise the normalised CAMs to this power before saving and the CRF "
                           "(the paper: 1). >1 narrows maps that are too wide for the fixed "
                           "background rules downstream (threshold, (1 - max)^alpha), e.g. "
                           "relu_logits CAMs")
    args = p.parse_args(argv)
    args.num_workers = infer_loader_workers(args.num_workers)
    args.crf_workers = crf_workers(args.crf_workers, args.num_workers)
    check_args(args, {"crf_alphas": "> 0", "scales": "> 0", "cam_power": "> 0",
                      "backbone_width": "> 0", "num_workers": ">= 0", "crf_workers": ">= 0",
                      "threads": ">= 0"})
    return args


@torch.no_grad()
def multiscale_cam(model, images: list[torch.Tensor], label: torch.Tensor, size: tuple[int, int],
                   flip: bool, source: str = "softmax") -> torch.Tensor:
    """Mean over passes of the label-conditioned foreground maps, (C, H, W).

    images: per scale a (2 or 1, 3, h, w) batch (original, h-flipped); label: (C,) multi-hot.
    source 'softmax': p = (0.5 cam + 0.5 cam_rv) * [1, y], renormalised over channels;
    'relu_logits': p = ReLU(0.5 cam_logits + 0.5 cam_rv_logits) * [1, y] (no renormalisation).
    """
    cond = torch.cat([label.new_ones(1), label]).view(1, -1, 1, 1)
    acc, n = None, 0
    for x in images:
        if source == "relu_logits":
            logits, rv_logits = model.forward_cam_logits(x)
            p = torch.relu(0.5 * logits + 0.5 * rv_logits) * cond
        else:
            cam, cam_rv = model.forward_cam(x)
            p = (0.5 * cam + 0.5 * cam_rv) * cond
            p = p / p.sum(1, keepdim=True).clamp_min(1e-8)
        p = F.interpolate(p[:, 1:], size=size, mode="bilinear", align_corners=False)
        if flip and p.shape[0] == 2:
            p = torch.stack([p[0], p[1].flip(-1)])
        acc = p.sum(0) if acc is None else acc + p.sum(0)
        n += p.shape[0]
    return acc / n


def normalise_cams(mean_cam: torch.Tensor, label: torch.Tensor,
                   power: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Keep the per-pixel maximal class, divide each class map by its max, raise to ``power``;
    present classes only.

    Returns (keys (K,) foreground ids, cams (K,H,W) float32 in [0, 1]).
    """
    winner = mean_cam.argmax(0, keepdim=True)
    m = torch.zeros_like(mean_cam).scatter_(0, winner, mean_cam.gather(0, winner))
    m = m / (m.flatten(1).max(1).values.view(-1, 1, 1) + 1e-5)
    keys = torch.nonzero(label > 0).flatten()
    m = m[keys]
    if power != 1.0:
        m = m.pow(power)
    return keys.cpu().numpy(), m.cpu().numpy().astype(np.float32)


def _crf_job(job) -> None:
    image, keys, cams, targets = job
    results = crf_from_cam_alphas(image, keys, cams, [alpha for alpha, _ in targets])
    for (_, path), (crf_keys, probs) in zip(targets, results):
        save_crf(path, crf_keys, probs)


def main(argv=None) -> None:
    args = parse_args(argv)
    run = InferenceRun("infer_cam", args.device, args.threads)
    layout, all_ids = resolve_list(args.dataset, args.data_root, args.infer_list)
    cls_labels = load_cls_labels(args.cls_labels or layout.cls_labels_path())
    out_cam = Path(args.out_cam)
    crf_dirs = {a: Path(args.out_crf) / f"alpha_{a:.1f}" for a in args.crf_alphas} if args.out_crf else {}
    todo = run.select(all_ids, lambda i: [out_cam / f"{i}.npz",
                                          *[d / f"{i}.npz" for d in crf_dirs.values()]],
                      args.overwrite)
    if todo:
        # The dataset first: it checks that every image exists before the model is loaded.
        dataset = MultiScaleInferenceDataset(layout, cls_labels, scales=tuple(args.scales),
                                             flip=args.flip, ids=todo)
        model = run.load_model(build_model("cam", num_classes=layout.num_classes,
                                           width=args.backbone_width), args.weights)
        workers = args.crf_workers if crf_dirs else 0
        with run.pool(workers, max_pending=4 * workers) as pool:
            for item in run.progress(run.loader(dataset, args.num_workers), len(todo)):
                image = item["image_uint8"]
                label = item["label"].to(run.device)
                mean_cam = multiscale_cam(model, [x.to(run.device) for x in item["images"]], label,
                                          image.shape[:2], flip=args.flip,
                                          source=args.cam_source)
                keys, cams = normalise_cams(mean_cam, label, args.cam_power)
                save_cam(out_cam / f"{item['id']}.npz", keys, cams)
                if crf_dirs:
                    pool.submit(_crf_job, (image, keys, cams,
                                           [(a, d / f"{item['id']}.npz") for a, d in crf_dirs.items()]))
    run.finish()


if __name__ == "__main__":
    run_main(main, "infer_cam")
