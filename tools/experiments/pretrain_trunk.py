"""Pretrain the ResNet-38 trunk on a synthetic "ImageNet": image-level classification only.

Usage::

    python -m tools.experiments.pretrain_trunk --out pretrained/synthetic_trunk_w0.125.pth \\
        --width 0.125 --size 96 --batch_size 32 --max_steps 2500 --threads 2 --num_workers 1

The paper starts every network from a ResNet-38 pretrained on ImageNet classification. A laptop
has no ImageNet, so this tool makes the project's own trunk the same way: image-level labels on a
large, varied corpus, here drawn on the fly by the synthetic generator's machinery
(``tools.data.make_synthetic_voc``: shapes, textures, cluttered backgrounds, distractors).

Corpus. ``CATEGORIES`` = every pair of the 8 shapes and 6 textures of the generator (48
categories), each with a preferred hue (+-0.12, random saturation / value, so colour is a weak
cue); the demo's five classes (disc/stripes, box/checker, triangle/dots, star/gradient,
ring/blotchy, with their hues) are among them, as VOC's classes are among ImageNet's. An image
holds 1-3 objects of distinct categories (extent 15-55 % of the side), 0-3 distractors under them
and sometimes 1-2 over them (ellipses and blobs in flat or mottled colours; with
``--shape_distractors P`` a distractor takes one of the categories' shapes with probability P), and
a background with 3-11 clutter lines. No segmentation mask is made or used: a sample is (image, category set).

Streams (disjoint from the demo). The demo draws image ``i`` from
``np.random.default_rng([seed, i])`` (seed 0 for train and val). Training image ``i`` here comes
from ``default_rng([TRAIN_TAG, seed, i])`` and held-out image ``i`` from
``default_rng([VAL_TAG, seed, i])``: seed sequences of another length with a distinct leading
constant, hence other streams. Step ``s`` trains on images ``s*B .. s*B+B-1``, so the data of a
step does not depend on where a run was resumed.

Labels: multi-label (1-3 objects). With one linear classifier after global average pooling, an
image holding several categories can only be scored right if each category's evidence stays where
its object is, which is what the CAM of stage 1 reads from the trunk; the downstream images hold
1-3 objects too. The loss is the multi-label softmax (cross-entropy against the normalised
multi-hot target, Mahajan et al. 2018), which learned clearly faster in pilots than stage 1's
per-class sigmoid (``--loss sigmoid``; docs/PRETRAINING.md). Accuracy is the fraction of images
whose top-n scores (n = the image's number of categories) are exactly its categories; top-1 the
fraction whose best score is one of its categories.

Network: the ImageNet ResNet-38 layout, trunk -> bn7 -> ReLU -> global average pooling ->
linear (the original's ``linear1000``, here one output per category). Training: AdamW (or SGD,
momentum 0.9) with a linear warm-up and a cosine (or poly, power 0.9) decay to 0, weight decay on
the convolution / linear weights only, BatchNorm in training mode, the trunk's dropout on
(``--no-dropout`` removes it). Deterministic for a seed on a given machine and thread count: the
weights are initialised after seeding, each step reseeds dropout from (seed, step), and a resumed
run (``--resume STATE``) gives the same tensors as an uninterrupted one.

Output: ``--out`` holds the trunk only, in the key layout of the converted ImageNet weights
(``conv1a.weight``, ``b2.bn_branch2a.weight``, ..., ``bn7.running_var``; no head, no
``num_batches_tracked``), float32 or float16 (``--fp16``; loading restores float32), written
atomically; ``--weights`` of the three stages loads it as it loads the ImageNet file. Next to it
``<out>.json`` records the command, categories, head, accuracies, time and the file's sha256.
``<out>.state.pth`` (every ``--save_every`` steps and at the end) holds trunk, head, optimiser
and step for ``--resume``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lib import dist
from lib.backbones.resnet38d import ResNet38d
from lib.checkpoint import checkpoint_bytes, load_verified, write_bytes_atomic
from lib.cli import add_bool
from lib.datasets.transforms import Normalize
from lib.errors import RunError, UserError, run_main
from lib.io import atomic_path
from tools.data import make_synthetic_voc as msv

TRAIN_TAG = 0x1CA3_7001   # leading constants of the pretraining seed sequences (see docstring)
VAL_TAG = 0x1CA3_7002
SIZE_RANGE = (0.15, 0.55)
GOLDEN = 0.6180339887


def _categories() -> tuple[tuple[str, str, float], ...]:
    """(shape, texture, preferred hue): the demo's five first, then the other pairs."""
    demo = [(name, msv.CLASS_TEXTURES[name], msv.CLASS_HUES[name]) for name in msv.SYNTHETIC_CLASSES]
    rest = [(s, t) for s in msv.SHAPES for t in msv.TEXTURES if (s, t) not in {d[:2] for d in demo}]
    return tuple(demo + [(s, t, round((0.07 + GOLDEN * k) % 1.0, 4)) for k, (s, t) in enumerate(rest)])


