"""Image-level classification losses of ICAM stage 1 (docs/METHOD.md section 3.2).

Notation: N images, C foreground classes, K = C + 1 channels (channel 0 is background),
H x W the CAM resolution, S = number of importance samples.

Labels ``y`` are (N, C) foreground multi-hot (the dataset convention). Every loss also accepts
(N, C+1) labels that already carry the background column (it must be all ones); the channel
count of the prediction disambiguates the two.

All "multilabel soft margin" losses are ``F.multilabel_soft_margin_loss`` with its default mean
reduction, i.e. mean over every (image, class) element of the binary logistic loss

    l(x, t) = -[t log sigmoid(x) + (1 - t) log sigmoid(-x)].
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "probs_to_logits",
    "softmax_maxpool",
    "with_background",
    "gap_loss",
    "max_pool_loss",
    "revised_cam_loss",
    "importance_sampling_loss",
    "hfpl_importance_sampling_loss",
    "classification_loss",
]


def probs_to_logits(p: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Inverse sigmoid of a probability squeezed away from 0 and 1 (any shape).

    logit = log(p(1-eps) + eps) - log(1 - p(1-eps)), eps = 1e-3 as in the original; the
    squeeze keeps both logs finite for p in [0, 1] (range about [-6.9, 6.9]).
    """
    q = p * (1.0 - eps)
    return torch.log(q + eps) - torch.log(1.0 - q)


