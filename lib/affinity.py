"""AffinityNet pixel pairs, pair affinities and pair labels (docs/METHOD.md section 5, after PSA).

Pairs live on the stride-8 feature map of size (h, w), pixels flattened row-major
(index = y * w + x). For radius r the *search offsets* (dy, dx) are, in this order,

    (0, x) for 1 <= x < r, then (y, x) for 1 <= y < r, -r < x < r with x^2 + y^2 < r^2

(a half disc: every unordered neighbour pair at distance < r appears exactly once; r = 5 gives
34 offsets). The "from" pixels are rows [0, h-r+1) x columns [r-1, w-r+1) (so that every
``from + offset`` stays inside the map) and the pair list is offset-major:
pair p = o * n_from + f joins from-pixel f with from-pixel f moved by offset o. This is the
flattening of PSA's (n_offsets, n_from) affinity / label arrays, so pairs, affinities and
labels all share one order.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = [
    "search_offsets",
    "effective_radius",
    "neighbour_pairs",
    "pair_affinity",
    "affinity_label_map",
    "extract_pair_labels",
]

VOID = 255


def search_offsets(radius: int) -> list[tuple[int, int]]:
    """The (dy, dx) search offsets of radius ``radius`` in PSA's order (see module docstring)."""
    offsets = [(0, x) for x in range(1, radius)]
    offsets += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius)
                if x * x + y * y < radius * radius]
    return offsets


def effective_radius(h: int, w: int, radius: int = 5) -> int:
    """Radius actually used on an (h, w) map.

    docs/METHOD.md section 5.2: a map smaller than 2r+1 (i.e. min(h, w) < 2r+1) uses
    r' = (min(h, w) - 1) // 2.
    Then min(h, w) >= 2r'+1, which is more than what the pair layout needs (h >= r',
    w >= 2r'-1), so no index can leave the map for any size. r' <= 1 means no pair at all
    (no offset exists), e.g. every 1xN or 2xN map.
    """
    if radius < 0 or h < 1 or w < 1:
        raise ValueError(f"effective_radius: bad map {h}x{w} / radius {radius}")
    m = min(h, w)
    if m < 2 * radius + 1:
        radius = (m - 1) // 2
    return radius


