"""Feature similarity loss: dense formula vs hand-computed / loop references, blocked vs dense."""
import math

import pytest
import torch
import torch.nn.functional as F

from lib.losses.feature_similarity import (
    default_block_size,
    feature_similarity_loss,
    feature_similarity_loss_blocked,
    feature_similarity_loss_dense,
)


def loop_reference(image01, pred, mu=2.5, sigma=5.0):
    """Straight transcription of the docs/METHOD.md section 3.4 sum over ordered pixel pairs."""
    n, k, h, w = pred.shape
    x = image01.double().tolist()
    y = pred.double().tolist()
    total = 0.0
    for b in range(n):
        for i in range(h * w):
            ri, ci = divmod(i, w)
            for j in range(h * w):
                rj, cj = divmod(j, w)
                dx = sum(abs(x[b][c][ri][ci] - x[b][c][rj][cj]) for c in range(3)) / 3
                dx = min(max(dx, 0.0), 1.0)
                kx = math.tanh(mu + math.log((dx + 1e-5) / (1 - dx + 1e-5)))
                dy = sum((y[b][c][ri][ci] - y[b][c][rj][cj]) ** 2 for c in range(k))
                dp = math.exp(-0.5 * ((ri - rj) ** 2 + (ci - cj) ** 2) / sigma**2) / (2 * math.pi * sigma**2)
                total += dp * dy * kx
    return -total / (n * h * w)


