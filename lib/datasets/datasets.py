"""torch Datasets of the three stages (docs/METHOD.md sections 1, 4, 6).

Every dataset takes a :class:`lib.datasets.layout.Layout` (paths, ids, class names) and, where
image-level labels are needed, the dict of :func:`lib.io.load_cls_labels` (id -> (C,) float32).

Randomness: each ``__getitem__`` draws its own ``np.random.Generator``:

* ``seed=None`` (training default): seeded from torch's global RNG. A ``DataLoader`` seeds every
  worker differently at every epoch, and ``lib.dist.seed_everything`` makes the whole run
  reproducible, so crops differ across workers/epochs without extra plumbing.
* ``seed=int`` (what the training scripts pass: ``--seed``):
  ``np.random.default_rng([seed, epoch, index])`` -- the same sample for the same
  (seed, epoch, index) whatever the worker layout, so a resumed run repeats the interrupted
  one; :meth:`set_epoch` varies it per epoch. The epoch lives in shared memory, so setting it
  in the main process reaches the copies in persistent DataLoader workers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lib.errors import UserError
from lib.io import load_image, load_label_png

from .layout import Layout, check_files_exist
from .transforms import (ColorJitter, HSVJitter, Normalize, RandomCrop, RandomHorizontalFlip,
                         RandomResizeLong, RandomScale, to_chw_tensor)


def load_label(path) -> np.ndarray:
    """Label PNG as (H, W) uint8 class ids; FileNotFoundError names the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map {path} does not exist")
    return load_label_png(path)


def _check_labels(ids: list[str], cls_labels: dict, num_classes: int, where: str) -> None:
    missing = [i for i in ids if i not in cls_labels]
    if missing:
        raise UserError(f"{where}: {len(missing)} of {len(ids)} ids have no image-level label "
                         f"(first: {missing[0]!r}); regenerate the cls_labels file")
    bad = next((i for i in ids if np.shape(cls_labels[i]) != (num_classes,)), None)
    if bad is not None:
        raise UserError(f"{where}: label of {bad!r} has shape {np.shape(cls_labels[bad])}, "
                         f"expected ({num_classes},) for the layout's classes")


class EpochSeeded:
    """Per-sample generators of a dataset: ``seed`` and an ``epoch`` shared with its workers."""

    def _init_seed(self, seed: int | None) -> None:
        self.seed = seed
        # Shared memory: DataLoader workers hold copies of the dataset made when they started
        # (persistent workers keep them across epochs); they all see this one value.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Vary the augmentation of a seeded dataset per epoch."""
        self._epoch.fill_(int(epoch))

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))
        return np.random.default_rng([self.seed, self.epoch, index])


class _Base(EpochSeeded, Dataset):
    def __init__(self, layout: Layout, ids: Sequence[str] | None, seed: int | None):
        self.layout = layout
        self.ids = list(layout.ids() if ids is None else ids)
        self._init_seed(seed)
        check_files_exist([layout.image_path(i) for i in self.ids], "image")

    def __len__(self) -> int:
        return len(self.ids)


class ClassificationDataset(_Base):
    """Stage-1 training samples (docs/METHOD.md section 1).

    Pipeline: RandomResizeLong(*resize_long) -> horizontal flip (p 0.5) -> ColorJitter(0.3, 0.3,
    0.3, 0.1) -> Normalize -> RandomCrop(crop) (zero container when smaller).
    Item: {"id": str, "image": (3, crop, crop) float32, "label": (C,) float32 multi-hot}.
    ``resize_long=None`` skips the resize; ``color_jitter=False`` the jitter.
    """

    def __init__(self, layout: Layout, cls_labels: dict, crop: int = 448,
                 resize_long: tuple[int, int] | None = (448, 768), color_jitter: bool = True,
                 seed: int | None = None, ids: Sequence[str] | None = None):
        super().__init__(layout, ids, seed)
        _check_labels(self.ids, cls_labels, layout.num_classes, f"{type(self).__name__}({layout})")
        self.cls_labels = cls_labels
        self.resize = RandomResizeLong(*resize_long) if resize_long is not None else None
        self.flip = RandomHorizontalFlip(0.5)
        self.jitter = ColorJitter(0.3, 0.3, 0.3, 0.1) if color_jitter else None
        self.normalize = Normalize()
        self.crop = RandomCrop(crop)

    def __getitem__(self, index: int) -> dict:
        iid = self.ids[index]
        rng = self._rng(index)
        img = load_image(self.layout.image_path(iid))
        if self.resize is not None:
            img, _ = self.resize(img, rng=rng)
        img, _ = self.flip(img, rng=rng)
        if self.jitter is not None:
            img = self.jitter(img, rng=rng)
        img, _ = self.crop(self.normalize(img), rng=rng)
        return {"id": iid, "image": to_chw_tensor(img),
                "label": torch.as_tensor(np.asarray(self.cls_labels[iid], np.float32))}


