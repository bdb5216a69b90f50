r"""Stage 2 — train AffinityNet on the la/ha CRF maps of stage 1 (docs/METHOD.md section 5, after PSA).

Per step: a batch of crops (N,3,S,S) with pixel labels (N,S/8,S/8) from
:class:`lib.datasets.affinity_dataset.AffinityDataset` (0 bg, k+1 class k, 255 void);
pair labels of the radius-5 neighbour pairs (``lib.affinity.extract_pair_labels``):

    bg  = both ends background,  fg = same foreground class (both valid),
    neg = different labels (both valid)
    a   = AffinityNet(x)  (N, P),  a = exp(-mean_c |f_from - f_to|)
    L   = L_bg/4 + L_fg/4 + L_neg/2,   L_bg = sum(-bg log(a+1e-5)) / (sum(bg)+1e-5),
          L_fg likewise, L_neg = sum(-neg log(1+1e-5-a)) / (sum(neg)+1e-5)

SGD (PolyOptimizer, lr x1/x2 backbone weights/biases, x10/x20 new layers f8_3, f8_4, f8_5, f9),
max_step = (N_images // batch) * max_epoches.

Usage: python -m stage2_aff.train_aff --data_root DIR --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params \
         --la_crf_dir EXP/plabels/train/crf/alpha_2.0 --ha_crf_dir EXP/plabels/train/crf/alpha_4.0 \
         --session_name EXP/ckpts/aff
Runs as one CPU process, one GPU, or ``torchrun --nproc_per_node K -m stage2_aff.train_aff``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lib import dist
from lib.cli import not_in_paper
from lib.affinity import extract_pair_labels
from lib.datasets import AffinityDataset, resolve_list
from lib.errors import UserError, check_writable_dir, run_main
from lib.losses.affinity import affinity_loss
from lib.models import build_model
from lib.training import (TrainingRun, add_common_train_args, add_weak_stage_args, autocast,
                          channels_last, check_train_args, iterate_steps, make_loader,
                          prepare_weak_stage)

RADIUS = 5  # PSA's pair radius at stride 8


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_weak_stage_args(p, session_default="aff")
    p.add_argument("--la_crf_dir", required=True, help="CRF maps of alpha 2 (crf/alpha_2.0)")
    p.add_argument("--ha_crf_dir", required=True, help="CRF maps of alpha 4 (crf/alpha_4.0)")
    not_in_paper(p).add_argument(
        "--resize_long", type=int, nargs=2, default=None, metavar=("LO", "HI"),
        help="joint RandomResizeLong of image and CRF maps before the crop (the paper: none)")
    add_common_train_args(p)
    args = p.parse_args(argv)
    check_train_args(args)
    return args


def pair_loss(aff: torch.Tensor, bg: torch.Tensor, fg: torch.Tensor, neg: torch.Tensor):
    """The affinity loss of the global batch, from this process's pairs.

    Each term is a sum over pairs divided by the pair count; with the counts all-reduced over
    the K processes, the K local losses add up to the loss of the whole batch. Returns (K x the
    local loss, the loss to back-propagate: DDP averages its gradients into the global one;
    logged scalars of the whole batch).
    """
    counts = dist.all_reduce_sum(torch.stack([bg.sum(), fg.sum(), neg.sum()]).double())
    loss, parts = affinity_loss(aff.float(), bg, fg, neg, counts=counts)
    logged = dist.global_parts({"loss": loss.detach(),
                                **{f"{k}_loss": v.detach() for k, v in parts.items()}},
                               aff.device)  # one read-back of the logged values
    logged.update(zip(("bg_cnt", "fg_cnt", "neg_cnt"), counts.tolist()))
    return loss * dist.world_size(), logged


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.crop_size % 8:
        raise UserError(f"--crop_size: {args.crop_size} must be a multiple of 8 (stride of the features)")
    check_writable_dir(Path(args.session_name).parent, "checkpoint folder (--session_name)")
    rank, world, device = dist.setup_distributed(args.device)
    dist.seed_everything(args.seed, rank)

    layout, ids = resolve_list(args.dataset, args.data_root, args.train_list)
    dataset = AffinityDataset(layout, ids, args.la_crf_dir, args.ha_crf_dir, crop=args.crop_size,
                              resize_long=tuple(args.resize_long) if args.resize_long else None,
                              radius=RADIUS, color_jitter=args.color_jitter, seed=args.seed)
    dataset.check_files()
    loader, sampler = make_loader(dataset, args.batch_size, rank, world, args.seed, args.num_workers)

    model = build_model("aff", width=args.backbone_width, freeze=args.frozen_bn)
    model, optimizer, max_step = prepare_weak_stage(model, args, "train_aff", len(dataset))
    run = TrainingRun(args, "train_aff", args.batch_size, max_step)
    model, start = run.start(model, optimizer, device, world, {"num_images": len(dataset)})
    model.train()  # the network keeps its BatchNorm frozen (eval mode) itself
    step = start
    def loss_fn(mb):
        img = channels_last(mb["image"].to(device, non_blocking=True), args.channels_last)
        label = mb["label"].to(device, non_blocking=True)
        bg, fg, neg = extract_pair_labels(label, RADIUS)
        with autocast(args.amp, device), torch.profiler.record_function("forward"):
            aff = model(img)
        if aff.shape != bg.shape:
            raise RuntimeError(f"train_aff: network gives affinities {tuple(aff.shape)} but the "
                               f"{tuple(label.shape[-2:])} label map has {tuple(bg.shape)} pairs")
        with torch.profiler.record_function("loss.affinity"):
            return pair_loss(aff, bg, fg, neg)

    for step, batch in iterate_steps(loader, sampler, max_step, start):
        run.accumulated_step(step, model, optimizer, batch, loss_fn)
    run.finish(model, optimizer, step)


if __name__ == "__main__":
    run_main(main, "train_aff")