def smooth_inputs(n, k, h, w, seed, dtype=torch.float64):
    """Image-like inputs: blurred colour blobs in [0, 1] and a blurred-logit softmax CAM."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(n, 3, h // 4 + 1, w // 4 + 1, generator=g, dtype=dtype)
    img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=True)
    img = (img + 0.03 * torch.randn(n, 3, h, w, generator=g, dtype=dtype)).clamp(0, 1)
    logits = F.avg_pool2d(4 * torch.randn(n, k, h, w, generator=g, dtype=dtype), 5, 1, 2) * 3
    return img, torch.softmax(logits, 1)


def test_two_pixel_hand_computed():
    image = torch.tensor([[0.0, 0.3], [0.0, 0.6], [0.0, 0.9]], dtype=torch.float64).view(1, 3, 1, 2)
    pred = torch.tensor([[1.0, 0.25], [0.0, 0.75]], dtype=torch.float64).view(1, 2, 1, 2)
    dx = (0.3 + 0.6 + 0.9) / 3
    kx = math.tanh(2.5 + math.log((dx + 1e-5) / (1 - dx + 1e-5)))
    dy = 0.75**2 + 0.75**2
    dp = math.exp(-0.5 * (1 / 5) ** 2) / (2 * math.pi * 25)
    expected = -(2 * dp * dy * kx) / 2  # two ordered pairs, N*H*W = 2
    assert expected < 0  # different colours (kx > 0) push apart: the loss rewards dy
    for mode in ("dense", "blocked"):
        got = feature_similarity_loss(image, pred, mode=mode)
        assert got.item() == pytest.approx(expected, rel=1e-10), mode


def test_dense_matches_loop_reference():
    image, pred = smooth_inputs(2, 3, 4, 5, seed=1)
    image[0, :, 0, 0] = 1.2  # out-of-range colour: dx must be clamped to 1
    want = loop_reference(image, pred, mu=2.0, sigma=1.5)
    got = feature_similarity_loss_dense(image, pred, mu=2.0, sigma=1.5)
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("block", [1, 7, 30])  # single pixels / blocks not dividing HW / one block
def test_blocked_matches_loop_reference(block):
    image, pred = smooth_inputs(2, 3, 5, 6, seed=2)
    image[1, :, 4, 5] = -0.3  # out-of-range colour: dx must be clamped
    want = loop_reference(image, pred, mu=2.0, sigma=2.0)
    got = feature_similarity_loss_blocked(image, pred, mu=2.0, sigma=2.0, block_size=block)
    assert got.item() == pytest.approx(want, rel=1e-12)


def _value_and_grad(fn, image, pred0):
    pred = pred0.clone().requires_grad_(True)
    loss = fn(image, pred)
    loss.backward()
    return loss.item(), pred.grad


@pytest.mark.parametrize("block", [None, 113, 1920])  # default (181) / ragged tiles / dense in one tile
def test_blocked_equals_dense_float64_beyond_the_old_window(block):
    # 30x64: pairs up to 63 columns apart, beyond the 51-wide window the FSL used to truncate to;
    # the blocked sum must equal the original dense one (loss and gradient) to rounding.
    image, pred0 = smooth_inputs(1, 5, 30, 64, seed=3)
    v_dense, g_dense = _value_and_grad(feature_similarity_loss_dense, image, pred0)
    v_block, g_block = _value_and_grad(
        lambda i, p: feature_similarity_loss_blocked(i, p, block_size=block), image, pred0)
    assert v_block == pytest.approx(v_dense, rel=1e-11)
    assert (g_block - g_dense).norm() <= 1e-11 * g_dense.norm()


def test_blocked_float32_matches_dense_float64():
    image, pred0 = smooth_inputs(2, 4, 20, 24, seed=4)
    ref, g_ref = _value_and_grad(feature_similarity_loss_dense, image, pred0)
    pred = pred0.float().requires_grad_(True)
    loss = feature_similarity_loss_blocked(image.float(), pred)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    loss.backward()
    assert pred.grad.dtype == torch.float32
    torch.testing.assert_close(pred.grad.double(), g_ref, rtol=1e-5, atol=1e-9)


def test_blocked_ignores_autocast():
    # Under CPU bf16 autocast bmm would run in bfloat16; the loss keeps its float64 products.
    image, pred0 = smooth_inputs(2, 3, 12, 10, seed=7)
    image, pred0 = image.float(), pred0.float()
    plain = feature_similarity_loss_blocked(image, pred0).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = feature_similarity_loss_blocked(image, pred0).item()
    assert auto == plain


def test_default_block_size():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_block_size(8, 3136, cpu) == 181  # sqrt(2^18 / 8)
    assert default_block_size(8, 3136, cuda) == 2048  # sqrt(2^25 / 8)
    assert default_block_size(1, 100, cuda) == 100  # never more than HW
    assert default_block_size(4096, 3136, cpu) == 32  # never fewer than 32
    with pytest.raises(ValueError, match="block_size"):
        feature_similarity_loss_blocked(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), block_size=0)


def test_blocked_on_real_image(shared_dir):
    # A real VOC image at the 56x56 CAM size with a smooth random 21-class CAM whose loss nearly
    # cancels (the case that needed R >= 5 sigma when the FSL was truncated to a window).
    cv2 = pytest.importorskip("cv2")
    path = shared_dir / "data" / "voc_real" / "2007_000033.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    img = torch.from_numpy(cv2.imread(str(path))[:, :, ::-1].copy()).permute(2, 0, 1)[None]
    image = F.interpolate(img.double() / 255, size=(56, 56), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(3)
    logits = F.avg_pool2d(torch.randn(1, 21, 56, 56, dtype=torch.float64, generator=g) * 4, 7, 1, 3) * 3
    pred = torch.softmax(logits, 1)
    v_dense, g_dense = _value_and_grad(feature_similarity_loss_dense, image, pred)
    v_block, g_block = _value_and_grad(feature_similarity_loss_blocked, image, pred)
    assert v_block == pytest.approx(v_dense, rel=1e-10)
    assert (g_block - g_dense).norm() <= 1e-10 * g_dense.norm()


def test_similar_colours_attract():
    # Uniform image (kx ~ -1 everywhere): any prediction difference raises the loss above 0.
    image = torch.full((1, 3, 6, 6), 0.5, dtype=torch.float64)
    flat = torch.full((1, 2, 6, 6), 0.5, dtype=torch.float64)
    bumpy = flat.clone()
    bumpy[0, 0, 2, 3], bumpy[0, 1, 2, 3] = 0.9, 0.1
    for mode in ("dense", "blocked"):
        assert feature_similarity_loss(image, flat, mode=mode).item() == pytest.approx(0.0, abs=1e-15)
        assert feature_similarity_loss(image, bumpy, mode=mode).item() > 0


def test_gradients_only_to_prediction():
    image, pred0 = smooth_inputs(1, 3, 8, 9, seed=6)
    image = image.clone().requires_grad_(True)
    pred = pred0.clone().requires_grad_(True)
    feature_similarity_loss_blocked(image, pred).backward()
    assert image.grad is None
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_one_pixel_and_bad_shapes():
    assert feature_similarity_loss(torch.rand(2, 3, 1, 1), torch.rand(2, 4, 1, 1)).item() == 0.0
    with pytest.raises(ValueError, match="spatial size"):
        feature_similarity_loss(torch.rand(1, 3, 8, 8), torch.rand(1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        feature_similarity_loss(torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4, 4))
    with pytest.raises(ValueError, match="mode"):
        feature_similarity_loss(torch.rand(1, 3, 4, 4), torch.rand(1, 4, 4, 4), mode="sparse")


def test_bench_fsl_table(capsys):
    # The benchmark runs each case in a subprocess and reports the blocked loss next to the dense
    # one; both compute the same sum, so the reported relative difference is float32 rounding.
    from tools.bench import bench_fsl

    bench_fsl.main(["--sizes", "10", "--batch", "2", "--channels", "3", "--repeats", "1",
                    "--blocks", "0", "33"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  10x10")]
    assert [r.split("|")[1].strip() for r in rows] == ["dense", "blocked B=auto", "blocked B=33"]
    for row in rows[1:]:
        rel = float(row.rsplit("rel. diff vs dense", 1)[1])
        assert rel < 1e-5
