import numpy as np
import pytest
import torch

from lib.affinity import (affinity_label_map, extract_pair_labels,
                          neighbour_pairs, pair_affinity, search_offsets)


# ---------------------------------------------------------------- slow references (loops)
def ref_radius(h, w, r):
    return r if min(h, w) >= 2 * r + 1 else (min(h, w) - 1) // 2


def ref_offsets(r):
    out = []
    for x in range(1, r):
        out.append((0, x))
    for y in range(1, r):
        for x in range(-r + 1, r):
            if x * x + y * y < r * r:
                out.append((y, x))
    return out


def ref_pairs(h, w, radius):
    r = ref_radius(h, w, radius)
    fr, to = [], []
    for dy, dx in ref_offsets(r):
        for y in range(0, h - r + 1):
            for x in range(r - 1, w - r + 1):
                ty, tx = y + dy, x + dx
                assert 0 <= ty < h and 0 <= tx < w
                fr.append(y * w + x)
                to.append(ty * w + tx)
    return fr, to


# ---------------------------------------------------------------- pairs
def test_offsets_radius5_hand_count():
    # (0,1..4): 4; y=1: |x|<=4: 9; y=2: |x|<=4: 9; y=3: |x|<=3: 7; y=4: |x|<=2: 5
    offs = search_offsets(5)
    assert len(offs) == 34
    assert offs[:4] == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert offs[4] == (1, -4) and offs[-1] == (4, 2)


@pytest.mark.parametrize("h,w", [(7, 9), (13, 11), (3, 5), (1, 1), (2, 8), (63, 47), (11, 11),
                                 (1, 20), (20, 1), (10, 30), (56, 56), (12, 5)])
def test_neighbour_pairs_match_bruteforce(h, w):
    fr, to = neighbour_pairs(h, w, 5)
    rfr, rto = ref_pairs(h, w, 5)
    assert fr.dtype == torch.long and to.dtype == torch.long
    assert fr.tolist() == rfr
    assert to.tolist() == rto
    if fr.numel():
        assert int(fr.min()) >= 0 and int(to.max()) < h * w


def test_neighbour_pairs_geometry_and_cache():
    h, w = 56, 56  # the training crop 448 / 8
    fr, to = neighbour_pairs(h, w, 5)
    assert fr.numel() == 34 * (56 - 4) * (56 - 8)
    dy = to // w - fr // w
    dx = to % w - fr % w
    assert bool(((dy * dy + dx * dx) < 25).all()) and bool(((dy > 0) | ((dy == 0) & (dx > 0))).all())
    # each unordered pair at most once
    key = torch.minimum(fr, to) * h * w + torch.maximum(fr, to)
    assert key.unique().numel() == key.numel()
    assert neighbour_pairs(h, w, 5)[0] is fr  # cached


def test_small_maps_have_no_pairs():
    for h, w in [(1, 1), (1, 50), (2, 8), (4, 4)]:  # r' = (min-1)//2 <= 1 -> no offset
        fr, to = neighbour_pairs(h, w, 5)
        assert fr.numel() == 0 and to.numel() == 0