CATEGORIES = _categories()
CATEGORY_NAMES = tuple(f"{s}/{t}" for s, t, _ in CATEGORIES)


def _distractor(rng: np.random.Generator, size: int, shape_p: float = 0.5) -> msv.Shape:
    """An ellipse or blob (as in the demo), or with probability ``shape_p`` one of the categories'
    shapes, to be painted in a distractor's flat or mottled colours."""
    if rng.random() < 1.0 - shape_p:
        return msv._distractor_shape(rng, size)
    shape = msv.SHAPES[int(rng.integers(len(msv.SHAPES)))]
    return msv.object_shape(shape, rng, size, size_range=(0.12, 0.35))


def render_pretrain_sample(tag: int, seed: int, index: int, size: int,
                           shape_distractors: float = 0.5) -> tuple[np.ndarray, list[int]]:
    """Image ``index`` of the stream (tag, seed): (image (S, S, 3) uint8, sorted category ids).
    ``shape_distractors``: probability that a distractor takes a category's shape."""
    rng = np.random.default_rng([tag, seed, index])
    f = size / 128.0
    img = msv._background(rng, size, f, lines=(3, 12))
    n_under = int(rng.integers(0, 4))
    cats = rng.choice(len(CATEGORIES), size=int(rng.integers(1, 4)), replace=False)
    n_over = int(rng.choice(3, p=[0.6, 0.3, 0.1]))
    image, _, layers = msv.compose_scene(
        rng, size, img, n_under, [lambda c=int(c): c for c in cats], n_over,
        lambda c, centred: msv.object_shape(CATEGORIES[c][0], rng, size, centred, SIZE_RANGE),
        lambda c, shape, x, y: msv.object_texture(CATEGORIES[c][1], CATEGORIES[c][2], shape, x, y, rng, f),
        lambda: _distractor(rng, size, shape_distractors))
    return image, sorted({layer.cls for layer in layers if layer.cls >= 0})


class PretrainImages(torch.utils.data.Dataset):
    """Item ``i``: (normalised image (3, S, S) float32, multi-hot targets (K,) float32)."""

    def __init__(self, tag: int, seed: int, size: int, shape_distractors: float = 0.5):
        self.tag, self.seed, self.size = tag, seed, size
        self.shape_distractors = shape_distractors
        self.normalize = Normalize()

    def __len__(self) -> int:
        return 2 ** 40                     # an unbounded stream; the sampler picks the indices

    def __getitem__(self, i: int):
        image, cats = render_pretrain_sample(self.tag, self.seed, int(i), self.size,
                                             self.shape_distractors)
        y = torch.zeros(len(CATEGORIES))
        y[cats] = 1.0
        return torch.from_numpy(self.normalize(image).transpose(2, 0, 1).copy()), y