class MultiScaleInferenceDataset(_Base):
    """Stage-1 CAM inference inputs (docs/METHOD.md section 4.1): every scale, with its horizontal flip.

    Item: {"id", "image_uint8": (H, W, 3) uint8, "images": [per scale s a float32 tensor
    (2, 3, round(H s), round(W s)) = (normalised image, its mirror), or (1, 3, ...) when
    ``flip=False``], "label": (C,) float32}. Rescaling is PIL bicubic on the uint8 image.
    Use ``DataLoader(..., batch_size=1, collate_fn=collate_single)``.
    """

    def __init__(self, layout: Layout, cls_labels: dict, scales: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
                 flip: bool = True, ids: Sequence[str] | None = None):
        super().__init__(layout, ids, seed=0)
        if not scales or min(scales) <= 0:
            raise ValueError(f"scales must be positive, got {scales}")
        _check_labels(self.ids, cls_labels, layout.num_classes, f"{type(self).__name__}({layout})")
        self.cls_labels = cls_labels
        self.scales = tuple(float(s) for s in scales)
        self.flip = flip
        self.normalize = Normalize()

    def __getitem__(self, index: int) -> dict:
        iid = self.ids[index]
        img = load_image(self.layout.image_path(iid))
        h, w = img.shape[:2]
        images = []
        for s in self.scales:
            th, tw = max(1, round(h * s)), max(1, round(w * s))
            im = img if (th, tw) == (h, w) else np.asarray(
                Image.fromarray(img).resize((tw, th), Image.BICUBIC))
            x = to_chw_tensor(self.normalize(im))
            images.append(torch.stack([x, x.flip(-1)]) if self.flip else x[None])
        return {"id": iid, "image_uint8": img, "images": images,
                "label": torch.as_tensor(np.asarray(self.cls_labels[iid], np.float32))}


class InferenceDataset(_Base):
    """Whole images for stage 2 and 3 inference: {"id", "image_uint8": (H, W, 3) uint8,
    "image": (3, H, W) float32 normalised}. Every image must exist (checked up front)."""

    def __init__(self, layout: Layout, ids: Sequence[str] | None = None):
        super().__init__(layout, ids, seed=0)
        self.normalize = Normalize()

    def __getitem__(self, index: int) -> dict:
        iid = self.ids[index]
        img = load_image(self.layout.image_path(iid))
        return {"id": iid, "image_uint8": img, "image": to_chw_tensor(self.normalize(img))}


def collate_single(batch: list[dict]) -> dict:
    """Collate for batch size 1: the single item, unbatched."""
    if len(batch) != 1:
        raise ValueError(f"collate_single needs batch_size=1, got a batch of {len(batch)}")
    return batch[0]


class SegmentationDataset(_Base):
    """Stage-3 samples (docs/METHOD.md section 6.2) with ground-truth or pseudo labels.

    Labels: ``label_dir=None`` -> ground truth (``layout.gt_path``), else ``<label_dir>/<id>.png``.
    Training pipeline (``train=True``): HSVJitter(*hsv) -> horizontal flip -> RandomScale(*scale) ->
    Normalize -> RandomCrop(crop) (image padded with 0, label with 255).
    ``train=False``: the full normalised image and label, no augmentation.
    Item: {"id", "image": (3, S, S) float32, "label": (S, S) int64 with 255 = ignore}.
    ``flip``: probability of the horizontal flip (0.5, the original's config FLIP; 0 or False
    switches it off, True means 0.5). ``scale=None`` / ``hsv=None`` switch those steps off.
    """

    def __init__(self, layout: Layout, label_dir: str | Path | None = None, crop: int = 448,
                 scale: tuple[float, float] | None = (0.5, 1.5), flip: bool | float = 0.5,
                 hsv: tuple[int, int, int] | None = (10, 10, 10), train: bool = True,
                 seed: int | None = None, ids: Sequence[str] | None = None):
        super().__init__(layout, ids, seed)
        self.label_dir = Path(label_dir) if label_dir is not None else None
        if self.label_dir is not None and not self.label_dir.is_dir():
            raise FileNotFoundError(f"label directory {self.label_dir} does not exist")
        if train:  # evaluation-style use may look only at images; training needs every label
            check_files_exist([self.label_path(i) for i in self.ids],
                              "label map" if self.label_dir is None else "pseudo label")
        self.train = train
        self.hsv = HSVJitter(*hsv) if (train and hsv is not None) else None
        flip_p = 0.5 if flip is True else float(flip)
        self.flip = RandomHorizontalFlip(flip_p) if (train and flip_p > 0) else None
        self.scale = RandomScale(*scale) if (train and scale is not None) else None
        self.crop = RandomCrop(crop, ignore_index=255) if train else None
        self.normalize = Normalize()

    def label_path(self, iid: str) -> Path:
        return self.layout.gt_path(iid) if self.label_dir is None else self.label_dir / f"{iid}.png"

    def __getitem__(self, index: int) -> dict:
        iid = self.ids[index]
        img = load_image(self.layout.image_path(iid))
        lab_path = self.label_path(iid)
        lab = load_label(lab_path)
        if lab.shape != img.shape[:2]:
            raise UserError(f"{lab_path}: label size {lab.shape} differs from image size {img.shape[:2]}")
        if self.train:
            rng = self._rng(index)
            if self.hsv is not None:
                img = self.hsv(img, rng=rng)
            if self.flip is not None:
                img, lab = self.flip(img, lab, rng=rng)
            if self.scale is not None:
                img, lab = self.scale(img, lab, rng=rng)
            img, lab = self.crop(self.normalize(img), lab, rng=rng)
        else:
            img = self.normalize(img)
        return {"id": iid, "image": to_chw_tensor(img),
                "label": torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))}
