"""Stage 1 — train the ICAM classification network (SEAM + importance sampling + FSL).

Per step (docs/METHOD.md section 3): view 1 = the random crop x1, view 2 = bilinear 0.3x downscale of x1.

    L = (1-w)(GAP1 + GAP2) + w(IS1 + IS2) + (RV1 + RV2)      classification, w = --loss_weight
      + ER + ECR                                              SEAM equivariance terms
      + 0.5 * L_fs(x1, cam1)                                  feature similarity loss (--fsl)

Usage: python -m stage1_cam.train_cam --data_root DIR --session_name EXP/ckpts/cam [...]
Runs as one CPU process, one GPU, or ``torchrun --nproc_per_node K -m stage1_cam.train_cam``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from lib import dist
from lib.cli import add_bool, not_in_paper
from lib.datasets import ClassificationDataset, resolve_list
from lib.errors import check_writable_dir, run_main
from lib.io import load_cls_labels
from lib.losses.classification import classification_loss
from lib.losses.feature_similarity import feature_similarity_loss, fsl_image
from lib.losses.seam import (equivariant_cross_regularization_loss,
                             equivariant_regularization_loss)
from lib.models import build_model
from lib.training import (TrainingRun, add_common_train_args, add_weak_stage_args, autocast,
                          channels_last, check_train_args, iterate_steps, make_loader,
                          prepare_weak_stage)

VIEW2_SCALE = 0.3  # SEAM's second view: the crop downscaled by 0.3
FSL_WEIGHT = 0.5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_weak_stage_args(p, session_default="cam")
    p.add_argument("--resize_long", type=int, nargs=2, default=(448, 768),
                   help="RandomResizeLong range of the long side")
    p.add_argument("--cls_labels", default=None, help="image-level labels npz (default: the layout's)")
    # ICAM's flags.
    p.add_argument("--loss_weight", type=float, default=0.8,
                   help="w: (1-w) GAP + w importance sampling (0 = GAP only, 1 = IS only)")
    p.add_argument("--num_samples", type=int, default=100, help="importance samples per class")
    p.add_argument("--pooling", default="avg", choices=["avg", "max"], help="GAP-branch pooling")
    p.add_argument("--sampling", default="icam", choices=["icam", "hfpl"],
                   help="importance sampling variant (hfpl = binomial/sigmoid extension)")
    add_bool(p, "fsl", True, "feature similarity loss on view 1", old="--no_fsl")
    p.add_argument("--fsl_mu", type=float, default=2.5)
    p.add_argument("--fsl_sigma", type=float, default=5.0)
    p.add_argument("--fsl_mode", default="blocked", choices=["blocked", "dense"],
                   help="blocked = the exact sum in pixel tiles, memory O(HW K); dense = the original (HW)^2 matrices")
    demo = not_in_paper(p)
    demo.add_argument("--view2_scale", type=float, default=VIEW2_SCALE,
                      help="SEAM's second view: the crop bilinearly downscaled by this factor (the "
                           "paper: 0.3). Small crops need a larger factor: 0.3 of a 96 px demo "
                           "crop is a 4x4 CAM whose every cell touches the zero-padded border")
    demo.add_argument("--loss_weight_warmup", type=int, default=0,
                      help="ramp w linearly from 0 to --loss_weight over this many steps (the "
                           "paper: 0 = off); importance sampling needs CAMs that already "
                           "localise, which a network trained from random initialisation does "
                           "not have at first")
    demo.add_argument("--rv_pooling", default="max", choices=["avg", "max"],
                      help="revised-CAM pooling (the paper: max; avg for training from scratch)")
    demo.add_argument("--fsl_align_corners", action=argparse.BooleanOptionalAction, default=True,
                      help="FSL colour input: the crop resized to the CAM size with "
                           "align_corners=True (the original); --no-fsl_align_corners samples "
                           "at the cells' centres")
    add_common_train_args(p)
    args = p.parse_args(argv)
    check_train_args(args, {"view2_scale": "(0, 1]", "loss_weight": "[0, 1]",
                            "loss_weight_warmup": ">= 0", "num_samples": ">= 1",
                            "fsl_sigma": "> 0"})
    return args


def loss_weight_at(step: int, args) -> float:
    """w of the classification loss at ``step`` (linear warm-up with --loss_weight_warmup)."""
    if args.loss_weight_warmup <= 0:
        return args.loss_weight
    return args.loss_weight * min(1.0, step / args.loss_weight_warmup)


def stage1_loss(model, img1, label, args, generator=None, loss_weight=None):
    """Stage-1 loss of this process's crops (N_r,3,S,S) with foreground labels (N_r,C).

    Every term is a mean over images, so the global loss of K processes is
    L = sum_r (N_r / N) L_r (``lib.dist.batch_share``). Returns (K (N_r / N) L_r, the loss to
    back-propagate: DDP averages its gradients into dL; L itself on one process,
    parts: the logged terms of the whole batch). ``loss_weight`` overrides
    ``args.loss_weight`` (the warm-up schedule).
    """
    share = dist.batch_share(img1.shape[0], img1.device)
    # record_function labels: the rows of tools.bench.profile_step's table (no cost outside a profiler)
    with record_function("forward.view1"):
        img2 = F.interpolate(img1, scale_factor=args.view2_scale, mode="bilinear",
                             align_corners=True)
        out1 = model(img1)
    with record_function("forward.view2"):
        out2 = model(img2)
    w = args.loss_weight if loss_weight is None else loss_weight
    with record_function("loss.classification"):
        cls, parts = classification_loss(out1, out2, label, loss_weight=w,
                                         num_samples=args.num_samples, pooling=args.pooling,
                                         rv_pooling=args.rv_pooling, sampling=args.sampling,
                                         generator=generator)
    with record_function("loss.seam"):
        er = equivariant_regularization_loss(out1.cam, out1.cam_rv, out2.cam, out2.cam_rv)
        ecr = equivariant_cross_regularization_loss(out1.cam, out1.cam_rv, out2.cam, out2.cam_rv)
    total = cls + er + ecr
    parts = {**parts, "er": er, "ecr": ecr}
    if args.fsl:
        with record_function("loss.fsl"):
            # FSL compares colours at the CAM resolution: the crop resized to it, in [0, 1].
            image01 = fsl_image(img1, out1.cam.shape[-2:],
                                align_corners=getattr(args, "fsl_align_corners", True))
            fsl = feature_similarity_loss(image01, out1.cam.float(), mu=args.fsl_mu,
                                          sigma=args.fsl_sigma, mode=args.fsl_mode)
        total = total + FSL_WEIGHT * fsl
        parts["fsl"] = fsl
    parts["total"] = total
    # One read-back of all logged values (float64, then the share in double precision).
    parts = dist.global_parts({k: share * v.detach().double() for k, v in parts.items()},
                              img1.device)
    return total * (share * dist.world_size()), parts


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    check_writable_dir(Path(args.session_name).parent, "checkpoint folder (--session_name)")
    rank, world, device = dist.setup_distributed(args.device)
    dist.seed_everything(args.seed, rank)

    layout, train_ids = resolve_list(args.dataset, args.data_root, args.train_list)
    cls_labels = load_cls_labels(args.cls_labels or layout.cls_labels_path())
    dataset = ClassificationDataset(layout, cls_labels, crop=args.crop_size,
                                    resize_long=tuple(args.resize_long),
                                    color_jitter=args.color_jitter, ids=train_ids,
                                    seed=args.seed)
    loader, sampler = make_loader(dataset, args.batch_size, rank, world, args.seed, args.num_workers)

    model = build_model("cam", num_classes=layout.num_classes, width=args.backbone_width,
                        freeze=args.frozen_bn)
    model, optimizer, max_step = prepare_weak_stage(model, args, "train_cam", len(dataset))
    sample_gen = torch.Generator(device=device).manual_seed(args.seed * 1000 + rank)
    run = TrainingRun(args, "train_cam", args.batch_size, max_step)
    model, start = run.start(model, optimizer, device, world, {"num_images": len(dataset)},
                             generators={"importance_sampling": sample_gen})
    model.train()
    step = start
    for step, batch in iterate_steps(loader, sampler, max_step, start):
        def loss_fn(mb, step=step):
            img = channels_last(mb["image"].to(device, non_blocking=True), args.channels_last)
            label = mb["label"].to(device, non_blocking=True)
            with autocast(args.amp, device):
                return stage1_loss(model, img, label, args, generator=sample_gen,
                                   loss_weight=loss_weight_at(step, args))
        run.accumulated_step(step, model, optimizer, batch, loss_fn)
    run.finish(model, optimizer, step)


if __name__ == "__main__":
    run_main(main, "train_cam")
