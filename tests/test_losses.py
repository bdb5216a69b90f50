"""Classification, SEAM and affinity losses vs slow loop references and hand-computed cases."""
import math
from types import SimpleNamespace

import pytest
import torch

from lib.losses.affinity import affinity_loss
from lib.losses.classification import (
    classification_loss,
    gap_loss,
    hfpl_importance_sampling_loss,
    importance_sampling_loss,
    max_pool_loss,
    probs_to_logits,
    revised_cam_loss,
    softmax_maxpool,
    with_background,
)
from lib.losses.seam import equivariant_cross_regularization_loss, equivariant_regularization_loss

D = torch.float64


# ----------------------------------------------------------------------------- references
def ref_logit(p, eps=1e-3):
    q = p * (1 - eps)
    return math.log(q + eps) - math.log(1 - q)


def ref_bce(x, t):
    """-[t log sigmoid(x) + (1-t) log sigmoid(-x)] for floats."""
    return -(t * -math.log1p(math.exp(-x)) + (1 - t) * -math.log1p(math.exp(x)))


def ref_mlsm(x, t):
    """multilabel soft margin: mean over rows of the mean over columns of ref_bce (nested lists)."""
    return sum(sum(ref_bce(a, b) for a, b in zip(xr, tr)) / len(xr) for xr, tr in zip(x, t)) / len(x)


def ref_resize(m, oh, ow):
    """Bilinear, align_corners=True, by explicit loops: (N, K, h, w) list -> (N, K, oh, ow) list."""
    h, w = len(m[0][0]), len(m[0][0][0])
    out = []
    for img in m:
        chans = []
        for ch in img:
            rows = []
            for i in range(oh):
                sy = i * (h - 1) / (oh - 1) if oh > 1 else 0.0
                y0 = min(int(math.floor(sy)), h - 1)
                y1, fy = min(y0 + 1, h - 1), sy - y0
                row = []
                for j in range(ow):
                    sx = j * (w - 1) / (ow - 1) if ow > 1 else 0.0
                    x0 = min(int(math.floor(sx)), w - 1)
                    x1, fx = min(x0 + 1, w - 1), sx - x0
                    top = ch[y0][x0] * (1 - fx) + ch[y0][x1] * fx
                    bot = ch[y1][x0] * (1 - fx) + ch[y1][x1] * fx
                    row.append(top * (1 - fy) + bot * fy)
                rows.append(row)
            chans.append(rows)
        out.append(chans)
    return out


def mean_abs(a, b):
    vals = [abs(x - y) for ia, ib in zip(a, b) for ca, cb in zip(ia, ib) for ra, rb in zip(ca, cb)
            for x, y in zip(ra, rb)]
    return sum(vals) / len(vals)


def random_labels(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, c, generator=g) < 0.4).to(D)
    y[:, 0] = 1  # at least one foreground class
    return y


def make_view(n, k, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    cam_logits = torch.randn(n, k, h, w, generator=g, dtype=D, requires_grad=True)
    rv_logits = torch.randn(n, k, h, w, generator=g, dtype=D, requires_grad=True)
    pred, cam = softmax_maxpool(cam_logits)
    return SimpleNamespace(pred=pred, cam=cam, cam_logits=cam_logits,
                           cam_rv=torch.softmax(rv_logits, 1), cam_rv_logits=rv_logits)


# ----------------------------------------------------------------------------- basics
def test_probs_to_logits_values():
    p = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=D)
    got = probs_to_logits(p)
    assert got.tolist() == pytest.approx([ref_logit(v) for v in p.tolist()], rel=1e-12)
    assert got[0].item() == pytest.approx(math.log(1e-3))
    assert got[3].item() == pytest.approx(-math.log(1e-3))
    # sigmoid(logit) = (q + eps) / (1 + eps), q = p (1 - eps)
    q = p * (1 - 1e-3)
    torch.testing.assert_close(torch.sigmoid(got), (q + 1e-3) / (1 + 1e-3))


def test_softmax_maxpool_matches_loop():
    x = torch.randn(2, 3, 4, 5, dtype=D)
    pred, probs = softmax_maxpool(x)
    xs = x.tolist()
    for n in range(2):
        for k in range(3):
            best = 0.0
            for i in range(4):
                for j in range(5):
                    z = sum(math.exp(xs[n][c][i][j]) for c in range(3))
                    p = math.exp(xs[n][k][i][j]) / z
                    assert probs[n, k, i, j].item() == pytest.approx(p, rel=1e-12)
                    best = max(best, p)
            assert pred[n, k].item() == pytest.approx(ref_logit(best), rel=1e-12)


