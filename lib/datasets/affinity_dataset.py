"""AffinityNet training data: image crops with pixel labels from the la/ha CRF maps (docs/METHOD.md section 5).

Per sample, following PSA's ``VOC12AffDataset`` / ``train_aff.py`` transform lists:

1. the RGB image (H, W, 3) and the two CRF artifacts of stage 1 (``lib.io.load_crf``: keys
   [0, k+1, ...], probs (K+1, H, W)) for alpha 2 ("la") and alpha 4 ("ha");
2. optional joint ``RandomResizeLong`` (not in the original; image bicubic, score maps bilinear);
3. colour jitter of the image only (brightness/contrast/saturation 0.3, hue 0.1);
4. joint random crop ``crop`` x ``crop`` of the *un-normalised* image and the maps; where the
   image is smaller the container is zero: black image pixels (as PSA, which normalises after
   the crop) and all-zero scores;
5. joint horizontal flip (p = 0.5), then normalisation of the image;
6. 8x8 average pooling of the maps -> (K+1, crop/8, crop/8) each, and
   ``lib.affinity.affinity_label_map``: label = class id of argmax(la), void (255) where that is
   background, background (0) where argmax(ha) is background, void where every la/ha score
   is < 1e-5 (the zero padding).

Yields ``{"id": str, "image": (3, crop, crop) float32, "label": (crop/8, crop/8) int64}``; the
pair labels (``lib.affinity.extract_pair_labels``) are computed batched in the training loop.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lib.affinity import affinity_label_map
from lib.errors import UserError
from lib.io import load_crf, load_image

from .datasets import EpochSeeded
from .layout import Layout, check_files_exist
from .transforms import (ColorJitter, Normalize, RandomCrop, RandomHorizontalFlip,
                         RandomResizeLong, to_chw_tensor)

__all__ = ["AffinityDataset", "pool_maps"]

POOL = 8  # feature stride of ResNet-38 at conv4..conv6


def pool_maps(maps: np.ndarray, k: int = POOL) -> np.ndarray:
    """k x k average pooling of an (H, W, C) stack with H, W multiples of k -> (C, H/k, W/k)."""
    h, w, c = maps.shape
    if h % k or w % k:
        raise ValueError(f"pool_maps: {h}x{w} is not a multiple of {k}")
    return maps.reshape(h // k, k, w // k, k, c).mean(axis=(1, 3)).transpose(2, 0, 1)


class AffinityDataset(EpochSeeded, Dataset):
    """AffinityNet training crops and pixel labels (module docstring).

    Args:
        layout: dataset layout (images are ``layout.image_path(id)``).
        ids: image ids (``None``: ``layout.ids()``).
        la_crf_dir, ha_crf_dir: folders of ``<id>.npz`` CRF artifacts, alpha 2 and alpha 4.
        crop: square crop size, a multiple of 8.
        resize_long: (lo, hi) joint RandomResizeLong before the crop, or ``None`` (the original).
        radius: pair radius (kept for the caller's ``extract_pair_labels``).
        color_jitter, flip: the original's augmentations (on by default).
        seed: as the other datasets of ``lib.datasets.datasets``: ``None`` seeds each sample's
            generator from torch's RNG; an int (the training script's ``--seed``) gives
            ``default_rng([seed, epoch, index])`` (see :meth:`set_epoch`).
    """

    def __init__(self, layout: Layout, ids, la_crf_dir, ha_crf_dir, crop: int = 448,
                 resize_long: tuple[int, int] | None = None, radius: int = 5,
                 color_jitter: bool = True, flip: bool = True, seed: int | None = None):
        if crop % POOL:
            raise ValueError(f"AffinityDataset: crop {crop} must be a multiple of {POOL}")
        self.layout = layout
        self.ids = list(layout.ids() if ids is None else ids)
        self.la_dir, self.ha_dir = Path(la_crf_dir), Path(ha_crf_dir)
        for name, d in (("la_crf_dir", self.la_dir), ("ha_crf_dir", self.ha_dir)):
            if not d.is_dir():
                raise FileNotFoundError(f"AffinityDataset: {name} {d} is not a directory")
        self.crop, self.radius = int(crop), int(radius)
        self._init_seed(seed)
        self.resize = RandomResizeLong(*resize_long) if resize_long else None
        self.jitter = ColorJitter(0.3, 0.3, 0.3, 0.1) if color_jitter else None
        self.random_crop = RandomCrop(self.crop)
        self.flip = RandomHorizontalFlip(0.5) if flip else None
        self.normalize = Normalize()

    def __len__(self) -> int:
        return len(self.ids)

    def check_files(self) -> None:
        """Fail early, naming the first missing image or CRF file and how many are missing."""
        check_files_exist([self.layout.image_path(i) for i in self.ids], "image")
        for d in (self.la_dir, self.ha_dir):
            check_files_exist([d / f"{i}.npz" for i in self.ids], "CRF file")

    def load(self, image_id: str):
        """Raw sample: image (H, W, 3) uint8, la/ha (keys, (K+1, H, W) probs)."""
        path = self.layout.image_path(image_id)
        image = load_image(path)
        out = [image]
        for d in (self.la_dir, self.ha_dir):
            p = d / f"{image_id}.npz"
            if not p.is_file():
                raise FileNotFoundError(f"AffinityDataset: CRF file {p} does not exist")
            keys, probs = load_crf(p)
            if probs.shape[1:] != image.shape[:2] or probs.shape[0] == 0:
                raise UserError(f"{p}: CRF maps {probs.shape} do not match image {path} "
                                 f"of size {image.shape[:2]}")
            out.append((keys, probs))
        return out

    def __getitem__(self, idx: int) -> dict:
        image_id = self.ids[idx]
        image, (la_keys, la), (ha_keys, ha) = self.load(image_id)
        rng = self._rng(idx)
        k1 = la.shape[0]
        # One (H, W, K1+K2) float stack so every geometric transform moves both maps together.
        maps = np.concatenate([la, ha], 0).transpose(1, 2, 0)
        if self.resize is not None:
            image, _, maps = self.resize(image, None, maps, rng=rng)
        if self.jitter is not None:
            image = self.jitter(image, rng=rng)
        # Crop before normalising (PSA): the image padding is black, the score padding 0.
        image, _, maps = self.random_crop(image.astype(np.float32), None, maps, rng=rng)
        if self.flip is not None:
            image, _, maps = self.flip(image, None, maps, rng=rng)
        image = self.normalize(image)
        pooled = torch.from_numpy(np.ascontiguousarray(pool_maps(maps), dtype=np.float32))
        label = affinity_label_map(pooled[:k1], la_keys, pooled[k1:], ha_keys)
        return {"id": image_id, "image": to_chw_tensor(image), "label": label.long()}
