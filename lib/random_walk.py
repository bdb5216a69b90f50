"""Random walk of CAMs over AffinityNet affinities (docs/METHOD.md section 5.5; PSA's infer_aff).

On the stride-8 map (h, w), n = h*w pixels:

    W_ij = a_ij^beta for every neighbour pair (i, j) of :func:`lib.affinity.neighbour_pairs`
           and its transpose (j, i), W_ii = 1, 0 elsewhere; a_ij = exp(-mean_c |f_i - f_j|)
    T    = W / colsum(W)                   (T_ij = W_ij / sum_k W_kj; each column sums to 1)
    rw   = v @ T^(2^logt)                  (v: (C+1, n) flattened CAMs; PSA: cam_vec @ trans_mat)

beta = 8, logt = 6 (T^64). Two equivalent evaluations:

* ``'dense'`` (the original): dense (n, n) T squared ``logt`` times, then one product;
  O(logt * n^3) time, O(n^2) memory (2961^2 floats = 35 MB at VOC size).
* ``'sparse'``: T kept sparse (CSR of T^T) and applied 2^logt times to the CAM vectors,
  v <- v @ T, i.e. 64 sparse-dense products of O(nnz * (C+1)); nnz = 2 * 34 + 1 per interior
  pixel for r = 5 (159,429 ~ 54 n on the 63x47 map, fewer pairs near the borders).

``'auto'`` picks 'sparse' on the CPU (much faster than 'dense' there, equal to ~1e-6) and
keeps the original 'dense' on CUDA (a few large GEMMs vs 64 small sequential sparse kernels);
the measurements are in docs/PERFORMANCE.md (``python -m tools.bench.bench_random_walk [--device
cuda]``).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from lib.affinity import neighbour_pairs, pair_affinity
from lib.crf import cam_bg_fg_scores
from lib.io import scores_to_label

__all__ = [
    "affinity_matrix",
    "affinity_matrix_from_pairs",
    "transition_matrix",
    "random_walk",
    "random_walk_scores",
    "random_walk_labels",
    "padded_size",
]

METHODS = ("auto", "dense", "sparse")


def _pair_entries(aff: torch.Tensor, h: int, w: int, radius: int, beta: float):
    """(rows, cols, vals) of W: the pairs, their transposes, then the diagonal."""
    ind_from, ind_to = neighbour_pairs(h, w, radius, aff.device)
    if aff.dim() != 1 or aff.numel() != ind_from.numel():
        raise ValueError(f"expected ({ind_from.numel()},) pair affinities for a {h}x{w} map, "
                         f"radius {radius}; got {tuple(aff.shape)}")
    n = h * w
    a = aff.pow(beta)
    diag = torch.arange(n, device=aff.device)
    rows = torch.cat([ind_from, ind_to, diag])
    cols = torch.cat([ind_to, ind_from, diag])
    vals = torch.cat([a, a, torch.ones(n, dtype=a.dtype, device=a.device)])
    return rows, cols, vals


def affinity_matrix_from_pairs(aff: torch.Tensor, h: int, w: int, radius: int = 5, beta: float = 8,
                               sparse: bool = True) -> torch.Tensor:
    """Symmetric affinity matrix W (n, n), n = h*w, from pair affinities.

    Args:
        aff: (P,) affinities over ``neighbour_pairs(h, w, radius)`` (e.g. an AffinityNet output).
    Returns:
        W with W_ft = W_tf = aff^beta on the pairs and ones on the diagonal; a coalesced sparse
        COO tensor when ``sparse`` else dense. (The pairs are a half disc, so the pair list, its
        transpose and the diagonal never share an entry: no duplicate is summed.)
    """
    rows, cols, vals = _pair_entries(aff, h, w, radius, beta)
    n = h * w
    if sparse:
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n),
                                       check_invariants=False).coalesce()
    dense = torch.zeros(n, n, dtype=vals.dtype, device=vals.device)
    dense[rows, cols] = vals
    return dense


def _transition_t_csr(aff: torch.Tensor, h: int, w: int, radius: int, beta: float) -> torch.Tensor:
    """T^T as a CSR tensor, built directly (one sort) instead of COO coalesce + transpose.

    T_ij = W_ij / colsum_j, so row j of T^T holds W_ij / colsum_j for the i adjacent to j.
    """
    rows, cols, vals = _pair_entries(aff, h, w, radius, beta)
    n = h * w
    colsum = torch.zeros(n, dtype=vals.dtype, device=vals.device).index_add_(0, cols, vals)
    order = torch.argsort(cols * n + rows)        # row-major order of T^T = (col, row) of W
    crow = torch.zeros(n + 1, dtype=torch.long, device=vals.device)
    crow[1:] = torch.cumsum(torch.bincount(cols, minlength=n), 0)
    with warnings.catch_warnings():
        # torch flags every CSR construction as "beta"; the CSR @ dense product used is stable.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, rows[order], (vals / colsum[cols])[order], (n, n),
                                       check_invariants=False)


def affinity_matrix(features: torch.Tensor, radius: int = 5, beta: float = 8,
                    sparse: bool = True) -> torch.Tensor:
    """W (h*w, h*w) from AffinityNet features (D, h, w): a = exp(-mean_c|f_i - f_j|), W = a^beta
    on the neighbour pairs (both directions), 1 on the diagonal. Sparse COO or dense."""
    if features.dim() != 3:
        raise ValueError(f"affinity_matrix: features must be (D, h, w), got {tuple(features.shape)}")
    _, h, w = features.shape
    return affinity_matrix_from_pairs(pair_affinity(features, radius), h, w, radius, beta, sparse)


def transition_matrix(W: torch.Tensor) -> torch.Tensor:
    """T = W / column sums (T_ij = W_ij / sum_k W_kj), dense or sparse COO in, same layout out."""
    if W.is_sparse:
        W = W.coalesce()
        idx, vals = W.indices(), W.values()
        colsum = torch.zeros(W.shape[1], dtype=vals.dtype, device=vals.device)
        colsum.index_add_(0, idx[1], vals)
        return torch.sparse_coo_tensor(idx, vals / colsum[idx[1]], W.shape,
                                       check_invariants=False).coalesce()
    return W / torch.sum(W, dim=0, keepdim=True)


def _resolve_method(method: str, device: torch.device) -> str:
    if method not in METHODS:
        raise ValueError(f"random_walk: method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        # The module docstring says why (measurements: docs/PERFORMANCE.md).
        return "dense" if device.type == "cuda" else "sparse"
    return method


def random_walk(cams: torch.Tensor, features: torch.Tensor, beta: float = 8, logt: int = 6,
                radius: int = 5, method: str = "auto") -> torch.Tensor:
    """Propagate CAMs with the affinity random walk: rw = v @ T^(2^logt).

    Args:
        cams: (C+1, h, w) scores at the feature resolution (channel 0 background).
        features: either AffinityNet features (D, h, w), or the pair affinities (P,) over
            ``neighbour_pairs(h, w, radius)`` already computed by the network.
        method: 'dense' (original: T squared ``logt`` times), 'sparse' (T applied 2^logt times
            to the CAM vectors), 'auto' (module docstring).
    Returns:
        (C+1, h, w) walked scores, same dtype/device as the affinities.
    """
    if cams.dim() != 3:
        raise ValueError(f"random_walk: cams must be (C+1, h, w), got {tuple(cams.shape)}")
    k, h, w = cams.shape
    if features.dim() == 3:
        if features.shape[1:] != (h, w):
            raise ValueError(f"random_walk: features {tuple(features.shape)} and cams {tuple(cams.shape)} "
                             "differ in spatial size")
        aff = pair_affinity(features, radius)
    elif features.dim() == 1:
        aff = features
    else:
        raise ValueError(f"random_walk: expected features (D,h,w) or pair affinities (P,), got "
                         f"{tuple(features.shape)}")
    method = _resolve_method(method, aff.device)
    # The walk is fp32 arithmetic even inside a caller's bf16 autocast region (--amp, the
    # benchmark's bf16 modes): autocast would run the T^(2^logt) products in bf16 (8-bit mantissa).
    with torch.autocast(aff.device.type, enabled=False):
        return _walk(cams, aff, k, h, w, beta, logt, radius, method)


def _walk(cams, aff, k, h, w, beta, logt, radius, method) -> torch.Tensor:
    """:func:`random_walk` after the argument checks: (C+1, h, w) walked scores."""
    v = cams.reshape(k, h * w).to(device=aff.device, dtype=aff.dtype)
    if method == "dense":
        T = transition_matrix(affinity_matrix_from_pairs(aff, h, w, radius, beta, sparse=False))
        # Repeated squaring amplifies rounding: never let a global TF32/bf16 matmul setting
        # (10-bit mantissa) leak in here; restore the caller's setting afterwards.
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            for _ in range(logt):
                T = torch.matmul(T, T)
            rw = torch.matmul(v, T)
        finally:
            torch.set_float32_matmul_precision(precision)
    else:
        # v @ T == (T^T @ v^T)^T: CSR @ dense is torch's fast sparse product.
        Tt = _transition_t_csr(aff, h, w, radius, beta)
        x = v.t().contiguous()
        for _ in range(2 ** logt):
            x = Tt @ x
        rw = x.t()
    return rw.reshape(k, h, w)


STRIDE = 8  # AffinityNet's feature stride: the walk runs on the (ceil(H/8), ceil(W/8)) map


def padded_size(H: int, W: int) -> tuple[int, int]:
    """(Hp, Wp) = (8 ceil(H/8), 8 ceil(W/8)): the image is zero-padded bottom/right to this (PSA)."""
    return -(-H // STRIDE) * STRIDE, -(-W // STRIDE) * STRIDE


def random_walk_scores(cams_fullres, features: torch.Tensor, alpha: float = 6, beta: float = 8,
                       logt: int = 6, radius: int = 5, method: str = "auto") -> torch.Tensor:
    """Random-walk scores of one image at full resolution (docs/METHOD.md section 5.5), the
    chain after the network.

    The caller pads the image (H, W) to (Hp, Wp) = :func:`padded_size` and runs AffinityNet on
    it. Here: scores = [(1 - max_k M_k)^alpha, M_1..M_K] (``lib.crf.cam_bg_fg_scores``) at full
    resolution, zero-padded to (Hp, Wp); 8x8 average pooling -> (K+1, Hp/8, Wp/8);
    :func:`random_walk`; bilinear upsampling (align_corners=False) to (Hp, Wp); crop to (H, W).

    Args:
        cams_fullres: (K, H, W) CAMs in [0, 1] (numpy or tensor), K >= 0.
        features: (D, Hp/8, Wp/8) AffinityNet features of the padded image, or its (P,) pair
            affinities.
    Returns:
        (K+1, H, W) scores (channel 0 background, channel i+1 = class ``keys[i]``), in the
        features' floating dtype (float32 for pair indices), on their device.
    """
    cams = cams_fullres.detach().cpu().numpy() if torch.is_tensor(cams_fullres) else cams_fullres
    cams = np.asarray(cams)
    if cams.ndim != 3:
        raise ValueError(f"random_walk_scores: cams must be (K, H, W), got {cams.shape}")
    H, W = cams.shape[1:]
    Hp, Wp = padded_size(H, W)
    h, w = Hp // STRIDE, Wp // STRIDE
    if features.dim() == 3 and tuple(features.shape[1:]) != (h, w):
        raise ValueError(f"random_walk_scores: features {tuple(features.shape)} do not match a "
                         f"{H}x{W} image padded to a multiple of {STRIDE} ({h}x{w})")
    dtype = features.dtype if features.is_floating_point() else torch.float32
    scores = torch.from_numpy(cam_bg_fg_scores(cams, alpha)).to(device=features.device, dtype=dtype)
    pooled = F.avg_pool2d(F.pad(scores, (0, Wp - W, 0, Hp - H))[None], STRIDE, STRIDE)[0]
    rw = random_walk(pooled, features, beta=beta, logt=logt, radius=radius, method=method)
    up = F.interpolate(rw[None], size=(Hp, Wp), mode="bilinear", align_corners=False)[0]
    return up[:, :H, :W]


def random_walk_labels(image_shape, cams_fullres, keys, features: torch.Tensor, alpha: float = 6,
                       beta: float = 8, logt: int = 6, radius: int = 5,
                       method: str = "auto") -> np.ndarray:
    """Random-walk label map of one image: the argmax of :func:`random_walk_scores`, channel ->
    class id via [0, keys+1] (``lib.io.scores_to_label``); all background when K = 0.

    Args:
        image_shape: (H, W) of the unpadded image.
        cams_fullres: (K, H, W) CAMs in [0, 1] (numpy or tensor), K = 0 allowed.
        keys: (K,) foreground class indices 0..C-1.
        features: as :func:`random_walk_scores`.
    Returns:
        (H, W) uint8 class ids (0 background, k+1 class k).
    """
    H, W = (int(s) for s in image_shape[:2])
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if tuple(cams_fullres.shape) != (keys.shape[0], H, W):
        raise ValueError(f"random_walk_labels: cams {tuple(cams_fullres.shape)} must be "
                         f"({keys.shape[0]}, {H}, {W})")
    if keys.shape[0] == 0:
        return np.zeros((H, W), np.uint8)
    scores = random_walk_scores(cams_fullres, features, alpha, beta, logt, radius, method)
    return scores_to_label(scores, keys)