class TrunkClassifier(nn.Module):
    """ResNet-38 trunk -> bn7 -> ReLU -> global average pooling -> linear: (N, 3, H, W) -> (N, K)."""

    def __init__(self, width: float, num_classes: int, dropout: bool = True):
        super().__init__()
        self.trunk = ResNet38d(width=width)
        if not dropout:
            for m in self.trunk.modules():
                if isinstance(m, nn.Dropout2d):
                    m.p = 0.0
        self.linear1000 = nn.Linear(self.trunk.channels["conv6"], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear1000(self.trunk(x).mean(dim=(2, 3)))


def trunk_state_dict(model: TrunkClassifier, fp16: bool = False) -> dict[str, torch.Tensor]:
    """The trunk's tensors under the converted-ImageNet keys (no head, no num_batches_tracked)."""
    out = {}
    for k, v in model.trunk.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        v = v.detach().clone()
        out[k] = v.half() if fp16 and v.is_floating_point() else v
    return out


def classification_loss(logits: torch.Tensor, y: torch.Tensor, kind: str,
                        reduction: str = "mean") -> torch.Tensor:
    """(N, K) logits, (N, K) multi-hot targets -> loss.

    ``softmax``: cross-entropy against the normalised targets, -sum_k (y_k / |y|) log softmax_k
    (the multi-label softmax of Mahajan et al. 2018, weakly supervised pretraining on hashtags);
    ``sigmoid``: the multilabel soft-margin loss of stage 1, mean over the K classes.
    """
    if kind == "softmax":
        loss = -(y / y.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1)
    else:
        loss = F.multilabel_soft_margin_loss(logits, y, reduction="none")
    return loss.mean() if reduction == "mean" else loss


def set_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image 1.0 when its top-n scores (n = number of its categories) are its categories."""
    n = y.sum(1).long()
    order = logits.argsort(dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(logits.shape[1]).expand_as(order))
    pred = (rank < n[:, None]).float()
    return (pred == y).all(1).float()


def top1_hit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image 1.0 when its highest-scoring category is one of its categories (ImageNet top-1)."""
    return y.gather(1, logits.argmax(1, keepdim=True))[:, 0]


def lr_at(step: int, args) -> float:
    """Linear warm-up over ``warmup_steps``, then poly (power 0.9) or cosine decay to 0."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    t = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    if args.schedule == "cosine":
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))
    return args.lr * (1 - t) ** 0.9


def build_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=args.lr)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, batch: int,
             loss_kind: str) -> dict:
    """Held-out set accuracy and loss, in eval mode (BatchNorm running statistics, no dropout)."""
    was = model.training
    model.eval()
    acc, hit, loss = [], [], []
    for i in range(0, len(images), batch):
        out = model(images[i:i + batch])
        acc.append(set_accuracy(out, targets[i:i + batch]))
        hit.append(top1_hit(out, targets[i:i + batch]))
        loss.append(classification_loss(out, targets[i:i + batch], loss_kind, "none"))
    model.train(was)
    return {"acc": float(torch.cat(acc).mean()), "top1": float(torch.cat(hit).mean()),
            "loss": float(torch.cat(loss).mean())}


def save_state(path: Path, model, optimizer, step: int) -> None:
    write_weights(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "step": int(step)})


def load_state(path: Path, model, optimizer) -> int:
    if not Path(path).is_file():
        raise UserError(f"{path}: --resume state file not found")
    state = load_verified(path)  # a file that is no checkpoint at all: one line saying what it is
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])
    except Exception as e:  # noqa: BLE001 - any other content gets the same message
        raise UserError(f"{path}: not a pretrain_trunk state file ({e})") from None


def write_weights(path: Path, state: dict) -> None:
    """The checkpoint's bytes through memory, written atomically (``lib.checkpoint``): saving to
    a random temporary name would put that name into the zip and change the bytes."""
    write_bytes_atomic(path, checkpoint_bytes(state))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="pretrain_trunk", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="trunk weights to write (.pth)")
    ap.add_argument("--backbone_width", "--width", dest="width", type=float, default=0.125,
                    help="ResNet-38 width multiplier")
    ap.add_argument("--size", type=int, default=96, help="image side in px (the demo uses 96)")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--max_steps", type=int, default=2500)
    ap.add_argument("--stop_after", type=int, default=None,
                    help="stop after this many steps (state saved; continue with --resume)")
    ap.add_argument("--loss", choices=("softmax", "sigmoid"), default="softmax",
                    help="multi-label softmax or per-class sigmoid (see classification_loss)")
    ap.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight_decay", type=float, default=0.01)
    ap.add_argument("--schedule", choices=("cosine", "poly"), default="cosine")
    ap.add_argument("--warmup_steps", type=int, default=100)
    ap.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=True,
                    help="the trunk's dropout in b6/b7 (the ImageNet model's)")
    ap.add_argument("--shape_distractors", type=float, default=0.5,
                    help="probability that a distractor takes one of the categories' shapes, painted "
                         "flat or mottled (0 was tried and made a worse trunk for the demo: "
                         "docs/PRETRAINING.md)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val_images", type=int, default=256, help="held-out set size (VAL_TAG stream)")
    ap.add_argument("--val_every", type=int, default=250)
    ap.add_argument("--save_every", type=int, default=250, help="steps between state files")
    ap.add_argument("--resume", default=None, help="state file to continue from")
    ap.add_argument("--fp16", action="store_true", help="store the trunk in float16")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--num_workers", type=int, default=0, help="image-rendering processes")
    ap.add_argument("--tblog_dir", default=None, help="TensorBoard dir (default <out>_tb)")
    add_bool(ap, "progress", True, "the progress bar", old="--no_progress")
    ap.add_argument("--overwrite", action="store_true", help="retrain although --out exists")
    args = ap.parse_args(argv)
    for name in ("batch_size", "max_steps", "val_every", "save_every", "size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.size < msv.MIN_SIZE:
        raise UserError(f"--size must be >= {msv.MIN_SIZE} px, got {args.size}")
    if not args.width > 0 or not args.lr > 0:
        raise UserError("--width and --lr must be > 0")
    if args.warmup_steps < 0 or args.warmup_steps >= args.max_steps:
        raise UserError(f"--warmup_steps must be in [0, --max_steps), got {args.warmup_steps}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    sidecar, state_path = out.with_suffix(".json"), Path(f"{out}.state.pth")
    if out.exists() and not args.overwrite and not args.resume:
        print(f"pretrain_trunk: {out} exists; skipping (pass --overwrite to retrain)")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    dist.seed_everything(args.seed)
    model = TrunkClassifier(args.width, len(CATEGORIES), args.dropout)
    optimizer = build_optimizer(model, args)
    start = load_state(Path(args.resume), model, optimizer) if args.resume else 0
    end = args.max_steps if args.stop_after is None else min(args.max_steps, args.stop_after)

    val = [PretrainImages(VAL_TAG, args.seed, args.size, args.shape_distractors)[i] for i in range(args.val_images)]
    val_x, val_y = torch.stack([v[0] for v in val]), torch.stack([v[1] for v in val])
    data = PretrainImages(TRAIN_TAG, args.seed, args.size, args.shape_distractors)
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.batch_size, num_workers=args.num_workers,
        sampler=range(start * args.batch_size, end * args.batch_size))

    from lib.training import TrainLogger

    logger = TrainLogger(None if args.tblog_dir == "none" else args.tblog_dir or f"{out}_tb",
                         end, start, args.batch_size, "pretrain_trunk")
    logger.bar.disable = logger.bar.disable or not args.progress
    model.train()
    recent: list[float] = []
    t0, step = time.time(), start
    for step, (x, y) in enumerate(loader, start):
        lr = lr_at(step, args)
        for g in optimizer.param_groups:
            g["lr"] = lr
        torch.manual_seed(args.seed * 1_000_003 + step)     # dropout masks of this step
        logits = model(x)
        loss = classification_loss(logits, y, args.loss)
        if not torch.isfinite(loss):
            raise RunError(f"non-finite loss {loss.item()} at step {step} (lower --lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        acc = float(set_accuracy(logits.detach(), y).mean())
        recent = (recent + [acc])[-100:]
        logger.log(step, {"loss": loss.item(), "acc": acc, "lr": lr,
                          "top1": float(top1_hit(logits.detach(), y).mean())})
        done = step + 1
        if done % args.val_every == 0 or done == args.max_steps:
            res = evaluate(model, val_x, val_y, args.batch_size, args.loss)
            if logger.writer is not None:
                logger.writer.add_scalar("val/acc", res["acc"], done)
                logger.writer.add_scalar("val/loss", res["loss"], done)
                logger.writer.add_scalar("val/top1", res["top1"], done)
            logger.bar.write(f"step {done}: val acc {res['acc']:.3f} top1 {res['top1']:.3f} "
                             f"loss {res['loss']:.4f}, train acc (last {len(recent)}) {np.mean(recent):.3f}, "
                             f"{logger.images_per_second(step):.1f} img/s")
        if done % args.save_every == 0 or done == end:
            save_state(state_path, model, optimizer, done)
    logger.close()
    if end < args.max_steps:
        print(f"pretrain_trunk: stopped after step {end}; continue with --resume {state_path}")
        return 0

    res = evaluate(model, val_x, val_y, args.batch_size, args.loss)
    write_weights(out, trunk_state_dict(model, args.fp16))
    info = {
        "command": "python -m tools.experiments.pretrain_trunk " + " ".join(sys.argv[1:] if argv is None else argv),
        "weights": out.name, "sha256": sha256(out), "bytes": out.stat().st_size,
        "dtype": "float16" if args.fp16 else "float32", "width": args.width, "size": args.size,
        "steps": args.max_steps, "batch_size": args.batch_size, "images_seen": args.max_steps * args.batch_size,
        "head": {"layout": "trunk -> bn7 -> ReLU -> global average pooling -> linear1000 (not saved; "
                           f"in {state_path.name})", "in_features": model.linear1000.in_features,
                 "out_features": model.linear1000.out_features},
        "labels": f"multi-label, 1-3 objects of distinct categories ({args.loss} loss)",
        "args": {k: v for k, v in vars(args).items() if k not in ("resume", "progress")},
        "categories": list(CATEGORY_NAMES),
        "train_acc_last_100_steps": float(np.mean(recent)) if recent else None,
        "val_acc": res["acc"], "val_top1": res["top1"], "val_loss": res["loss"], "val_images": args.val_images,
        "seconds_this_session": round(time.time() - t0, 1), "threads": torch.get_num_threads(),
        "streams": {"train": f"default_rng([{TRAIN_TAG:#x}, {args.seed}, i])",
                    "val": f"default_rng([{VAL_TAG:#x}, {args.seed}, i])"},
    }
    with atomic_path(sidecar) as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2) + "\n")
    print(f"pretrain_trunk: wrote {out} ({info['bytes'] / 1e6:.1f} MB, sha256 {info['sha256'][:16]}...): "
          f"val acc {res['acc']:.3f}, train acc {info['train_acc_last_100_steps']}")
    return 0


if __name__ == "__main__":
    run_main(main, "pretrain_trunk")