def test_with_background_and_label_checks():
    y = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert with_background(y).tolist() == [[1, 0, 1], [1, 1, 0]]
    cam = torch.randn(2, 3, 2, 2)
    assert gap_loss(cam, y).item() == pytest.approx(gap_loss(cam, with_background(y)).item())
    with pytest.raises(ValueError, match="background column"):
        gap_loss(cam, torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="columns"):
        gap_loss(cam, torch.ones(2, 5))


# ----------------------------------------------------------------------------- pooled losses
def test_gap_loss_matches_loop():
    x = torch.randn(2, 4, 3, 3, dtype=D)
    y = random_labels(2, 3, 0)
    pooled = [[sum(v for r in x[n, k].tolist() for v in r) / 9 for k in range(1, 4)] for n in range(2)]
    assert gap_loss(x, y).item() == pytest.approx(ref_mlsm(pooled, y.tolist()), rel=1e-12)


def test_max_pool_and_revised_losses_match_loop():
    view = make_view(2, 4, 3, 3, seed=1)
    y = random_labels(2, 3, 1)
    yb = with_background(y).tolist()
    assert max_pool_loss(view.pred, y).item() == pytest.approx(ref_mlsm(view.pred.tolist(), yb), rel=1e-12)
    rv = view.cam_rv.tolist()
    rv_pred = [[ref_logit(max(v for r in rv[n][k] for v in r)) for k in range(4)] for n in range(2)]
    assert revised_cam_loss(view.cam_rv, y).item() == pytest.approx(ref_mlsm(rv_pred, yb), rel=1e-12)
    avg = revised_cam_loss(view.cam_rv, y, "avg", view.cam_rv_logits)
    assert avg.item() == pytest.approx(gap_loss(view.cam_rv_logits, y).item(), rel=1e-12)
    with pytest.raises(ValueError):
        revised_cam_loss(view.cam_rv, y, "avg")
    with pytest.raises(ValueError):
        revised_cam_loss(view.cam_rv, y, "median")


# ----------------------------------------------------------------------------- importance sampling
def test_importance_sampling_matches_loop_with_same_draw():
    n, k, h, w, s = 2, 4, 3, 4, 7
    probs = torch.softmax(torch.randn(n, k, h, w, dtype=D), 1)
    y = random_labels(n, k - 1, 2)
    got = importance_sampling_loss(probs, y, num_samples=s, generator=torch.Generator().manual_seed(5))
    # Reference: the same multinomial draw (one row per image and channel, with replacement),
    # then a loop over images, samples and foreground classes.
    idx = torch.multinomial(probs.reshape(n * k, h * w).float(), s, replacement=True,
                            generator=torch.Generator().manual_seed(5)).view(n, k, s)
    flat = probs.reshape(n, k, h * w).tolist()
    total, count = 0.0, 0
    for b in range(n):
        for j in range(s):
            for c in range(1, k):
                z = ref_logit(flat[b][c][idx[b, c, j].item()])
                total += ref_bce(z, y[b, c - 1].item())
                count += 1
    assert got.item() == pytest.approx(total / count, rel=1e-12)


def test_importance_sampling_converges_to_expectation():
    # E over i ~ p_c / sum p_c of l(logit(p_c(i)), y_c), computed exactly, vs many samples.
    n, k = 2, 3
    probs = torch.softmax(2 * torch.randn(n, k, 4, 4, dtype=D), 1)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    flat = probs.reshape(n, k, 16)
    expected = 0.0
    for b in range(n):
        for c in range(1, k):
            pc = flat[b, c] / flat[b, c].sum()
            losses = torch.tensor([ref_bce(ref_logit(v), y[b, c - 1].item()) for v in flat[b, c].tolist()], dtype=D)
            expected += (pc * losses).sum().item()
    expected /= n * (k - 1)
    got = importance_sampling_loss(probs, y, num_samples=40000, generator=torch.Generator().manual_seed(0))
    assert got.item() == pytest.approx(expected, rel=0.02)


