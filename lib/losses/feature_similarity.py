"""Feature similarity loss of ICAM (docs/METHOD.md section 3.4; also used by stage 3).

For an image x (N, 3, H, W) in [0, 1] (de-normalised, at the prediction's resolution) and a
prediction y (N, K, H, W) (CAM softmax probabilities), over all ordered pixel pairs (i, j):

    dx_ij = clamp(||x_i - x_j||_1 / 3, 0, 1)
    kx_ij = tanh(mu + log((dx_ij + 1e-5) / (1 - dx_ij + 1e-5)))        (mu = 2.5)
    dy_ij = ||y_i - y_j||_2^2
    dp_ij = exp(-0.5 (||p_i - p_j|| / sigma)^2) / (2 pi sigma^2)        (sigma = 5, p = pixel coords)
    L     = -(1 / (N H W)) sum_n sum_{i,j} dp_ij dy_ij kx_ij

Similar colours (kx ~ -1) pull predictions together, different colours (kx ~ +1) push them apart.

Two implementations:

* ``feature_similarity_loss_dense``: the original formulation with (N, HW, HW) pair matrices;
  memory O(N (HW)^2). Kept as the reference.
* ``feature_similarity_loss_windowed`` (default): only pairs with |di|, |dj| <= R. Beyond that
  dp <= exp(-R^2 / (2 sigma^2)) / (2 pi sigma^2); the Gaussian mass outside the square window is
  about 2 erfc(R / (sigma sqrt 2)) (1.3e-4 for R = 4 sigma, 1.1e-6 for R = 5 sigma; the default
  is R = ceil(5 sigma), see :func:`default_window_radius`). Pairs are
  enumerated by vertical offset a (the offsets (a, b) and (-a, -b) contribute equally, so only
  a >= 0 is visited and doubled; i = j contributes 0); the horizontal offsets of a row pair form a
  band matrix, evaluated with batched matrix products in column tiles. A custom autograd
  function recomputes each step in backward, so only one step's intermediates exist at a time:
  memory O(N H W (T + 2R)) for tile width T instead of O(N (HW)^2).
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "fsl_image",
    "feature_similarity_loss",
    "feature_similarity_loss_dense",
    "feature_similarity_loss_windowed",
    "default_window_radius",
]

_EPS = 1e-5


def default_window_radius(sigma: float) -> int:
    """R = ceil(5 sigma): default window radius of the windowed loss (25 for sigma = 5).

    ceil(4 sigma) (1.3e-4 of the Gaussian mass left out) is not enough: L is a difference of
    attracting (kx < 0) and repelling (kx > 0) terms that largely cancel, so the truncated tail
    is large *relative to L*. R = 25 is the smallest radius whose relative error vs the dense
    loss stayed below 1e-4 on real images (the table in docs/PERFORMANCE.md).
    """
    return max(1, math.ceil(5.0 * sigma))


def _check(image01: torch.Tensor, pred: torch.Tensor) -> None:
    if pred.dim() != 4:
        raise ValueError(f"pred must be (N, K, H, W), got shape {tuple(pred.shape)}")
    if image01.dim() != 4 or image01.shape[1] != 3:
        raise ValueError(f"image01 must be (N, 3, H, W), got shape {tuple(image01.shape)}")
    if image01.shape[0] != pred.shape[0] or image01.shape[-2:] != pred.shape[-2:]:
        raise ValueError(
            f"image01 {tuple(image01.shape)} and pred {tuple(pred.shape)} must share batch and "
            "spatial size (resize the image to the prediction's resolution first)")


def _colour_kernel(dx_l1: torch.Tensor, mu: float) -> torch.Tensor:
    """kx = tanh(mu + log((dx+eps)/(1-dx+eps))) with dx = clamp(L1 distance / 3, 0, 1)."""
    dx = (dx_l1 / 3.0).clamp(0.0, 1.0)
    return torch.tanh(mu + torch.log((dx + _EPS) / (1.0 - dx + _EPS)))


def _colour_kernel_rational(dx_l1: torch.Tensor, mu: float) -> torch.Tensor:
    """Same kx without log/tanh: tanh(mu + log r) = (e^{2 mu} r^2 - 1) / (e^{2 mu} r^2 + 1) with
    r = u / v, u = dx + eps, v = 1 - dx + eps, so kx = (e^{2 mu} u^2 - v^2) / (e^{2 mu} u^2 + v^2)
    (both squares positive and bounded for dx in [0, 1]: no overflow)."""
    dx = (dx_l1 / 3.0).clamp(0.0, 1.0)
    u = (dx + _EPS).square().mul_(math.exp(2.0 * mu))
    v = (1.0 - dx + _EPS).square_()
    return (u - v).div_(u.add_(v))


def feature_similarity_loss_dense(image01: torch.Tensor, pred: torch.Tensor, mu: float = 2.5,
                                  sigma: float = 5.0) -> torch.Tensor:
    """Reference implementation with full (N, HW, HW) pair matrices (see module docstring).

    image01 (N, 3, H, W) in [0, 1], pred (N, K, H, W) -> scalar. Memory ~ 6 N (HW)^2 floats at the peak (forward + backward).
    """
    _check(image01, pred)
    n, _, h, w = pred.shape
    x = image01.to(pred.dtype).flatten(2).transpose(1, 2)  # (N, HW, 3)
    y = pred.flatten(2).transpose(1, 2)  # (N, HW, K)
    kx = _colour_kernel(torch.cdist(x, x, p=1.0), mu)
    # Direct differences rather than the |a|^2+|b|^2-2ab expansion: no cancellation error.
    dy = torch.cdist(y, y, p=2.0, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    rows = torch.arange(h, device=pred.device, dtype=pred.dtype).repeat_interleave(w)
    cols = torch.arange(w, device=pred.device, dtype=pred.dtype).repeat(h)
    d2 = (rows[:, None] - rows[None, :]).pow(2) + (cols[:, None] - cols[None, :]).pow(2)
    dp = torch.exp(-0.5 * d2 / sigma**2) / (2.0 * math.pi * sigma**2)
    return -(dp * dy * kx).sum() / (n * h * w)


def _to_rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, h, W) -> (N*h, W, C): one batch entry per image row, channels last (a copy)."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n * h, w, c)


def _from_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`_to_rows`: (N*h, W, C) -> (N, C, h, W)."""
    nh, w, c = t.shape
    return t.reshape(n, nh // n, w, c).permute(0, 3, 1, 2)


def _tiles(w: int, radius: int, tile: int):
    """Column tiles [c0, c1) of the source pixels and the partner columns [p0, p1) they reach."""
    for c0 in range(0, w, tile):
        c1 = min(w, c0 + tile)
        yield c0, c1, max(0, c0 - radius), min(w, c1 + radius)


def _spatial_kernel(a: int, c0: int, c1: int, p0: int, p1: int, radius: int, sigma: float,
                    dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(c1-c0, p1-p0) matrix dp((a, p - c)) on the half window (|p - c| <= R; p > c when a = 0), else 0."""
    b = (torch.arange(p0, p1, device=device)[None, :] - torch.arange(c0, c1, device=device)[:, None])
    keep = (b.abs() <= radius) & ((b > 0) if a == 0 else torch.ones_like(b, dtype=torch.bool))
    dp = torch.exp(-0.5 * (a * a + b.to(dtype) ** 2) / sigma**2) / (2.0 * math.pi * sigma**2)
    return torch.where(keep, dp, torch.zeros((), dtype=dtype, device=device))


def _windowed_terms(pred: torch.Tensor, image: torch.Tensor, radius: int, mu: float, sigma: float,
                    tile: int):
    """Yield, per vertical offset a in [0, R] and column tile, the pieces of the band sum

        S_{a,tile} = sum_{c in tile, p} w[c, p] ||ys_c - yp_p||^2
                   = sum_c |ys_c|^2 rs_c + sum_p |yp_p|^2 cs_p - 2 sum_c ys_c . (w yp)_c

    where ys = source rows r, yp = partner rows r + a (both (N*h', W, K)), w = dp kx (N*h', T, P),
    rs/cs its row/column sums. Expanding the square turns the K-channel pair sum into one batched
    matrix product per step (no (pairs x K) tensor); callers use float64 so the expansion does not
    lose the precision a direct difference has.
    """
    n, _, h, w = pred.shape
    for a in range(0, min(radius, h - 1) + 1):
        ys, yp = _to_rows(pred[:, :, : h - a]), _to_rows(pred[:, :, a:])
        xs, xp = _to_rows(image[:, :, : h - a]), _to_rows(image[:, :, a:])
        for c0, c1, p0, p1 in _tiles(w, radius, tile):
            spatial = _spatial_kernel(a, c0, c1, p0, p1, radius, sigma, pred.dtype, pred.device)
            weight = _colour_kernel_rational(torch.cdist(xs[:, c0:c1], xp[:, p0:p1], p=1.0), mu).mul_(spatial)
            yield a, (c0, c1, p0, p1), ys[:, c0:c1], yp[:, p0:p1], weight


class _WindowedPairSum(torch.autograd.Function):
    """S = sum_{o in half window} sum_i w_o(i) ||y_i - y_{i+o}||^2, w_o(i) = dp(o) kx(i, i+o)
    (computed by :func:`_windowed_terms`). Backward recomputes each step instead of storing it:

        dS/dys_c = 2 (ys_c rs_c - (w yp)_c),   dS/dyp_p = 2 (yp_p cs_p - (w^T ys)_p).
    """

    @staticmethod
    def forward(ctx, pred, image, radius, mu, sigma, tile):
        ctx.save_for_backward(pred, image)
        ctx.params = (radius, mu, sigma, tile)
        total = pred.new_zeros(())
        for _, _, ys, yp, weight in _windowed_terms(pred, image, radius, mu, sigma, tile):
            total += ((ys.square().sum(2) * weight.sum(2)).sum()
                      + (yp.square().sum(2) * weight.sum(1)).sum()
                      - 2.0 * (ys * torch.bmm(weight, yp)).sum())
        return total

    @staticmethod
    def backward(ctx, grad_out):
        pred, image = ctx.saved_tensors
        radius, mu, sigma, tile = ctx.params
        n, _, h, w = pred.shape
        grad = torch.zeros_like(pred)
        current, g_src, g_par = None, None, None
        for a, (c0, c1, p0, p1), ys, yp, weight in _windowed_terms(pred, image, radius, mu, sigma, tile):
            if a != current:
                if current is not None:
                    grad[:, :, : h - current] += _from_rows(g_src, n)
                    grad[:, :, current:] += _from_rows(g_par, n)
                current = a
                g_src = pred.new_zeros(n * (h - a), w, pred.shape[1])
                g_par = torch.zeros_like(g_src)
            g_src[:, c0:c1] += ys * weight.sum(2, keepdim=True) - torch.bmm(weight, yp)
            g_par[:, p0:p1] += yp * weight.sum(1).unsqueeze(2) - torch.bmm(weight.transpose(1, 2), ys)
        if current is not None:
            grad[:, :, : h - current] += _from_rows(g_src, n)
            grad[:, :, current:] += _from_rows(g_par, n)
        return grad * (2.0 * grad_out), None, None, None, None, None


def feature_similarity_loss_windowed(image01: torch.Tensor, pred: torch.Tensor, mu: float = 2.5,
                                     sigma: float = 5.0, window_radius: int | None = None,
                                     tile_width: int = 16,
                                     compute_dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Windowed feature similarity loss: the dense sum restricted to |di|, |dj| <= R.

    image01 (N, 3, H, W) in [0, 1], pred (N, K, H, W) -> scalar.
    L_R = -(2 / (N H W)) sum_{o = (a, b) in half window} dp(o) sum_i kx(i, i+o) dy(i, i+o),
    half window = {a in 1..R, |b| <= R} U {a = 0, b in 1..R} (each unordered pair once, doubled).
    For each vertical offset a the horizontal offsets form a band of a (W x W) row-pair matrix,
    processed in column tiles of ``tile_width`` sources (partner columns = tile +- R). Extra memory
    per step ~ N H tile_width (tile_width + 2R) values; the backward pass recomputes each step.
    Small tiles waste fewer out-of-band entries (16 was fastest and leanest on CPU at 56x56 and
    112x112); on a GPU larger tiles mean fewer kernel launches.
    ``window_radius`` defaults to :func:`default_window_radius` (ceil(5 sigma)).
    ``compute_dtype`` (float64 by default; None = pred's dtype) is the internal precision; the
    result is returned in pred's dtype.
    The image is treated as data: no gradient flows to ``image01`` (the original's image is the
    network input, which has none either).
    """
    _check(image01, pred)
    radius = default_window_radius(sigma) if window_radius is None else int(window_radius)
    if radius < 1:
        raise ValueError(f"window_radius must be >= 1, got {radius}")
    if tile_width < 1:
        raise ValueError(f"tile_width must be >= 1, got {tile_width}")
    n, _, h, w = pred.shape
    dtype = pred.dtype if compute_dtype is None else compute_dtype
    # Offsets beyond the image give no pairs; trimming R is exact and saves work on small maps.
    radius = min(radius, max(h, w) - 1)
    if radius < 1:  # a 1x1 map has no pairs
        return pred.sum() * 0.0
    total = _WindowedPairSum.apply(pred.to(dtype), image01.detach().to(dtype), radius,
                                   float(mu), float(sigma), int(tile_width))
    return (-2.0 * total / (n * h * w)).to(pred.dtype)


def fsl_image(image: torch.Tensor, size: tuple[int, int], align_corners: bool = True) -> torch.Tensor:
    """The FSL's colour input x: the normalised crop resized to the prediction's (h, w), in [0, 1].

    image (N, 3, S, S) ImageNet-normalised -> (N, 3, h, w) = denormalize(bilinear(image, (h, w))).
    ``align_corners=True`` (default) is the original ICAM computation (the normalised image
    resized with align_corners=True, then de-normalised). ``False`` samples output cell i at
    (i + 0.5) S / h - 0.5, the centre of the image area the stride-S/h cell covers, rather than
    stretching the corners onto each other (docs/DISTRIBUTED.md, "Fidelity switches").
    De-normalising is affine per channel, so it commutes with the (convex) bilinear weights:
    resizing before or after it gives the same values.
    """
    import torch.nn.functional as F

    from lib.datasets.transforms import denormalize

    small = F.interpolate(image.float(), size=tuple(size), mode="bilinear", align_corners=align_corners)
    return denormalize(small)


def feature_similarity_loss(image01: torch.Tensor, pred: torch.Tensor, mu: float = 2.5,
                            sigma: float = 5.0, mode: str = "windowed", **kwargs) -> torch.Tensor:
    """Feature similarity loss (module docstring); ``mode`` 'windowed' (default) or 'dense'.

    image01 (N, 3, H, W) in [0, 1], pred (N, K, H, W) -> scalar. Extra keyword arguments go to
    :func:`feature_similarity_loss_windowed` (``window_radius``, ``offsets_per_step``, ...).
    """
    if mode == "windowed":
        return feature_similarity_loss_windowed(image01, pred, mu, sigma, **kwargs)
    if mode == "dense":
        if kwargs:
            raise ValueError(f"dense feature similarity loss takes no options, got {sorted(kwargs)}")
        return feature_similarity_loss_dense(image01, pred, mu, sigma)
    raise ValueError(f"unknown feature similarity mode {mode!r}; expected 'windowed' or 'dense'")
