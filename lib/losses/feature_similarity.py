"""Feature similarity loss of ICAM (docs/METHOD.md section 3.4; also used by stage 3).

For an image x (N, 3, H, W) in [0, 1] (de-normalised, at the prediction's resolution) and a
prediction y (N, K, H, W) (CAM softmax probabilities), over all ordered pixel pairs (i, j):

    dx_ij = clamp(||x_i - x_j||_1 / 3, 0, 1)
    kx_ij = tanh(mu + log((dx_ij + 1e-5) / (1 - dx_ij + 1e-5)))        (mu = 2.5)
    dy_ij = ||y_i - y_j||_2^2
    dp_ij = exp(-0.5 (||p_i - p_j|| / sigma)^2) / (2 pi sigma^2)        (sigma = 5, p = pixel coords)
    L     = -(1 / (N H W)) sum_n sum_{i,j} dp_ij dy_ij kx_ij

Similar colours (kx ~ -1) pull predictions together, different colours (kx ~ +1) push them apart.

Two implementations, both exact (every ordered pair, no truncation):

* ``feature_similarity_loss_dense``: the original formulation with (N, HW, HW) pair matrices;
  memory O(N (HW)^2). Kept as the reference.
* ``feature_similarity_loss_blocked`` (default): the same sum computed in pixel blocks. The pair
  weight w_ij = dp_ij kx_ij depends on the image only and is symmetric, so the loss is a quadratic
  form in the predictions,

      sum_{i,j} w_ij ||y_i - y_j||^2 = 2 sum_i r_i |y_i|^2 - 2 sum_i y_i . (w y)_i,   r_i = sum_j w_ij,

  and its gradient is 4 (r_i y_i - (w y)_i). One pass over the (block x block) tiles of w with
  J >= I (each unordered tile once) accumulates r and w y with batched matrix products; both are
  saved for backward, which is then a few element-wise operations (no recomputation, no Python
  loop over offsets). Memory O(N HW K) plus a few (N, B, B) tiles.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "fsl_image",
    "feature_similarity_loss",
    "feature_similarity_loss_blocked",
    "feature_similarity_loss_dense",
    "default_block_size",
]

_EPS = 1e-5


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


_CPU_TILE_ELEMENTS = 2**18    # N B^2 per tile: B = 181 at N = 8, the fastest on 2 CPU cores (docs/PERFORMANCE.md)
_CUDA_TILE_ELEMENTS = 2**25   # 256 MB float64 tiles: B = 2048 at N = 8, 3 tiles at 56x56


def default_block_size(batch: int, pixels: int, device: torch.device) -> int:
    """Pixels per block B (the tiles are (N, B, B)): sqrt(budget / N), at least 32, at most HW."""
    budget = _CUDA_TILE_ELEMENTS if device.type == "cuda" else _CPU_TILE_ELEMENTS
    return max(1, min(pixels, max(32, int(math.sqrt(budget / max(batch, 1))))))


def _pair_sums(x: torch.Tensor, y: torch.Tensor, width: int, mu: float, sigma: float,
               block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """r_i = sum_j w_ij and (w y)_i for w_ij = dp_ij kx_ij over all pixel pairs.

    x (N, P, 3) colours, y (N, P, K) predictions, P = H W in raster order of rows of ``width``
    -> r (N, P), wy (N, P, K). Tiles (I, J) with J >= I: tile I-J adds w_IJ y_J to rows I and,
    off the diagonal, w_IJ^T y_I to rows J. A ones column appended to y makes r the last column
    of the same product.
    """
    n, p, k = y.shape
    y1 = torch.cat([y, y.new_ones(n, p, 1)], 2)  # (N, P, K+1)
    y1t = y1.transpose(1, 2).contiguous()  # (N, K+1, P): w^T y as y^T w keeps w's layout
    acc, acc_t = torch.zeros_like(y1), torch.zeros_like(y1t)
    idx = torch.arange(p, device=y.device)
    rows, cols = (idx // width).to(y.dtype), (idx % width).to(y.dtype)
    for a0 in range(0, p, block):
        a1 = min(p, a0 + block)
        for b0 in range(a0, p, block):
            b1 = min(p, b0 + block)
            d2 = (rows[a0:a1, None] - rows[None, b0:b1]).square_() + (cols[a0:a1, None] - cols[None, b0:b1]).square_()
            dp = d2.mul_(-0.5 / sigma**2).exp_().div_(2.0 * math.pi * sigma**2)
            weight = _colour_kernel_rational(torch.cdist(x[:, a0:a1], x[:, b0:b1], p=1.0), mu).mul_(dp)
            if b0 == a0:  # i = j pairs have dy = 0: drop them so they add no rounding either
                weight.diagonal(dim1=1, dim2=2).zero_()
            acc[:, a0:a1] += torch.bmm(weight, y1[:, b0:b1])
            if b0 != a0:
                acc_t[:, :, b0:b1] += torch.bmm(y1t[:, :, a0:a1], weight)
    acc += acc_t.transpose(1, 2)
    return acc[..., k], acc[..., :k]


class _QuadraticPairSum(torch.autograd.Function):
    """S(y) = sum_{i,j} w_ij ||y_i - y_j||^2 = 2 sum_i (r_i |y_i|^2 - y_i . (w y)_i),
    dS/dy_i = 4 (r_i y_i - (w y)_i); r and w y come from :func:`_pair_sums` and are saved."""

    @staticmethod
    def forward(ctx, y, x, width, mu, sigma, block):
        with torch.autocast(y.device.type, enabled=False):  # float64 products stay float64
            r, wy = _pair_sums(x, y, width, mu, sigma, block)
        ctx.save_for_backward(y, r, wy)
        return 2.0 * ((y.square().sum(2) * r).sum() - (y * wy).sum())

    @staticmethod
    def backward(ctx, grad_out):
        y, r, wy = ctx.saved_tensors
        return (4.0 * grad_out) * (y * r.unsqueeze(2) - wy), None, None, None, None, None


def feature_similarity_loss_blocked(image01: torch.Tensor, pred: torch.Tensor, mu: float = 2.5,
                                    sigma: float = 5.0, block_size: int | None = None,
                                    compute_dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Exact feature similarity loss over all pixel pairs, in (N, B, B) tiles (module docstring).

    image01 (N, 3, H, W) in [0, 1], pred (N, K, H, W) -> scalar, equal to
    :func:`feature_similarity_loss_dense` up to rounding, with memory O(N H W K + N B^2).
    ``block_size`` B (pixels per block) defaults to :func:`default_block_size`: small tiles on
    the CPU (cache), large ones on CUDA (fewer kernels). ``compute_dtype`` (float64 by default;
    None = pred's dtype) is the internal precision: the quadratic-form expansion subtracts two
    nearly equal sums, which float32 would round away. The result is returned in pred's dtype.
    No gradient flows to ``image01`` (the original's image is the network input, which has none).
    """
    _check(image01, pred)
    n, _, h, w = pred.shape
    block = default_block_size(n, h * w, pred.device) if block_size is None else int(block_size)
    if block < 1:
        raise ValueError(f"block_size must be >= 1, got {block}")
    dtype = pred.dtype if compute_dtype is None else compute_dtype
    y = pred.to(dtype).flatten(2).transpose(1, 2)  # (N, HW, K)
    x = image01.detach().to(dtype).flatten(2).transpose(1, 2).contiguous()  # (N, HW, 3)
    total = _QuadraticPairSum.apply(y, x, w, float(mu), float(sigma), block)
    return (-total / (n * h * w)).to(pred.dtype)


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
                            sigma: float = 5.0, mode: str = "blocked", **kwargs) -> torch.Tensor:
    """Feature similarity loss (module docstring); ``mode`` 'blocked' (default) or 'dense'.

    image01 (N, 3, H, W) in [0, 1], pred (N, K, H, W) -> scalar. Extra keyword arguments go to
    :func:`feature_similarity_loss_blocked` (``block_size``, ``compute_dtype``).
    """
    if mode == "blocked":
        return feature_similarity_loss_blocked(image01, pred, mu, sigma, **kwargs)
    if mode == "dense":
        if kwargs:
            raise ValueError(f"dense feature similarity loss takes no options, got {sorted(kwargs)}")
        return feature_similarity_loss_dense(image01, pred, mu, sigma)
    raise ValueError(f"unknown feature similarity mode {mode!r}; expected 'blocked' or 'dense'")