def test_importance_sampling_gradients_and_determinism():
    logits = torch.randn(2, 4, 5, 5, dtype=D, requires_grad=True)
    probs = torch.softmax(logits, 1)
    probs.retain_grad()
    y = random_labels(2, 3, 3)
    a = importance_sampling_loss(probs, y, 3, torch.Generator().manual_seed(1))
    b = importance_sampling_loss(probs, y, 3, torch.Generator().manual_seed(1))
    c = importance_sampling_loss(probs, y, 3, torch.Generator().manual_seed(2))
    assert a.item() == b.item() and a.item() != c.item()
    a.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # Only sampled foreground pixels receive gradient on the probability maps.
    idx = torch.multinomial(probs.detach().reshape(8, 25).float(), 3, replacement=True,
                            generator=torch.Generator().manual_seed(1)).view(2, 4, 3)
    mask = torch.zeros(2, 4, 25, dtype=torch.bool)
    mask.scatter_(2, idx, True)
    mask[:, 0] = False
    g = probs.grad.reshape(2, 4, 25)
    assert (g[~mask] == 0).all() and (g[mask] != 0).all()


def test_hfpl_importance_sampling():
    n, k = 2, 3
    logits = torch.randn(n, k, 4, 4, dtype=D, requires_grad=True)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    q = torch.sigmoid(logits.detach()[:, 1:].reshape(n, k - 1, 16))
    expected = 0.0
    for b in range(n):
        for c in range(k - 1):
            pc = q[b, c] / q[b, c].sum()
            losses = torch.tensor([ref_bce(ref_logit(v), y[b, c].item()) for v in q[b, c].tolist()], dtype=D)
            expected += (pc * losses).sum().item()
    expected /= n * (k - 1)
    got = hfpl_importance_sampling_loss(logits, y, 40000, torch.Generator().manual_seed(0))
    assert got.item() == pytest.approx(expected, rel=0.02)
    got.backward()
    assert logits.grad[:, 1:].abs().sum() > 0 and (logits.grad[:, 0] == 0).all()


