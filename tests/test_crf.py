import numpy as np
import pytest

from lib.crf import crf_from_cam, dense_crf


def _two_region_image(h=24, w=32):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (200, 30, 30)
    img[:, w // 2:] = (20, 40, 220)
    return img


def test_zero_iterations_give_normalised_clipped_scores():
    # With no mean-field step, Q = softmax(-unary) = clip(p, 1e-5, 1) / sum: pins the unary.
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    p = rng.random((3, 6, 7)).astype(np.float32)
    p[1, 0, 0] = 0.0  # exercises the clip (no -log 0)
    q = dense_crf(img, p, n_iter=0)
    ref = np.clip(p, 1e-5, 1.0)
    ref = ref / ref.sum(0, keepdims=True)
    np.testing.assert_allclose(q, ref, rtol=1e-5, atol=1e-7)


def test_confident_input_keeps_labels_and_normalises():
    img = _two_region_image()
    h, w = img.shape[:2]
    p = np.full((3, h, w), 0.05, np.float32)
    p[1, :, : w // 2] = 0.9
    p[2, :, w // 2:] = 0.9
    q = dense_crf(img, p)
    assert q.shape == (3, h, w) and q.dtype == np.float32
    np.testing.assert_array_equal(q.argmax(0), p.argmax(0))
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
    assert q.min() >= 0


def test_crf_smooths_an_isolated_wrong_pixel():
    # A single weakly-wrong pixel inside a uniform region must be flipped by the pairwise terms:
    # shows the pairwise part is active (the test would fail for a unary-only model).
    img = _two_region_image()
    h, w = img.shape[:2]
    p = np.full((2, h, w), 0.3, np.float32)
    p[0] = 0.7
    p[:, 10, 5] = (0.4, 0.6)
    q = dense_crf(img, p)
    assert p.argmax(0)[10, 5] == 1
    assert q.argmax(0)[10, 5] == 0


def test_crf_from_cam_background_score_and_keys():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    cams = rng.random((2, 5, 6)).astype(np.float32)
    keys, probs = crf_from_cam(img, [2, 7], cams, alpha=4, n_iter=0)
    assert keys.tolist() == [0, 3, 8] and keys.dtype == np.int64
    bg = (1 - np.maximum(cams[0], cams[1])) ** 4
    stack = np.clip(np.stack([bg, cams[0], cams[1]]), 1e-5, 1)
    np.testing.assert_allclose(probs, stack / stack.sum(0), rtol=1e-4, atol=1e-7)
    # default settings (10 iterations) still give probabilities
    keys, probs = crf_from_cam(img, [2, 7], cams, alpha=2)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_crf_from_cam_alpha_orders_background():
    # Larger alpha shrinks the background score (1 - max)^alpha: bg probability must not grow.
    img = _two_region_image(12, 12)
    cams = np.full((1, 12, 12), 0.4, np.float32)
    _, p2 = crf_from_cam(img, [0], cams, alpha=2)
    _, p4 = crf_from_cam(img, [0], cams, alpha=4)
    assert (p4[0] <= p2[0] + 1e-6).all() and p4[0].mean() < p2[0].mean()


def test_crf_from_cam_background_only():
    img = _two_region_image(8, 9)
    keys, probs = crf_from_cam(img, [], np.zeros((0, 8, 9), np.float32), alpha=2)
    assert keys.tolist() == [0]
    assert probs.shape == (1, 8, 9) and probs.dtype == np.float32
    assert (probs == 1).all()


def test_bad_inputs_raise():
    img = _two_region_image(8, 9)
    with pytest.raises(ValueError):
        dense_crf(img, np.ones((2, 8, 8), np.float32))
    with pytest.raises(ValueError):
        dense_crf(img.astype(np.float32), np.ones((2, 8, 9), np.float32))
    with pytest.raises(ValueError):
        crf_from_cam(img, [1, 2], np.ones((1, 8, 9), np.float32), alpha=2)
