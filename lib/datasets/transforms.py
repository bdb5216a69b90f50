"""Joint image / label transforms on numpy arrays (docs/METHOD.md sections 1 and 6).

Conventions
-----------
* ``image``: (H, W, 3) ``uint8`` or float array (RGB). ``label``: (H, W) integer class-id map
  (255 = void) or ``None``. ``extras``: further (H, W) or (H, W, K) float maps transformed jointly
  with the image geometry (e.g. CRF probability stacks of stage 2).
* Geometric transforms (:class:`RandomResizeLong`, :class:`RandomScale`,
  :class:`RandomHorizontalFlip`, :class:`RandomCrop`) are called as
  ``t(image, label=None, *extras, rng=None)`` and return ``(image, label, *extras)``
  (so ``img, lab = t(img, lab, rng=rng)``); a ``None`` label stays ``None``.
* Photometric transforms (:class:`ColorJitter`, :class:`HSVJitter`, :class:`Normalize`) are
  called as ``t(image, rng=None)`` and return the image.
* Randomness comes only from the ``rng`` argument (``np.random.Generator``); without it a
  transform uses its own generator seeded at construction (``seed=0``), so results are
  reproducible. Datasets always pass a per-sample generator.
* Label maps are resized with nearest neighbour at pixel centres,
  ``src = min(floor((dst + 0.5) * in / out), in - 1)`` per axis, which works for any integer dtype
  (except :class:`RandomScale`, which follows the original's cv2 call by default).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _gen(rng: np.random.Generator | None, own: np.random.Generator) -> np.random.Generator:
    return own if rng is None else rng


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    return image


def _check_maps(image: np.ndarray, label, extras) -> None:
    h, w = image.shape[:2]
    if label is not None and np.asarray(label).shape != (h, w):
        raise ValueError(f"label shape {np.asarray(label).shape} does not match image {(h, w)}")
    for e in extras:
        if np.asarray(e).shape[:2] != (h, w):
            raise ValueError(f"extra map shape {np.asarray(e).shape} does not match image {(h, w)}")


def nearest_resize(label: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W[, K]) map at pixel centres (any dtype)."""
    h, w = label.shape[:2]
    rows = np.minimum(((np.arange(out_h) + 0.5) * (h / out_h)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * (w / out_w)).astype(np.int64), w - 1)
    return label[rows[:, None], cols[None, :]]


def _resize_image(image: np.ndarray, out_h: int, out_w: int, use_pil: bool) -> np.ndarray:
    """Bicubic resize; PIL for uint8 when ``use_pil`` (the PSA stage-1 path), cv2 otherwise."""
    if image.dtype == np.uint8 and use_pil:
        return np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BICUBIC))
    src = image if image.dtype == np.uint8 else image.astype(np.float32, copy=False)
    return cv2.resize(src, (out_w, out_h), interpolation=cv2.INTER_CUBIC)


