"""SEAM-style equivariance losses of ICAM stage 1 (docs/METHOD.md section 3.3).

View 1 is the crop x1, view 2 its bilinear 0.3x downscale. All maps are softmax probabilities
(N, C+1, h, w); view-1 maps are brought to the view-2 size with
    down(m) = bilinear resize of m to (h2, w2), align_corners=True
(the same resampling as the view downscale; with align_corners=True resizing "to a size" and
"by a scale factor" give identical values whenever the output sizes agree).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["downscale_to", "equivariant_regularization_loss", "equivariant_cross_regularization_loss"]


def downscale_to(m: torch.Tensor, ref: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """Bilinear resize of m (N, K, h1, w1) to ref's spatial size (N, K, h2, w2); no-op if equal."""
    if m.dim() != 4 or ref.dim() != 4:
        raise ValueError(f"expected 4-D maps, got {tuple(m.shape)} and {tuple(ref.shape)}")
    if m.shape[:2] != ref.shape[:2]:
        raise ValueError(f"maps differ in batch/channels: {tuple(m.shape)} vs {tuple(ref.shape)}")
    if m.shape[-2:] == ref.shape[-2:]:
        return m
    return F.interpolate(m, size=ref.shape[-2:], mode="bilinear", align_corners=align_corners)


def equivariant_regularization_loss(cam1: torch.Tensor, cam_rv1: torch.Tensor, cam2: torch.Tensor,
                                    cam_rv2: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """ER loss. cam1, cam_rv1 (N, C+1, h1, w1); cam2, cam_rv2 (N, C+1, h2, w2) -> scalar

    ER = mean|down(cam1) - cam2| + mean|down(cam_rv1) - cam_rv2|
       + mean|down(cam1) - down(cam_rv1)| + mean|cam2 - cam_rv2|
    (means over all N*(C+1)*h2*w2 elements).
    """
    c1 = downscale_to(cam1, cam2, align_corners)
    r1 = downscale_to(cam_rv1, cam_rv2, align_corners)
    return ((c1 - cam2).abs().mean() + (r1 - cam_rv2).abs().mean()
            + (c1 - r1).abs().mean() + (cam2 - cam_rv2).abs().mean())


def equivariant_cross_regularization_loss(cam1: torch.Tensor, cam_rv1: torch.Tensor, cam2: torch.Tensor,
                                          cam_rv2: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """ECR loss, shapes as :func:`equivariant_regularization_loss` -> scalar

    ECR = mean|down(cam1) - cam_rv2| + mean|cam2 - down(cam_rv1)|.
    """
    c1 = downscale_to(cam1, cam_rv2, align_corners)
    r1 = downscale_to(cam_rv1, cam2, align_corners)
    return (c1 - cam_rv2).abs().mean() + (cam2 - r1).abs().mean()
