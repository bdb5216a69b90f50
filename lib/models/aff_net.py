"""Stage-2 AffinityNet (PSA; docs/METHOD.md section 5).

conv4 (512w ch), conv5 (1024w ch) and conv6 (4096w ch) of the ResNet-38 trunk are all at stride 8
(b4 is the last strided block: conv1a s1, b2/b3/b4 s2), so no resizing is needed::

    f = ELU(f9([ELU(f8_3(conv4)), ELU(f8_4(conv5)), ELU(f8_5(conv6))]))     (N, 448w, h, w)
    a_p = exp(-mean_c |f[:, c, from_p] - f[:, c, to_p]|)                     (N, P)

over the neighbour pairs (from_p, to_p) of :func:`lib.affinity.neighbour_pairs` (radius 5).
Parameter names match the released ``aff`` checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.backbones.resnet38d import ResNet38d, scale_ch
from lib.models._groups import conv_param_groups

__all__ = ["AffinityNet", "dense_affinity"]


def dense_affinity(aff: torch.Tensor, from_idx: torch.Tensor, to_idx: torch.Tensor,
                   num_pixels: int) -> torch.Tensor:
    """Pair affinities (N, P) -> dense symmetric (N, hw, hw) matrix with ones on the diagonal.

    W[n, from_p, to_p] = W[n, to_p, from_p] = aff[n, p]; W[n, i, i] = 1; zero elsewhere.
    """
    n = aff.shape[0]
    dense = aff.new_zeros(n, num_pixels, num_pixels)
    dense[:, from_idx, to_idx] = aff
    dense[:, to_idx, from_idx] = aff
    idx = torch.arange(num_pixels, device=aff.device)
    dense[:, idx, idx] = 1.0
    return dense


class AffinityNet(ResNet38d):
    """PSA AffinityNet on the ResNet-38 trunk (keys top-level, ``f8_3`` … ``f9``).

    Args:
        width: channel multiplier of trunk and heads.
        freeze: apply :meth:`freeze_for_weak_training` (conv1a/b2/b2_1/b2_2 frozen, BatchNorms in
            eval mode), as the original does in stage 2.
    """

    def __init__(self, width: float = 1.0, freeze: bool = True):
        super().__init__(width=width)
        s = lambda c: scale_ch(c, width)  # noqa: E731
        self.f8_3 = nn.Conv2d(s(512), s(64), 1, bias=False)
        self.f8_4 = nn.Conv2d(s(1024), s(128), 1, bias=False)
        self.f8_5 = nn.Conv2d(s(4096), s(256), 1, bias=False)
        self.f9 = nn.Conv2d(s(64) + s(128) + s(256), s(448), 1, bias=False)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.kaiming_normal_(self.f8_5.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self.feature_dim = s(448)
        self.from_scratch_layers = [self.f8_3, self.f8_4, self.f8_5, self.f9]
        self.not_training = [self.conv1a, self.b2, self.b2_1, self.b2_2]
        if freeze:
            self.freeze_for_weak_training()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) normalised RGB -> affinity features (N, 448w, ceil(H/8), ceil(W/8))."""
        d = self.forward_as_dict(x)
        f8_3 = F.elu(self.f8_3(d["conv4"]))
        f8_4 = F.elu(self.f8_4(d["conv5"]))
        f8_5 = F.elu(self.f8_5(d["conv6"]))
        return F.elu(self.f9(torch.cat([f8_3, f8_4, f8_5], dim=1)))

    def forward(self, x: torch.Tensor, to_dense: bool = False, radius: int = 5) -> torch.Tensor:
        """x (N, 3, H, W) -> affinities (N, P) over ``neighbour_pairs(h, w, radius)``, or with
        ``to_dense`` the (N, hw, hw) symmetric matrix of :func:`dense_affinity`."""
        from lib.affinity import neighbour_pairs, pair_affinity

        f = self.forward_features(x)
        aff = pair_affinity(f, radius=radius)
        if to_dense:
            h, w = f.shape[-2:]
            from_idx, to_idx = neighbour_pairs(h, w, radius=radius, device=f.device)
            return dense_affinity(aff, from_idx, to_idx, h * w)
        return aff

    def param_groups(self) -> list[list[nn.Parameter]]:
        """[pretrained conv weights, pretrained biases, new weights (f8_3, f8_4, f8_5, f9), new
        biases]; Conv2d parameters only, frozen ones (conv1a, b2*) excluded."""
        return conv_param_groups(self, self.from_scratch_layers)