def softmax_maxpool(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over channels, then max over pixels, converted back to logits.

    logits (N, K, H, W) -> (pred (N, K) = probs_to_logits(max_{h,w} p), p (N, K, H, W)),
    p = softmax(logits, dim=1).
    """
    if logits.dim() != 4:
        raise ValueError(f"softmax_maxpool expects (N, K, H, W) logits, got shape {tuple(logits.shape)}")
    probs = torch.softmax(logits, dim=1)
    pred = probs_to_logits(probs.flatten(2).amax(dim=2))
    return pred, probs


def with_background(y: torch.Tensor) -> torch.Tensor:
    """(N, C) foreground multi-hot -> (N, C+1) with the always-present background (1) at index 0."""
    if y.dim() != 2:
        raise ValueError(f"labels must be (N, C), got shape {tuple(y.shape)}")
    return torch.cat([torch.ones_like(y[:, :1]), y], dim=1)


def _labels(y: torch.Tensor, num_channels: int, *, background: bool) -> torch.Tensor:
    """Labels matching a K = num_channels prediction: (N, K) with background, or (N, K-1) without.

    Accepts y as (N, K-1) foreground labels or (N, K) labels whose column 0 is the background.
    """
    if y.dim() != 2:
        raise ValueError(f"labels must be (N, C) or (N, C+1), got shape {tuple(y.shape)}")
    if y.shape[1] == num_channels - 1:
        full = with_background(y)
    elif y.shape[1] == num_channels:
        if not bool((y[:, 0] == 1).all()):
            raise ValueError("labels with C+1 columns must have the background column 0 set to 1")
        full = y
    else:
        raise ValueError(
            f"labels have {y.shape[1]} columns; expected {num_channels - 1} (foreground) or "
            f"{num_channels} (with background) for a {num_channels}-channel prediction")
    if not full.is_floating_point():
        full = full.to(torch.get_default_dtype())
    return full if background else full[:, 1:]


def gap_loss(cam_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """GAP loss (``--pooling avg``): multilabel soft margin of the spatial mean of the CAM logits.

    cam_logits (N, C+1, H, W), y (N, C) -> scalar
    L = MLSM(mean_{h,w} cam_logits[:, 1:], y)  (foreground channels only).
    """
    t = _labels(y, cam_logits.shape[1], background=False)
    pooled = cam_logits.mean(dim=(2, 3))[:, 1:]
    return F.multilabel_soft_margin_loss(pooled, t.to(pooled.dtype))


def max_pool_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Max-pool loss (``--pooling max``): MLSM of the network's softmax-maxpool logits, background included.

    pred (N, C+1) from :func:`softmax_maxpool`, y (N, C) -> scalar L = MLSM(pred, [1, y]).
    """
    t = _labels(y, pred.shape[1], background=True)
    return F.multilabel_soft_margin_loss(pred, t.to(pred.dtype))


def revised_cam_loss(cam_rv: torch.Tensor, y: torch.Tensor, pooling: str = "max",
                     cam_rv_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Loss on the PCM-revised CAM (weight 1 in the total).

    cam_rv (N, C+1, H, W) softmax probabilities, y (N, C) -> scalar.
    - ``pooling='max'`` (original default): L = MLSM(probs_to_logits(max_{h,w} cam_rv), [1, y]).
    - ``pooling='avg'`` (extension): L = MLSM(mean_{h,w} cam_rv_logits[:, 1:], y), i.e. the
      GAP loss applied to the revised logits; needs ``cam_rv_logits``.
    """
    if pooling == "max":
        t = _labels(y, cam_rv.shape[1], background=True)
        pred = probs_to_logits(cam_rv.flatten(2).amax(dim=2))
        return F.multilabel_soft_margin_loss(pred, t.to(pred.dtype))
    if pooling == "avg":
        if cam_rv_logits is None:
            raise ValueError("revised_cam_loss(pooling='avg') needs cam_rv_logits")
        return gap_loss(cam_rv_logits, y)
    raise ValueError(f"unknown rv pooling {pooling!r}; expected 'max' or 'avg'")


def _sample_pixels(weights: torch.Tensor, num_samples: int,
                   generator: torch.Generator | None) -> torch.Tensor:
    """weights (N, K, HW) >= 0 -> pixel indices (N, K, S) drawn with replacement, P(i) ∝ weights[..., i]."""
    n, k, hw = weights.shape
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if generator is not None and generator.device.type != weights.device.type:
        raise ValueError(f"the sampling generator is on {generator.device} but the CAMs are on "
                         f"{weights.device}; create it with torch.Generator(device=...)")
    rows = weights.detach().reshape(n * k, hw)
    # Rows summing to zero (fully underflowed maps) would make multinomial raise; they are
    # replaced by a uniform distribution, which is what their limit would give.
    # Unconditional (no ``if dead.any()``): reading the flag back would stall a GPU every step.
    dead = rows.sum(dim=1, keepdim=True) <= 0
    rows = torch.where(dead, torch.ones_like(rows), rows)
    idx = torch.multinomial(rows.float(), num_samples, replacement=True, generator=generator)
    return idx.view(n, k, num_samples)


def importance_sampling_loss(cam_probs: torch.Tensor, y: torch.Tensor, num_samples: int = 100,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """ICAM importance sampling loss (replaces GAP).

    cam_probs (N, C+1, H, W) softmax probabilities p, y (N, C) -> scalar.
    For every image n and channel k (background included, as the original draws them),
    S pixel indices i_{n,k,s} are drawn with replacement with P(i) = p[n,k,i] / sum_i p[n,k,i]
    (``torch.multinomial`` on the (N*(C+1), HW) rows, optional ``generator``). Then
        z[n,k,s] = probs_to_logits(p[n,k,i_{n,k,s}])            (N, C+1, S)
        L = mean_{n,s} MLSM(z[n,1:,s], y[n])
          = mean over n, foreground k, s of l(z[n,k,s], y[n,k]),
    i.e. every sample is an image-level prediction for its class. (Because MLSM's mean
    reduction averages every element, reading it as a loss on (N, C, S), on (N*S, C) or as a
    mean over samples gives the same number.) Gradients reach p through the gathered values;
    the sampling itself is not differentiated.
    """
    if cam_probs.dim() != 4:
        raise ValueError(f"cam_probs must be (N, C+1, H, W), got shape {tuple(cam_probs.shape)}")
    n, k = cam_probs.shape[:2]
    t = _labels(y, k, background=False)
    flat = cam_probs.flatten(2)
    idx = _sample_pixels(flat, num_samples, generator)
    sampled = flat.gather(2, idx)[:, 1:]  # (N, C, S)
    z = probs_to_logits(sampled)
    target = t.to(z.dtype).unsqueeze(2).expand_as(z)
    return F.multilabel_soft_margin_loss(z.transpose(1, 2).reshape(-1, k - 1),
                                         target.transpose(1, 2).reshape(-1, k - 1))


def hfpl_importance_sampling_loss(cam_logits: torch.Tensor, y: torch.Tensor, num_samples: int = 100,
                                  generator: torch.Generator | None = None,
                                  eps: float = 1e-3) -> torch.Tensor:
    """EXTENSION (not in the original ICAM, off by default): binomial importance sampling.

    Follows the idea of the HFPL follow-up (Jonnarth et al., 2023): each foreground class is an
    independent binary problem with per-pixel posterior q = sigmoid(cam_logits[:, 1:]) instead of
    the channel softmax. cam_logits (N, C+1, H, W), y (N, C) -> scalar:
        i_{n,c,s} ~ Multinomial(q[n,c,:] / sum q[n,c,:])   (S draws with replacement)
        L = mean_{n,c,s} l(probs_to_logits(q[n,c,i_{n,c,s}], eps), y[n,c])
    (binomial log-likelihood of the sampled posteriors; gradients flow through q, not the draw).
    """
    if cam_logits.dim() != 4:
        raise ValueError(f"cam_logits must be (N, C+1, H, W), got shape {tuple(cam_logits.shape)}")
    n, k = cam_logits.shape[:2]
    t = _labels(y, k, background=False)
    q = torch.sigmoid(cam_logits[:, 1:].flatten(2))  # (N, C, HW)
    idx = _sample_pixels(q, num_samples, generator)
    z = probs_to_logits(q.gather(2, idx), eps)
    target = t.to(z.dtype).unsqueeze(2).expand_as(z)
    return F.binary_cross_entropy_with_logits(z, target)


def classification_loss(out_view1: Any, out_view2: Any, y: torch.Tensor, loss_weight: float = 0.8,
                        num_samples: int = 100, pooling: str = "avg", rv_pooling: str = "max",
                        generator: torch.Generator | None = None,
                        sampling: str = "icam") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage-1 classification loss over the two views (docs/METHOD.md section 3.2).

    out_view1/out_view2: objects with attributes ``pred`` (N, C+1), ``cam`` (N, C+1, H, W) softmax
    probabilities, ``cam_logits``, ``cam_rv`` (probabilities), ``cam_rv_logits`` (the CAM network's
    output; duck-typed). y (N, C) foreground labels.

        total = (1-w)(GAP_1 + GAP_2) + w(IS_1 + IS_2) + (RV_1 + RV_2),   w = loss_weight

    GAP = :func:`gap_loss` (pooling 'avg') or :func:`max_pool_loss` (pooling 'max');
    IS = :func:`importance_sampling_loss` on ``cam`` (``sampling='icam'``) or the
    :func:`hfpl_importance_sampling_loss` extension on ``cam_logits`` (``sampling='hfpl'``);
    RV = :func:`revised_cam_loss`. With w = 0 the IS terms are not computed (no random draw),
    with w = 1 the GAP terms are not computed. Returns (total, parts) with parts keys
    'gap', 'is', 'rv' (sums over both views; absent terms are 0) and 'cls' = total.
    """
    if not 0.0 <= loss_weight <= 1.0:
        raise ValueError(f"loss_weight must be in [0, 1], got {loss_weight}")
    if pooling not in ("avg", "max"):
        raise ValueError(f"unknown pooling {pooling!r}; expected 'avg' or 'max'")
    if sampling not in ("icam", "hfpl"):
        raise ValueError(f"unknown sampling {sampling!r}; expected 'icam' or 'hfpl'")
    views = (out_view1, out_view2)
    zero = out_view1.cam.new_zeros(())

    gap = zero
    if loss_weight < 1.0:
        if pooling == "avg":
            gap = sum(gap_loss(v.cam_logits, y) for v in views)
        else:
            gap = sum(max_pool_loss(v.pred, y) for v in views)

    is_ = zero
    if loss_weight > 0.0:
        if sampling == "icam":
            is_ = sum(importance_sampling_loss(v.cam, y, num_samples, generator) for v in views)
        else:
            is_ = sum(hfpl_importance_sampling_loss(v.cam_logits, y, num_samples, generator)
                      for v in views)

    rv = sum(revised_cam_loss(v.cam_rv, y, rv_pooling, getattr(v, "cam_rv_logits", None))
             for v in views)

    if loss_weight == 0.0:
        total = gap + rv
    elif loss_weight == 1.0:
        total = is_ + rv
    else:
        total = (1.0 - loss_weight) * gap + loss_weight * is_ + rv
    return total, {"gap": gap, "is": is_, "rv": rv, "cls": total}