def _resize_extra(extra: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of a float (H, W) or (H, W, K) map (cv2 drops a K = 1 axis; it is restored)."""
    extra = np.ascontiguousarray(extra, np.float32)
    out = cv2.resize(extra, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return out.reshape((out_h, out_w) + extra.shape[2:])


def _resize_all(image, label, extras, out_h, out_w, use_pil):
    out = [_resize_image(image, out_h, out_w, use_pil),
           None if label is None else nearest_resize(np.asarray(label), out_h, out_w)]
    out += [_resize_extra(e, out_h, out_w) for e in extras]
    return tuple(out)


class RandomResizeLong:
    """Resize so the long side is a random integer L in [min_long, max_long] (inclusive), aspect kept.

    W > H: (W', H') = (L, round(H L / W)); otherwise (round(W L / H), L). Image bicubic
    (PIL for uint8, as PSA), label nearest, extras bilinear.
    """

    def __init__(self, min_long: int, max_long: int, seed: int | None = 0):
        if not 1 <= min_long <= max_long:
            raise ValueError(f"RandomResizeLong needs 1 <= min_long <= max_long, got {min_long}, {max_long}")
        self.min_long, self.max_long = int(min_long), int(max_long)
        self._rng = np.random.default_rng(seed)

    def __call__(self, image, label=None, *extras, rng=None):
        image = _check_image(image)
        _check_maps(image, label, extras)
        target = int(_gen(rng, self._rng).integers(self.min_long, self.max_long + 1))
        h, w = image.shape[:2]
        if w > h:
            out_w, out_h = target, max(1, round(h * target / w))
        else:
            out_w, out_h = max(1, round(w * target / h)), target
        return _resize_all(image, label, extras, out_h, out_w, use_pil=True)


def _cv2_scale(arr: np.ndarray, s: float, interpolation: int) -> np.ndarray:
    """``cv2.resize(arr, None, fx=s, fy=s)``: output size round(W s) x round(H s), source
    coordinates from the factor s itself (not from the rounded size); keeps a K = 1 axis."""
    arr = np.asarray(arr)
    src = arr
    if arr.dtype in (np.int64, np.uint32, np.uint64, np.int8, np.bool_):  # depths cv2 lacks
        src = arr.astype(np.int32)
    out = cv2.resize(np.ascontiguousarray(src), None, fx=s, fy=s, interpolation=interpolation)
    out = out.reshape(out.shape[:2] + arr.shape[2:])
    return out.astype(arr.dtype, copy=False)


class RandomScale:
    """DeepLab random scaling by s ~ U(lo, hi), image bicubic, label nearest, extras bilinear.

    Default (the original, SEAM's segmentation codebase): ``cv2.resize(.., fx=s, fy=s)``; the
    output is round(H s) x round(W s) and cv2 maps output pixel d to source d / s: bicubic at
    (d + 0.5) / s - 0.5, nearest at floor(d / s) (clamped to the last row/column).
    ``pixel_centres=True`` (ours, off by default) resizes to round(H s) x round(W s) with the
    scale that size implies and takes labels at pixel centres, src = floor((d + 0.5) in / out):
    cv2's nearest label map sits up to half a source pixel off the bicubic image when
    upscaling, the centred one does not (docs/DISTRIBUTED.md, "Fidelity switches").
    """

    def __init__(self, lo: float = 0.5, hi: float = 1.5, seed: int | None = 0,
                 pixel_centres: bool = False):
        if not 0 < lo <= hi:
            raise ValueError(f"RandomScale needs 0 < lo <= hi, got {lo}, {hi}")
        self.lo, self.hi = float(lo), float(hi)
        self.pixel_centres = bool(pixel_centres)
        self._rng = np.random.default_rng(seed)

    def __call__(self, image, label=None, *extras, rng=None):
        image = _check_image(image)
        _check_maps(image, label, extras)
        s = float(_gen(rng, self._rng).uniform(self.lo, self.hi))
        if self.pixel_centres:
            h, w = image.shape[:2]
            out_h, out_w = max(1, round(h * s)), max(1, round(w * s))
            return _resize_all(image, label, extras, out_h, out_w, use_pil=False)
        img = image if image.dtype == np.uint8 else image.astype(np.float32, copy=False)
        out = [_cv2_scale(img, s, cv2.INTER_CUBIC),
               None if label is None else _cv2_scale(label, s, cv2.INTER_NEAREST)]
        out += [_cv2_scale(np.asarray(e, np.float32), s, cv2.INTER_LINEAR) for e in extras]
        return tuple(out)


class RandomHorizontalFlip:
    """Mirror image, label and extras together with probability ``p``."""

    def __init__(self, p: float = 0.5, seed: int | None = 0):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = float(p)
        self._rng = np.random.default_rng(seed)

    def __call__(self, image, label=None, *extras, rng=None):
        image = _check_image(image)
        _check_maps(image, label, extras)
        if _gen(rng, self._rng).random() >= self.p:
            return (image, label, *extras)
        out = [np.ascontiguousarray(image[:, ::-1]),
               None if label is None else np.ascontiguousarray(np.asarray(label)[:, ::-1])]
        out += [np.ascontiguousarray(np.asarray(e)[:, ::-1]) for e in extras]
        return tuple(out)


class ColorJitter:
    """torchvision-style colour jitter on a uint8 RGB image (PIL operations, random order).

    Factors: brightness, contrast, saturation ~ U(max(0, 1 - x), 1 + x); hue ~ U(-h, h)
    (fraction of the hue circle). The four adjustments are applied in a random permutation, as
    torchvision's ``ColorJitter`` does; the randomness comes from ``rng``, not torch.
    """

    def __init__(self, brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.3,
                 hue: float = 0.1, seed: int | None = 0):
        for n, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if v < 0:
                raise ValueError(f"ColorJitter {n} must be >= 0, got {v}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"ColorJitter hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self._rng = np.random.default_rng(seed)

    def __call__(self, image, rng=None):
        import torchvision.transforms.functional as TF

        image = _check_image(image)
        if image.dtype != np.uint8:
            image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        g = _gen(rng, self._rng)
        order = g.permutation(4)
        b = g.uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
        c = g.uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
        s = g.uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
        h = g.uniform(-self.hue, self.hue)
        pil = Image.fromarray(image)
        for op in order:
            if op == 0 and self.brightness > 0:
                pil = TF.adjust_brightness(pil, b)
            elif op == 1 and self.contrast > 0:
                pil = TF.adjust_contrast(pil, c)
            elif op == 2 and self.saturation > 0:
                pil = TF.adjust_saturation(pil, s)
            elif op == 3 and self.hue > 0:
                pil = TF.adjust_hue(pil, h)
        return np.asarray(pil)


class HSVJitter:
    """Integer HSV shifts in OpenCV's uint8 HSV space (SEAM segmentation codebase ``RandomHSV``).

    dh ~ U{-h, ..., h}, ds ~ U{-s, ..., s}, dv ~ U{-v, ..., v}: as the original, which draws all
    three shifts with Python's ``random.randint`` (both bounds included); H' = (H + dh) mod 180,
    S' = clip(S + ds, 0, 255), V' = clip(V + dv, 0, 255). A range of 0 disables that channel.
    """

    def __init__(self, h: int = 10, s: int = 10, v: int = 10, seed: int | None = 0):
        if min(h, s, v) < 0:
            raise ValueError(f"HSVJitter ranges must be >= 0, got {(h, s, v)}")
        self.h, self.s, self.v = int(h), int(s), int(v)
        self._rng = np.random.default_rng(seed)

    def draw_shifts(self, g: np.random.Generator) -> tuple[int, int, int]:
        """(dh, ds, dv), each uniform on {-r, ..., r} (0 for a range of 0)."""
        return tuple(int(g.integers(-r, r + 1)) if r > 0 else 0 for r in (self.h, self.s, self.v))

    def __call__(self, image, rng=None):
        image = _check_image(image)
        if image.dtype != np.uint8:
            image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        dh, ds, dv = self.draw_shifts(_gen(rng, self._rng))
        hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV).astype(np.int32)
        hsv[..., 0] = (hsv[..., 0] + dh) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] + ds, 0, 255)
        hsv[..., 2] = np.clip(hsv[..., 2] + dv, 0, 255)
        return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


class Normalize:
    """x' = (x / 255 - mean) / std per RGB channel, returned as float32 (H, W, 3)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __call__(self, image, rng=None):
        image = _check_image(image)
        return ((image.astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)


def crop_params(h: int, w: int, crop_h: int, crop_w: int, rng: np.random.Generator):
    """Offsets of a PSA-style random crop, drawn independently per axis.

    Returns (cont_top, cont_left, img_top, img_left, ch, cw): the window
    ``image[img_top:img_top+ch, img_left:img_left+cw]`` is written to
    ``container[cont_top:cont_top+ch, cont_left:cont_left+cw]``. An axis longer than the crop gets a
    random window (container offset 0); a shorter one a random container offset (image offset 0).
    """
    ch, cw = min(crop_h, h), min(crop_w, w)
    if w > crop_w:
        cont_left, img_left = 0, int(rng.integers(0, w - crop_w + 1))
    else:
        cont_left, img_left = int(rng.integers(0, crop_w - w + 1)), 0
    if h > crop_h:
        cont_top, img_top = 0, int(rng.integers(0, h - crop_h + 1))
    else:
        cont_top, img_top = int(rng.integers(0, crop_h - h + 1)), 0
    return cont_top, cont_left, img_top, img_left, ch, cw


class RandomCrop:
    """Random ``size`` x ``size`` crop (docs/METHOD.md section 1): a random window of a larger image, or the
    image placed at a random offset in a zero container when smaller; per axis.

    The label container is filled with ``ignore_index`` (255), extra float maps with 0, the image
    with 0 (after normalisation, 0 is the ImageNet mean colour).
    """

    def __init__(self, size: int | tuple[int, int], ignore_index: int = 255, seed: int | None = 0):
        self.size = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"crop size must be a positive int or (h, w), got {size}")
        self.ignore_index = ignore_index
        self._rng = np.random.default_rng(seed)

    def __call__(self, image, label=None, *extras, rng=None):
        image = _check_image(image)
        _check_maps(image, label, extras)
        crop_h, crop_w = self.size
        h, w = image.shape[:2]
        ct, cl, it, il, ch, cw = crop_params(h, w, crop_h, crop_w, _gen(rng, self._rng))

        def place(arr, fill):
            arr = np.asarray(arr)
            cont = np.full((crop_h, crop_w) + arr.shape[2:], fill, dtype=arr.dtype)
            cont[ct:ct + ch, cl:cl + cw] = arr[it:it + ch, il:il + cw]
            return cont

        out = [place(image, 0), None if label is None else place(label, self.ignore_index)]
        out += [place(e, 0) for e in extras]
        return tuple(out)


def denormalize(x, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """Invert :class:`Normalize` for channel-first data: (..., 3, H, W) -> x * std + mean, clamped to [0, 1].

    Accepts a torch tensor (same dtype/device returned) or a numpy array.
    """
    if isinstance(x, np.ndarray):
        if x.ndim < 3 or x.shape[-3] != 3:
            raise ValueError(f"denormalize expects (..., 3, H, W), got shape {x.shape}")
        m = np.asarray(mean, np.float32).reshape(3, 1, 1)
        s = np.asarray(std, np.float32).reshape(3, 1, 1)
        return np.clip(x * s + m, 0.0, 1.0).astype(np.float32)
    import torch

    if not isinstance(x, torch.Tensor) or x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"denormalize expects a (..., 3, H, W) tensor, got {type(x).__name__} "
                         f"{tuple(getattr(x, 'shape', ()))}")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * s + m).clamp_(0.0, 1.0)


def to_chw_tensor(image: np.ndarray):
    """(H, W, C) array -> contiguous (C, H, W) float32 torch tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 0, 1)))