# ---------------------------------------------------------------- pair affinity
def test_pair_affinity_matches_loop():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 4, 12, 13, generator=g)
    aff = pair_affinity(f, 5)
    fr, to = ref_pairs(12, 13, 5)
    flat = f.reshape(2, 4, -1).numpy()
    ref = np.array([[np.exp(-np.abs(flat[n, :, a] - flat[n, :, b]).mean()) for a, b in zip(fr, to)]
                    for n in range(2)])
    assert aff.shape == (2, len(fr))
    np.testing.assert_allclose(aff.numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(pair_affinity(f[1], 5).numpy(), ref[1], rtol=1e-5)


def test_pair_affinity_is_differentiable():
    f = torch.randn(3, 11, 11, requires_grad=True)
    pair_affinity(f).sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()


# ---------------------------------------------------------------- label map
def test_affinity_label_map_hand_case():
    # keys: background 0, classes 5 and 12 (ids k+1). 1x5 map, one pixel per rule.
    la_keys = [0, 5, 12]
    ha_keys = [0, 5, 12]
    la = np.array([
        # p0: la says 5, ha says 5        -> 5
        # p1: la says bg, ha says 12      -> 255 (la background = uncertain)
        # p2: la says 12, ha says bg      -> 0 (ha background overrides)
        # p3: la says bg, ha says bg      -> 0
        # p4: padding, all zeros          -> 255
        [0.1, 0.7, 0.2, 0.6, 0.0],
        [0.8, 0.2, 0.1, 0.2, 0.0],
        [0.1, 0.1, 0.7, 0.2, 0.0],
    ], np.float32)[:, None, :]
    ha = np.array([
        [0.1, 0.2, 0.5, 0.9, 0.0],
        [0.6, 0.3, 0.2, 0.05, 0.0],
        [0.3, 0.5, 0.3, 0.05, 0.0],
    ], np.float32)[:, None, :]
    lab = affinity_label_map(la, la_keys, ha, ha_keys)
    assert lab.dtype == torch.int64
    assert lab.tolist() == [[5, 255, 0, 0, 255]]


def test_affinity_label_map_padding_threshold_uses_both_stacks():
    la = np.zeros((2, 1, 2), np.float32)
    ha = np.zeros((2, 1, 2), np.float32)
    la[1, 0, 0] = 2e-5      # tiny but above 1e-5 -> scored, la argmax = class id 3
    ha[1, 0, 0] = 2e-5      # (ha all-zero would argmax to background and give 0)
    ha[0, 0, 1] = 2e-5      # only ha has a score -> not padding; la argmax bg -> void; ha bg -> 0
    lab = affinity_label_map(la, [0, 3], ha, [0, 3])
    assert lab.tolist() == [[3, 0]]


def test_affinity_label_map_bad_shapes():
    with pytest.raises(ValueError):
        affinity_label_map(np.zeros((2, 3, 3)), [0, 1], np.zeros((2, 3, 4)), [0, 1])
    with pytest.raises(ValueError):
        affinity_label_map(np.zeros((2, 3, 3)), [0, 1, 2], np.zeros((2, 3, 3)), [0, 1])


# ---------------------------------------------------------------- pair labels
def ref_pair_labels(label, radius):
    h, w = label.shape
    fr, to = ref_pairs(h, w, radius)
    flat = label.reshape(-1)
    bg, fg, neg = [], [], []
    for a, b in zip(fr, to):
        la, lb = int(flat[a]), int(flat[b])
        valid = la != 255 and lb != 255
        bg.append(float(la == 0 and lb == 0))
        fg.append(float(la == lb and la not in (0, 255)))
        neg.append(float(la != lb and valid))
    return np.array(bg), np.array(fg), np.array(neg)


def test_extract_pair_labels_matches_loop():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 3, 7, 255]), size=(2, 12, 14), p=[0.4, 0.25, 0.2, 0.15])
    bg, fg, neg = extract_pair_labels(torch.from_numpy(labels), 5)
    assert bg.dtype == torch.float32 and bg.shape == (2, 34 * 8 * 6)
    for n in range(2):
        rbg, rfg, rneg = ref_pair_labels(labels[n], 5)
        np.testing.assert_array_equal(bg[n].numpy(), rbg)
        np.testing.assert_array_equal(fg[n].numpy(), rfg)
        np.testing.assert_array_equal(neg[n].numpy(), rneg)
    # mutually exclusive
    assert float((bg + fg + neg).max()) <= 1


def test_extract_pair_labels_hand_case():
    # 5x5, r = 2: offsets (0,1), (1,-1), (1,0), (1,1); from = rows 0..3 x cols 1..3 (12 px).
    lab = np.zeros((5, 5), np.int64)
    bg, fg, neg = extract_pair_labels(lab, 2)
    assert bg.shape == (48,) and bg.sum() == 48 and fg.sum() == 0 and neg.sum() == 0
    # one void pixel at (0, 1): pairs touching it are dropped from every set.
    # As "from": 4 pairs; as "to": from (0,0)? not a from-pixel (col 0); offset (0,1) from (0,0)
    # excluded, offsets with dy=1 cannot reach row 0 -> 4 pairs in total.
    lab[0, 1] = 255
    bg, fg, neg = extract_pair_labels(lab, 2)
    assert bg.sum() == 44 and fg.sum() == 0 and neg.sum() == 0
    # a foreground pixel at (2, 2) (interior): 8 neighbours at distance < 2, all bg -> 8 negatives
    lab[2, 2] = 4
    bg, fg, neg = extract_pair_labels(lab, 2)
    assert neg.sum() == 8 and fg.sum() == 0 and bg.sum() == 36


def test_pair_labels_of_a_crf_label_map():
    rng = np.random.default_rng(1)
    la = rng.random((3, 12, 12)).astype(np.float32)
    ha = rng.random((3, 12, 12)).astype(np.float32)
    keys = [0, 2, 9]
    lab = affinity_label_map(la, keys, ha, keys)
    got = extract_pair_labels(lab, radius=5)
    ref = ref_pair_labels(lab.numpy(), 5)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a.numpy(), b)
