"""Stage-1 CAM network: ResNet-38 + SEAM's pixel correlation module (docs/METHOD.md section 3).

Shapes: N images, K = C + 1 channels (0 = background), (H, W) input, (h, w) = stride-8 map
(``h = ceil(H/8)``), ``w`` below also denotes the width multiplier where it scales channels.

Head::

    logits  = fc8(Dropout2d(0.5)(conv6))                          (N, K, h, w), fc8 1x1 no bias
    f       = [image resized to (h, w) (3 ch, bilinear, align_corners=True),
               ReLU(f8_3(conv4.detach())) (64w ch), ReLU(f8_4(conv5.detach())) (128w ch)]
    PCM:  g = f9(f) (192w ch), g <- g / (||g||_2 over channels + 1e-5)       per pixel
          A = ReLU(g^T g)                                         (N, hw, hw)
          A <- A / (sum over rows of A + 1e-5)                    (column-normalised)
          rv_logits = logits (as (N, K, hw)) @ A                  (N, K, h, w)
    pred, cam = softmax_maxpool(logits); cam_rv = softmax(rv_logits)

The logits enter the PCM undetached (as in ICAM; SEAM used a detached normalised CAM), the trunk
features do not. Parameter names match the released ``cam_voc``/``cam_coco`` checkpoints.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.backbones.resnet38d import ResNet38d, scale_ch
from lib.losses.classification import softmax_maxpool
from lib.models._groups import conv_param_groups

__all__ = ["CAMOutput", "CAMNet", "pcm"]


class CAMOutput(NamedTuple):
    """Output of :class:`CAMNet` (all at the stride-8 resolution (h, w)).

    pred (N, K): probs_to_logits(max over pixels of ``cam``); cam (N, K, h, w): softmax of
    ``cam_logits``; cam_logits (N, K, h, w): fc8 output; cam_rv (N, K, h, w): softmax of
    ``cam_rv_logits``; cam_rv_logits (N, K, h, w): PCM-revised logits.
    """

    pred: torch.Tensor
    cam: torch.Tensor
    cam_logits: torch.Tensor
    cam_rv: torch.Tensor
    cam_rv_logits: torch.Tensor


def pcm(cam: torch.Tensor, feat: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Pixel correlation module on already-projected features.

    cam (N, K, h', w') is bilinearly resized (align_corners=True) to feat's (h, w) when the sizes
    differ; feat (N, D, h, w). With g = feat / (||feat||_2 + eps) per pixel,
    A = ReLU(g^T g) (N, hw, hw), A_ij <- A_ij / (sum_i A_ij + eps); returns cam @ A (N, K, h, w).
    """
    n, _, h, w = feat.shape
    if cam.shape[-2:] != (h, w):
        cam = F.interpolate(cam, (h, w), mode="bilinear", align_corners=True)
    cam = cam.reshape(n, cam.shape[1], h * w)
    g = feat.reshape(n, feat.shape[1], h * w)
    g = g / (torch.linalg.vector_norm(g, dim=1, keepdim=True) + eps)
    aff = F.relu(torch.bmm(g.transpose(1, 2), g))
    aff = aff / (aff.sum(dim=1, keepdim=True) + eps)
    return torch.bmm(cam, aff).reshape(n, -1, h, w)


class CAMNet(ResNet38d):
    """ICAM/SEAM CAM network; the trunk's keys stay top-level (``b4_3.…``, ``fc8.weight``).

    Args:
        num_classes: C foreground classes (fc8 outputs C + 1).
        width: channel multiplier of trunk and heads (class outputs are not scaled).
        freeze: apply :meth:`freeze_for_weak_training` (frozen conv1a/b2/b2_1/b2_2 weights and
            BatchNorms in eval mode), as the original does in stage 1.
    """

    def __init__(self, num_classes: int = 20, width: float = 1.0, freeze: bool = True):
        super().__init__(width=width)
        self.num_classes = num_classes
        s = lambda c: scale_ch(c, width)  # noqa: E731
        self.dropout7 = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(s(4096), num_classes + 1, 1, bias=False)
        self.f8_3 = nn.Conv2d(s(512), s(64), 1, bias=False)
        self.f8_4 = nn.Conv2d(s(1024), s(128), 1, bias=False)
        self.f9 = nn.Conv2d(3 + s(64) + s(128), s(192), 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self.from_scratch_layers = [self.fc8, self.f8_3, self.f8_4, self.f9]
        self.not_training = [self.conv1a, self.b2, self.b2_1, self.b2_2]
        if freeze:
            self.freeze_for_weak_training()

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.forward_as_dict(x)
        logits = self.fc8(self.dropout7(d["conv6"]))
        h, w = logits.shape[-2:]
        f8_3 = F.relu(self.f8_3(d["conv4"].detach()))
        f8_4 = F.relu(self.f8_4(d["conv5"].detach()))
        x_s = F.interpolate(x, (h, w), mode="bilinear", align_corners=True)
        feat = self.f9(torch.cat([x_s, f8_3, f8_4], dim=1))
        return logits, pcm(logits, feat)

    def forward(self, x: torch.Tensor) -> CAMOutput:
        """x (N, 3, H, W) normalised RGB -> :class:`CAMOutput` at (ceil(H/8), ceil(W/8))."""
        logits, rv_logits = self._heads(x)
        pred, cam = softmax_maxpool(logits)
        cam_rv = torch.softmax(rv_logits, dim=1)
        return CAMOutput(pred, cam, logits, cam_rv, rv_logits)

    @torch.no_grad()
    def forward_cam_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: x (N, 3, H, W) -> (cam_logits, cam_rv_logits), (N, K, h, w), no softmax.

        Runs under ``no_grad``; call ``model.eval()`` first (dropout).
        """
        return self._heads(x)

    @torch.no_grad()
    def forward_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: x (N, 3, H, W) -> (cam, cam_rv), softmax probabilities (N, K, h, w), the
        channel softmax of :meth:`forward_cam_logits` (same ``eval()`` rule)."""
        logits, rv_logits = self.forward_cam_logits(x)
        return torch.softmax(logits, dim=1), torch.softmax(rv_logits, dim=1)

    def param_groups(self) -> list[list[nn.Parameter]]:
        """[pretrained conv weights, pretrained biases, new weights (fc8, f8_3, f8_4, f9), new
        biases]; Conv2d parameters only, frozen ones (conv1a, b2*) excluded."""
        return conv_param_groups(self, self.from_scratch_layers)
