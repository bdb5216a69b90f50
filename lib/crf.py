"""Fully connected CRF post-processing (docs/METHOD.md section 4.2, and the stage-3 test CRF of section 6.5).

Backed by pydensecrf (module ``pydensecrf.densecrf``; pip package ``pydensecrf2``, since the
original 1.0rc3 does not build with Cython 3). The model is the one of the original code:

    E(x) = sum_i U_i(x_i) + sum_{i<j} mu(x_i, x_j) k(f_i, f_j),
    U_i(l) = -log(clip(P_l(i), 1e-5, 1))            (pydensecrf's ``unary_from_softmax``)
    k = 3 * exp(-|p_i - p_j|^2 / (2 * 3^2))                                   (Gaussian)
      + 10 * exp(-|p_i - p_j|^2 / (2 * 80^2) - |I_i - I_j|^2 / (2 * 13^2))     (bilateral)

with Potts compatibility; mean-field inference for ``n_iter`` (10) iterations returns the
approximate marginals Q (K, H, W), each pixel's column summing to 1.
"""
from __future__ import annotations

import numpy as np

from lib.io import channel_class_ids

__all__ = ["dense_crf", "dense_crf_many", "crf_from_cam", "crf_from_cam_alphas",
           "cam_bg_fg_scores"]

# unary_from_softmax's default clip: keeps -log finite where a score is exactly 0.
_CLIP = 1e-5


def dense_crf(image_uint8: np.ndarray, probs: np.ndarray, n_iter: int = 10,
              gauss_sxy: float = 3, gauss_compat: float = 3,
              bilateral_sxy: float = 80, bilateral_srgb: float = 13,
              bilateral_compat: float = 10) -> np.ndarray:
    """Dense-CRF marginals of per-pixel class scores.

    Args:
        image_uint8: (H, W, 3) uint8 RGB image (the bilateral term's colour feature).
        probs: (K, H, W) non-negative scores (need not sum to 1: the unary is
            -log(clip(probs, 1e-5, 1)), exactly as ``unary_from_softmax`` computes it).
        n_iter: mean-field iterations (``n_iter=0`` returns the normalised clipped scores).
    Returns:
        (K, H, W) float32 marginals, summing to 1 over K at every pixel.
    """
    return dense_crf_many(image_uint8, [probs], n_iter, gauss_sxy, gauss_compat, bilateral_sxy,
                          bilateral_srgb, bilateral_compat)[0]


def dense_crf_many(image_uint8: np.ndarray, probs_list, n_iter: int = 10,
                   gauss_sxy: float = 3, gauss_compat: float = 3,
                   bilateral_sxy: float = 80, bilateral_srgb: float = 13,
                   bilateral_compat: float = 10) -> list[np.ndarray]:
    """:func:`dense_crf` of several (K, H, W) score maps of one image with the same K.

    The pairwise terms depend only on the image, so one CRF object (its permutohedral lattices)
    serves every unary: each inference restarts from its own unary, and the results are
    bit-identical to separate :func:`dense_crf` calls (the saving: docs/PERFORMANCE.md).
    """
    import pydensecrf.densecrf as dcrf  # deferred: only CRF users need the extension

    image_uint8 = np.asarray(image_uint8)
    if image_uint8.ndim != 3 or image_uint8.shape[2] != 3 or image_uint8.dtype != np.uint8:
        raise ValueError(f"dense_crf: image must be (H, W, 3) uint8, got {image_uint8.shape} "
                         f"{image_uint8.dtype}")
    probs_list = [np.asarray(p) for p in probs_list]
    for probs in probs_list:
        if probs.ndim != 3 or probs.shape[1:] != image_uint8.shape[:2]:
            raise ValueError(f"dense_crf: probs must be (K, H, W) with H, W = "
                             f"{image_uint8.shape[:2]}, got {probs.shape}")
        if probs.shape[0] < 1:
            raise ValueError("dense_crf: probs has no channel")
        if probs.shape[0] != probs_list[0].shape[0]:
            raise ValueError(f"dense_crf_many: every score map needs the same K, got "
                             f"{[p.shape[0] for p in probs_list]}")
    if not probs_list:
        return []
    k, h, w = probs_list[0].shape
    # pydensecrf reads raw buffers: both arrays must be C-contiguous with the exact dtypes, and
    # its typed memoryviews refuse read-only buffers (e.g. np.asarray of a PIL image).
    rgb = np.require(image_uint8, dtype=np.uint8, requirements=["C", "W"])
    crf = None
    out = []
    for probs in probs_list:
        unary = -np.log(np.clip(probs.astype(np.float32), _CLIP, 1.0)).reshape(k, -1)
        unary = np.ascontiguousarray(unary, dtype=np.float32)
        if crf is None:
            crf = dcrf.DenseCRF2D(w, h, k)
            crf.setUnaryEnergy(unary)
            crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
            crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=rgb,
                                     compat=bilateral_compat)
        else:
            crf.setUnaryEnergy(unary)
        q = crf.inference(int(n_iter))
        out.append(np.asarray(q, dtype=np.float32).reshape(k, h, w))
    return out


