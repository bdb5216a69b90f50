import numpy as np
import pytest
import torch

from lib.affinity import neighbour_pairs, pair_affinity
from lib.models import build_model
from lib.random_walk import (affinity_matrix, random_walk, random_walk_labels,
                             transition_matrix)
from stage2_aff.infer_aff import rw_scores


# ---------------------------------------------------------------- straightforward numpy reference
def ref_affinity(feat, radius, beta):
    """Dense W by brute force over pixel pairs (float64)."""
    d, h, w = feat.shape
    r = radius if min(h, w) >= 2 * radius + 1 else (min(h, w) - 1) // 2
    n = h * w
    W = np.eye(n)
    for y in range(h - r + 1):
        for x in range(r - 1, w - r + 1):
            for ty in range(y, y + r):
                for tx in range(x - r + 1, x + r):
                    dy, dx = ty - y, tx - x
                    if dy * dy + dx * dx >= r * r or (dy == 0 and dx <= 0):
                        continue
                    a = np.exp(-np.abs(feat[:, y, x] - feat[:, ty, tx]).mean()) ** beta
                    W[y * w + x, ty * w + tx] = W[ty * w + tx, y * w + x] = a
    return W


def ref_walk(cams, feat, radius=5, beta=8, logt=6):
    k, h, w = cams.shape
    W = ref_affinity(feat.astype(np.float64), radius, beta)
    T = W / W.sum(0, keepdims=True)
    T = np.linalg.matrix_power(T, 2 ** logt)
    return (cams.reshape(k, -1).astype(np.float64) @ T).reshape(k, h, w)