@functools.lru_cache(maxsize=64)
def _pairs_cached(h: int, w: int, radius: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    r = effective_radius(h, w, radius)
    offsets = search_offsets(r)
    if not offsets:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone()
    ys = torch.arange(0, h - r + 1, dtype=torch.long)
    xs = torch.arange(r - 1, w - r + 1, dtype=torch.long)
    base = (ys[:, None] * w + xs[None, :]).reshape(-1)                      # (n_from,)
    shift = torch.tensor([dy * w + dx for dy, dx in offsets], dtype=torch.long)  # (n_off,)
    to_idx = (shift[:, None] + base[None, :]).reshape(-1)                    # offset-major
    from_idx = base.repeat(len(offsets))
    return from_idx.to(device), to_idx.to(device)


def neighbour_pairs(h: int, w: int, radius: int = 5, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs of the (h, w) map within ``radius`` (module docstring).

    Returns:
        (from_idx, to_idx): LongTensors (P,) on ``device``, P = n_offsets * n_from, indexing the
        row-major flattened map. Cached per (h, w, radius, device): treat them as read-only.
    """
    return _pairs_cached(int(h), int(w), int(radius), str(torch.device(device)))


def pair_affinity(features: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """AffinityNet affinities a = exp(-mean_c |f_from - f_to|) over :func:`neighbour_pairs`.

    Args:
        features: (D, h, w) or (N, D, h, w) feature map (differentiable).
    Returns:
        (P,) or (N, P) affinities in (0, 1], in the pair order of :func:`neighbour_pairs`.
    """
    squeeze = features.dim() == 3
    if squeeze:
        features = features.unsqueeze(0)
    if features.dim() != 4:
        raise ValueError(f"pair_affinity: features must be (D,h,w) or (N,D,h,w), got {tuple(features.shape)}")
    n, _, h, w = features.shape
    r = effective_radius(h, w, radius)
    # One strided window per offset (<= 34 for r = 5) instead of two (N, D, P) gathers:
    # same values as indexing with neighbour_pairs, without the gathered (N, D, P) copies.
    ch, cw = h - r + 1, w - 2 * r + 2
    src = features[:, :, 0:ch, r - 1:r - 1 + cw]
    parts = []
    for dy, dx in search_offsets(r):
        dst = features[:, :, dy:dy + ch, r - 1 + dx:r - 1 + dx + cw]
        parts.append(torch.exp(-torch.mean(torch.abs(dst - src), dim=1)).reshape(n, -1))
    aff = torch.cat(parts, 1) if parts else features.new_zeros(n, 0)
    return aff[0] if squeeze else aff


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def affinity_label_map(la, la_keys, ha, ha_keys, eps: float = 1e-5) -> torch.Tensor:
    """Pixel labels for AffinityNet training from the pooled la/ha CRF maps (docs/METHOD.md section 5.3).

    Args:
        la: (K1, h, w) la (alpha 2) CRF probabilities after the joint crop/flip (padding = 0)
            and the 8x8 average pooling; channel i is class id ``la_keys[i]`` (0 = background).
        la_keys: (K1,) class ids of ``la``'s channels.
        ha, ha_keys: the same for the ha (alpha 4) maps.
    Returns:
        (h, w) int64 label: class id of argmax(la); 255 where argmax(la) is background;
        0 where argmax(ha) is background (this overrides the previous rule); 255 where every
        la and ha score is < 1e-5 (padding outside the crop).
    """
    la, ha = _as_tensor(la), _as_tensor(ha)
    la_keys = _as_tensor(la_keys).to(device=la.device, dtype=torch.long).reshape(-1)
    ha_keys = _as_tensor(ha_keys).to(device=ha.device, dtype=torch.long).reshape(-1)
    if la.dim() != 3 or ha.dim() != 3 or la.shape[1:] != ha.shape[1:]:
        raise ValueError(f"affinity_label_map: la {tuple(la.shape)} and ha {tuple(ha.shape)} must be "
                         "(K, h, w) with the same h, w")
    if la.shape[0] != la_keys.numel() or ha.shape[0] != ha_keys.numel() or la.shape[0] == 0:
        raise ValueError(f"affinity_label_map: {la.shape[0]}/{ha.shape[0]} channels vs "
                         f"{la_keys.numel()}/{ha_keys.numel()} keys")
    no_score = torch.maximum(la.amax(0), ha.amax(0)) < eps
    label_la = la_keys[la.argmax(0)]
    label_ha = ha_keys[ha.argmax(0)]
    label = label_la.clone()
    label[label_la == 0] = VOID
    label[label_ha == 0] = 0
    label[no_score] = VOID
    return label


def extract_pair_labels(label, radius: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair labels over :func:`neighbour_pairs` of a label map (0 bg, >0 class, 255 void).

    Args:
        label: (h, w) or (N, h, w) integer label map.
    Returns:
        (bg_pos, fg_pos, neg), float32 (P,) or (N, P):
        bg_pos = both ends 0; fg_pos = same label, both valid (!= 255), not background;
        neg = different labels, both valid.
    """
    label = _as_tensor(label).long()
    if label.dim() not in (2, 3):
        raise ValueError(f"extract_pair_labels: label must be (h,w) or (N,h,w), got {tuple(label.shape)}")
    h, w = label.shape[-2:]
    ind_from, ind_to = neighbour_pairs(h, w, radius, label.device)
    flat = label.flatten(-2)
    lf, lt = flat[..., ind_from], flat[..., ind_to]
    valid = (lf != VOID) & (lt != VOID)
    same = lf == lt
    bg_pos = same & (lf == 0)
    fg_pos = same & (lf != 0) & valid
    neg = ~same & valid
    return bg_pos.float(), fg_pos.float(), neg.float()
