"""AffinityNet loss (PSA; docs/METHOD.md section 5.4)."""
from __future__ import annotations

import torch

__all__ = ["affinity_loss"]


def affinity_loss(aff: torch.Tensor, bg_label: torch.Tensor, fg_label: torch.Tensor,
                  neg_label: torch.Tensor, counts: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Class-balanced affinity loss.

    aff (N, P) predicted affinities a in (0, 1]; bg_label, fg_label, neg_label (N, P) 0/1 floats
    (background-positive, foreground-positive and negative pairs). Sums run over the whole batch:
        L_bg  = sum(-bg  * log(a + 1e-5))         / (sum(bg)  + 1e-5)
        L_fg  = sum(-fg  * log(a + 1e-5))         / (sum(fg)  + 1e-5)
        L_neg = sum(-neg * log(1 + 1e-5 - a))     / (sum(neg) + 1e-5)
        loss  = L_bg / 4 + L_fg / 4 + L_neg / 2
    ``counts`` (3,): the denominators' pair counts (sum(bg), sum(fg), sum(neg)) to use instead of
    this batch's; with the counts of the global batch over K processes, the K losses add up to
    the loss of the whole batch (``stage2_aff.train_aff``).
    Returns (loss, {'bg': L_bg, 'fg': L_fg, 'neg': L_neg}).
    """
    for name, t in (("bg_label", bg_label), ("fg_label", fg_label), ("neg_label", neg_label)):
        if t.shape != aff.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(aff.shape)} like aff")
    bg, fg, neg = (t.to(aff.dtype) for t in (bg_label, fg_label, neg_label))
    n_bg, n_fg, n_neg = (bg.sum(), fg.sum(), neg.sum()) if counts is None else counts.to(aff.dtype)
    pos_log = torch.log(aff + 1e-5)
    l_bg = (-bg * pos_log).sum() / (n_bg + 1e-5)
    l_fg = (-fg * pos_log).sum() / (n_fg + 1e-5)
    l_neg = (-neg * torch.log(1.0 + 1e-5 - aff)).sum() / (n_neg + 1e-5)
    loss = l_bg / 4 + l_fg / 4 + l_neg / 2
    return loss, {"bg": l_bg, "fg": l_fg, "neg": l_neg}