def ref_bilinear(x, oh, ow):
    """Bilinear resize (C, h, w) -> (C, oh, ow), half-pixel centres (align_corners=False)."""
    def coords(n_in, n_out):
        src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        src = np.maximum(src, 0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0
    y0, y1, ly = coords(x.shape[1], oh)
    x0, x1, lx = coords(x.shape[2], ow)
    top = x[:, y0][:, :, x0] * (1 - lx) + x[:, y0][:, :, x1] * lx
    bot = x[:, y1][:, :, x0] * (1 - lx) + x[:, y1][:, :, x1] * lx
    return top * (1 - ly[:, None]) + bot * ly[:, None]


def ref_labels(H, W, cams, keys, feat, alpha=6):
    h, w = -(-H // 8), -(-W // 8)
    bg = (1 - cams.max(0)) ** alpha
    s = np.concatenate([bg[None], cams]).astype(np.float64)
    padded = np.zeros((s.shape[0], 8 * h, 8 * w))
    padded[:, :H, :W] = s
    pooled = padded.reshape(s.shape[0], h, 8, w, 8).mean((2, 4))
    rw = ref_walk(pooled, feat)
    up = ref_bilinear(rw, 8 * h, 8 * w)[:, :H, :W]
    lut = np.concatenate([[0], np.asarray(keys) + 1])
    return lut[up.argmax(0)]


def _features(d, h, w, seed, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, h, w, generator=g) * scale


# ---------------------------------------------------------------- matrices
def test_affinity_and_transition_matrices():
    f = _features(5, 11, 12, 0)
    Wd = affinity_matrix(f, beta=8, sparse=False)
    Ws = affinity_matrix(f, beta=8, sparse=True)
    np.testing.assert_allclose(Wd.numpy(), ref_affinity(f.double().numpy(), 5, 8), rtol=1e-5, atol=1e-7)
    assert Ws.is_sparse
    torch.testing.assert_close(Ws.to_dense(), Wd)
    assert torch.equal(Wd, Wd.t()) and bool((Wd.diagonal() == 1).all())
    Td, Ts = transition_matrix(Wd), transition_matrix(Ws)
    torch.testing.assert_close(Ts.to_dense(), Td)
    torch.testing.assert_close(Td.sum(0), torch.ones(Td.shape[0]))


# ---------------------------------------------------------------- walk
@pytest.mark.parametrize("h,w", [(11, 12), (9, 14)])  # radius 5, and 4 (9 < 2*5+1)
def test_random_walk_matches_numpy_reference(h, w):
    f = _features(6, h, w, 1)
    cams = torch.rand(3, h, w, generator=torch.Generator().manual_seed(2))
    ref = ref_walk(cams.numpy(), f.numpy())
    for method in ("dense", "sparse"):
        rw = random_walk(cams, f, method=method)
        assert rw.shape == (3, h, w)
        np.testing.assert_allclose(rw.numpy(), ref, rtol=1e-3, atol=1e-6 * np.abs(ref).max())
        np.testing.assert_array_equal(rw.argmax(0).numpy(), ref.argmax(0))


def test_sparse_equals_dense_and_pair_input():
    f = _features(8, 13, 15, 3)
    cams = torch.rand(4, 13, 15, generator=torch.Generator().manual_seed(4))
    dense = random_walk(cams, f, method="dense")
    sparse = random_walk(cams, f, method="sparse")
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-6 * float(dense.abs().max()))
    # pair affinities instead of features give the same walk
    torch.testing.assert_close(random_walk(cams, pair_affinity(f), method="auto"), sparse)


def test_walk_propagates_within_a_region_not_across():
    # Two feature regions (left/right); a CAM seed in one pixel of the left region must spread
    # over the left region and stay (much) weaker on the right.
    h, w = 11, 12
    f = torch.zeros(4, h, w)
    f[:, :, 6:] = 3.0  # affinity across the border = exp(-3)^8 ~ 4e-11
    cams = torch.zeros(2, h, w)
    cams[0, :, 6:] = 1.0     # background score on the right
    cams[1, 5, 2] = 1.0      # a single foreground seed on the left
    rw = random_walk(cams, f)
    lab = rw.argmax(0)
    # Pixels in no pair (e.g. (0, 0..3): outside the "from" columns, unreachable as "to") are
    # isolated, as in PSA: the walk leaves their scores unchanged.
    fr, to = neighbour_pairs(h, w, 5)
    linked = torch.zeros(h * w, dtype=torch.bool)
    linked[fr] = True
    linked[to] = True
    linked = linked.view(h, w)
    assert not bool(linked[0, 0]) and bool(linked[5, 2])
    torch.testing.assert_close(rw[:, ~linked], cams[:, ~linked])
    assert bool((lab[:, :6][linked[:, :6]] == 1).all()) and bool((lab[:, 6:] == 0).all())


def test_bad_method_and_shapes():
    f = _features(3, 11, 11, 0)
    with pytest.raises(ValueError):
        random_walk(torch.rand(2, 11, 11), f, method="magic")
    with pytest.raises(ValueError):
        random_walk(torch.rand(2, 10, 11), f)
    with pytest.raises(ValueError):
        random_walk(torch.rand(2, 11, 11), torch.rand(5))


# ---------------------------------------------------------------- full label chain
def test_random_walk_labels_matches_reference_chain():
    H, W = 85, 99                      # padded to 88x104 -> 11x13 feature map, radius 5
    rng = np.random.default_rng(5)
    cams = np.zeros((2, H, W), np.float32)
    cams[0, 10:50, 10:45] = rng.uniform(0.3, 1.0, (40, 35))
    cams[1, 40:80, 55:95] = rng.uniform(0.3, 1.0, (40, 40))
    keys = [4, 14]
    # features: one code per region (on the 11x13 grid) plus noise, so that the walk keeps
    # the objects apart from the background
    f = _features(6, 11, 13, 6, scale=0.05)
    f[:2, 1:6, 1:6] += 2.0
    f[2:4, 5:10, 7:12] += 2.0
    ref = ref_labels(H, W, cams, keys, f.numpy())
    for method in ("dense", "sparse"):
        lab = random_walk_labels((H, W), cams, keys, f, method=method)
        assert lab.shape == (H, W) and lab.dtype == np.uint8
        np.testing.assert_array_equal(lab, ref)
    assert set(np.unique(ref)) <= {0, 5, 15} and len(np.unique(ref)) > 1


def test_random_walk_labels_background_only_and_size_check():
    f = _features(4, 11, 13, 0)
    lab = random_walk_labels((85, 99), np.zeros((0, 85, 99), np.float32), [], f)
    assert lab.shape == (85, 99) and (lab == 0).all()
    with pytest.raises(ValueError):
        random_walk_labels((85, 99), np.zeros((1, 85, 99), np.float32), [0], _features(4, 12, 13, 0))


@pytest.mark.parametrize("upscale", [1, 2])
def test_infer_aff_walk_keeps_constant_cams_and_the_image_size(upscale):
    """T is column-stochastic, so a CAM that is the same everywhere stays the same after the walk,
    at any grid (``--upscale``); the scores come back at the image's own size, odd ones too."""
    torch.manual_seed(0)
    model = build_model("aff", width=0.0625).eval()
    cams = np.full((1, 40, 48), 0.6, np.float32)     # a multiple of 8: no zero padding
    s = rw_scores(model, torch.randn(3, 40, 48), cams, alpha=2, beta=8, logt=3, upscale=upscale)
    assert s.shape == (2, 40, 48)
    assert torch.allclose(s[1], torch.full_like(s[1], 0.6), atol=1e-5)
    assert torch.allclose(s[0], torch.full_like(s[0], 0.16), atol=1e-5)   # (1 - 0.6)^2
    odd = rw_scores(model, torch.randn(3, 37, 45), cams[:, :37, :45], alpha=2, beta=8, logt=3,
                    upscale=upscale)
    assert odd.shape == (2, 37, 45)


def test_infer_aff_upscale_walks_a_finer_grid():
    torch.manual_seed(0)
    model = build_model("aff", width=0.0625).eval()
    image = torch.randn(3, 40, 48)
    cams = np.zeros((1, 40, 48), np.float32)
    cams[0, 10:30, 12:30] = 1.0
    s1 = rw_scores(model, image, cams, alpha=2, beta=8, logt=3, upscale=1)
    s2 = rw_scores(model, image, cams, alpha=2, beta=8, logt=3, upscale=2)
    assert s1.shape == s2.shape == (2, 40, 48)
    assert not torch.allclose(s1, s2, atol=1e-3)