def cam_bg_fg_scores(cams: np.ndarray, alpha: float) -> np.ndarray:
    """Stack the background score on top of the CAMs: (K, H, W) -> (K+1, H, W) float32.

    bg = (1 - max_k M_k)^alpha (docs/METHOD.md section 4.2); channel 0 is bg, channel i+1 is
    ``cams[i]``. With K = 0 the result is the single background channel, all ones. The one
    definition of the background score, for the CRF of stage 1 and the random walk of stage 2.
    """
    cams = np.asarray(cams, dtype=np.float32)
    if cams.shape[0] == 0:
        return np.ones((1,) + cams.shape[1:], np.float32)
    bg = np.power(1.0 - cams.max(0), alpha, dtype=np.float32)
    return np.concatenate([bg[None], cams], 0)


def _cam_inputs(image_uint8, keys, cams):
    """Checked (image, keys (K,) int64, cams (K, H, W) float32, crf_keys (K+1,))."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    cams = np.asarray(cams, dtype=np.float32)
    image_uint8 = np.asarray(image_uint8)
    if cams.ndim != 3 or cams.shape[0] != keys.shape[0]:
        raise ValueError(f"crf_from_cam: cams shape {cams.shape} does not match {keys.shape[0]} keys")
    if image_uint8.ndim != 3 or cams.shape[1:] != image_uint8.shape[:2]:
        raise ValueError(f"crf_from_cam: cams spatial size {cams.shape[1:]} differs from image "
                         f"{image_uint8.shape[:2]}")
    return image_uint8, keys, cams, channel_class_ids(keys)


def crf_from_cam(image_uint8: np.ndarray, keys, cams: np.ndarray, alpha: float,
                 **crf_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """CRF probability maps of one image from its CAMs (docs/METHOD.md section 4.2).

    Args:
        image_uint8: (H, W, 3) uint8 image.
        keys: (K,) foreground class indices (0..C-1) of the present classes.
        cams: (K, H, W) CAMs in [0, 1] (K = 0 for an image without foreground label).
        alpha: background power (2 = "la", 4 = "ha").
        crf_kwargs: forwarded to :func:`dense_crf` (defaults = the original settings).
    Returns:
        ``(crf_keys, probs)``: crf_keys (K+1,) int64 = [0, k_1+1, ..., k_K+1];
        probs (K+1, H, W) float32 = dense_crf(image, [(1 - max_k M_k)^alpha, M_1..M_K]).
        With K = 0 the result is the single background channel, all ones (a one-label CRF).
    """
    return crf_from_cam_alphas(image_uint8, keys, cams, [alpha], **crf_kwargs)[0]


def crf_from_cam_alphas(image_uint8: np.ndarray, keys, cams: np.ndarray, alphas,
                        **crf_kwargs) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[crf_from_cam(image, keys, cams, a) for a in alphas]`` with one CRF object shared by
    the alphas (:func:`dense_crf_many`: the same results, one lattice construction)."""
    image_uint8, keys, cams, crf_keys = _cam_inputs(image_uint8, keys, cams)
    if keys.shape[0] == 0:
        ones = np.ones((1,) + image_uint8.shape[:2], np.float32)
        return [(crf_keys, ones.copy()) for _ in alphas]
    probs = dense_crf_many(image_uint8, [cam_bg_fg_scores(cams, a) for a in alphas], **crf_kwargs)
    return [(crf_keys, p) for p in probs]