# ----------------------------------------------------------------------------- total classification
def test_classification_loss_combination():
    v1, v2 = make_view(2, 4, 6, 6, 10), make_view(2, 4, 3, 3, 11)
    y = random_labels(2, 3, 4)
    total, parts = classification_loss(v1, v2, y, 0.8, num_samples=5, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    is_ = importance_sampling_loss(v1.cam, y, 5, g) + importance_sampling_loss(v2.cam, y, 5, g)
    gap = gap_loss(v1.cam_logits, y) + gap_loss(v2.cam_logits, y)
    rv = revised_cam_loss(v1.cam_rv, y) + revised_cam_loss(v2.cam_rv, y)
    assert total.item() == pytest.approx((0.2 * gap + 0.8 * is_ + rv).item(), rel=1e-12)
    assert parts["is"].item() == pytest.approx(is_.item()) and parts["gap"].item() == pytest.approx(gap.item())
    assert parts["rv"].item() == pytest.approx(rv.item()) and parts["cls"] is total
    total.backward()
    for v in (v1, v2):
        assert v.cam_logits.grad.abs().sum() > 0 and v.cam_rv_logits.grad.abs().sum() > 0

    t_max, _ = classification_loss(v1, v2, y, 0.0, pooling="max")
    want = max_pool_loss(v1.pred, y) + max_pool_loss(v2.pred, y) + rv
    assert t_max.item() == pytest.approx(want.item(), rel=1e-12)


class _NoCamLogits(SimpleNamespace):
    @property
    def cam_logits(self):
        raise AssertionError("GAP term must not be computed when loss_weight == 1")


def test_classification_loss_edge_weights():
    v1, v2 = make_view(1, 3, 4, 4, 20), make_view(1, 3, 2, 2, 21)
    y = torch.tensor([[0.0, 1.0]], dtype=D)
    rv = (revised_cam_loss(v1.cam_rv, y) + revised_cam_loss(v2.cam_rv, y)).item()

    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    t0, p0 = classification_loss(v1, v2, y, 0.0, generator=gen)
    assert torch.equal(gen.get_state(), state)  # no sampling at w = 0
    assert p0["is"].item() == 0.0
    gap = (gap_loss(v1.cam_logits, y) + gap_loss(v2.cam_logits, y)).item()
    assert t0.item() == pytest.approx(gap + rv, rel=1e-12)

    w1 = [_NoCamLogits(**{k: v for k, v in vars(v).items() if k != "cam_logits"}) for v in (v1, v2)]
    t1, p1 = classification_loss(w1[0], w1[1], y, 1.0, num_samples=4, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    is_ = (importance_sampling_loss(v1.cam, y, 4, g) + importance_sampling_loss(v2.cam, y, 4, g)).item()
    assert p1["gap"].item() == 0.0
    assert t1.item() == pytest.approx(is_ + rv, rel=1e-12)

    with pytest.raises(ValueError):
        classification_loss(v1, v2, y, 1.5)
    with pytest.raises(ValueError):
        classification_loss(v1, v2, y, pooling="sum")


# ----------------------------------------------------------------------------- SEAM losses
def test_er_and_ecr_match_loop_reference():
    g = torch.Generator().manual_seed(0)
    maps = [torch.softmax(torch.randn(2, 3, *hw, generator=g, dtype=D), 1).requires_grad_(True)
            for hw in ((7, 9), (7, 9), (3, 4), (3, 4))]
    cam1, rv1, cam2, rv2 = maps
    c1, r1 = ref_resize(cam1.tolist(), 3, 4), ref_resize(rv1.tolist(), 3, 4)
    c2, r2 = cam2.tolist(), rv2.tolist()
    er_want = mean_abs(c1, c2) + mean_abs(r1, r2) + mean_abs(c1, r1) + mean_abs(c2, r2)
    ecr_want = mean_abs(c1, r2) + mean_abs(c2, r1)
    er = equivariant_regularization_loss(cam1, rv1, cam2, rv2)
    ecr = equivariant_cross_regularization_loss(cam1, rv1, cam2, rv2)
    assert er.item() == pytest.approx(er_want, rel=1e-12)
    assert ecr.item() == pytest.approx(ecr_want, rel=1e-12)
    (er + ecr).backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)


def test_er_same_size_and_identical_views():
    cam = torch.softmax(torch.randn(1, 3, 4, 4), 1)
    rv = torch.softmax(torch.randn(1, 3, 4, 4), 1)
    # Same size: no resampling; identical views leave only the cam-vs-rv terms.
    er = equivariant_regularization_loss(cam, rv, cam, rv).item()
    assert er == pytest.approx(2 * (cam - rv).abs().mean().item(), rel=1e-6)
    assert equivariant_cross_regularization_loss(cam, cam, cam, cam).item() == 0.0
    with pytest.raises(ValueError):
        equivariant_regularization_loss(cam, rv, torch.rand(1, 4, 2, 2), torch.rand(1, 4, 2, 2))


# ----------------------------------------------------------------------------- affinity loss
def test_affinity_loss_hand_computed():
    aff = torch.tensor([[0.9, 0.5, 0.2, 0.7]], dtype=D, requires_grad=True)
    bg = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=D)
    fg = torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=D)
    neg = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=D)
    loss, parts = affinity_loss(aff, bg, fg, neg)
    l_bg = -math.log(0.9 + 1e-5) / (1 + 1e-5)
    l_fg = -math.log(0.5 + 1e-5) / (1 + 1e-5)
    l_neg = (-math.log(1 + 1e-5 - 0.2) - math.log(1 + 1e-5 - 0.7)) / (2 + 1e-5)
    assert parts["bg"].item() == pytest.approx(l_bg, rel=1e-12)
    assert parts["fg"].item() == pytest.approx(l_fg, rel=1e-12)
    assert parts["neg"].item() == pytest.approx(l_neg, rel=1e-12)
    assert loss.item() == pytest.approx(l_bg / 4 + l_fg / 4 + l_neg / 2, rel=1e-12)
    loss.backward()
    assert aff.grad[0, 0] < 0 and aff.grad[0, 2] > 0  # pull positives up, negatives down


def test_affinity_loss_batch_sums_and_empty_sets():
    g = torch.Generator().manual_seed(0)
    aff = torch.rand(3, 10, generator=g, dtype=D)
    lab = torch.randint(0, 3, (3, 10), generator=g)
    bg, fg, neg = ((lab == i).to(D) for i in range(3))
    bg[0] = 0  # an image without background pairs still counts through the batch sums
    loss, parts = affinity_loss(aff, bg, fg, neg)
    a, b, f, ng = aff.tolist(), bg.tolist(), fg.tolist(), neg.tolist()
    pairs = [(i, j) for i in range(3) for j in range(10)]
    want_bg = sum(-b[i][j] * math.log(a[i][j] + 1e-5) for i, j in pairs) / (sum(map(sum, b)) + 1e-5)
    want_neg = sum(-ng[i][j] * math.log(1 + 1e-5 - a[i][j]) for i, j in pairs) / (sum(map(sum, ng)) + 1e-5)
    assert parts["bg"].item() == pytest.approx(want_bg, rel=1e-12)
    assert parts["neg"].item() == pytest.approx(want_neg, rel=1e-12)
    zero, _ = affinity_loss(aff, torch.zeros_like(aff), torch.zeros_like(aff), torch.zeros_like(aff))
    assert zero.item() == 0.0
    with pytest.raises(ValueError, match="fg_label"):
        affinity_loss(aff, bg, fg[:, :5], neg)
