"""Stage 1: train_cam (single process, loss variants, resume, torchrun/gloo), infer_cam (CAM and
CRF artifacts, skip/overwrite, CRF pool), multiscale_cam / normalise_cams and stage1_loss.

Everything runs on a 6-image synthetic VOC set (64 px) with a width-1/16 ResNet-38 on the CPU.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lib import dist
from lib.datasets import get_layout
from lib.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from lib.io import load_cam, load_cls_labels, load_crf
from lib.losses.feature_similarity import feature_similarity_loss_dense
from lib.models import build_model
from lib.weights import load_checkpoint
from stage1_cam.infer_cam import multiscale_cam, normalise_cams
from lib.errors import run_main
from stage1_cam.train_cam import main as train_cam_main
from stage1_cam.train_cam import parse_args, stage1_loss

from helpers import make_tiny_voc, run  # noqa: E402  (tests/helpers.py)

ROOT = Path(__file__).resolve().parents[1]
WIDTH = "0.0625"
NUM_CLASSES = 5  # the synthetic set's classes
CPU = ["--threads", "1", "--num_workers", "0", "--device", "cpu"]


def train_args(voc: Path, session: Path, steps: int, *extra: str) -> list[str]:
    return ["-m", "stage1_cam.train_cam", "--data_root", str(voc), *CPU, "--weights", "none",
            "--backbone_width", WIDTH, "--crop_size", "64", "--resize_long", "64", "80",
            "--batch_size", "2", "--max_steps", str(steps), "--train_list", "train",
            "--session_name", str(session), *extra]


def fresh_state(seed: int) -> tuple[dict[str, torch.Tensor], set[str]]:
    """State dict of the CAM net train_cam builds right after seed_everything(seed), and the
    names of its trainable parameters (default frozen regime)."""
    dist.seed_everything(seed, 0)
    model = build_model("cam", num_classes=NUM_CLASSES, width=float(WIDTH))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.clone() for k, v in model.state_dict().items()}, trainable


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process torch work on one thread: with the 2 cores shared by the subprocesses (and other
    jobs), a second intra-op thread makes the tiny ops here ~100x slower from contention."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Synthetic VOC root and a 2-step stage-1 run on its train split (session tmp/cam)."""
    tmp = tmp_path_factory.mktemp("stage1")
    voc = make_tiny_voc(tmp / "voc")
    session = tmp / "cam"
    r = run(*train_args(voc, session, 2))
    return SimpleNamespace(tmp=tmp, voc=voc, session=session, train_log=r.stdout + r.stderr)


# --------------------------------------------------------------------------- train_cam


def test_train_writes_checkpoint_config_and_tensorboard(synth):
    sd = load_checkpoint(f"{synth.session}.pth")
    model = build_model("cam", num_classes=NUM_CLASSES, width=float(WIDTH))
    model.load_state_dict(sd, strict=True)  # same keys and shapes, no 'module.' prefix

    cfg = json.loads(Path(f"{synth.session}.config.json").read_text())
    assert cfg["world_size"] == 1 and cfg["max_step"] == 2 and cfg["num_images"] == 4
    assert cfg["loss_weight"] == 0.8 and cfg["fsl"] is True  # the original's defaults
    tb = Path(f"{synth.session}_tb")
    assert tb.is_dir() and any(p.name.startswith("events.out.tfevents") for p in tb.iterdir())

    state = torch.load(f"{synth.session}.state.pth", map_location="cpu", weights_only=True)
    assert state["step"] == 2 and state["optimizer"]["global_step"] == 2


def test_train_updates_exactly_the_trainable_parameters(synth):
    """build_model runs right after seed_everything(--seed): the frozen tensors (conv1a, b2*,
    every BatchNorm's affine and running statistics) must equal that fresh initialisation bit
    for bit, and every trainable parameter (fc8, f8_3, f8_4, f9, b3..b7 convs) must differ."""
    trained = load_checkpoint(f"{synth.session}.pth")
    init, trainable = fresh_state(0)
    assert set(trained) == set(init)
    changed = {k for k in init if not torch.equal(init[k], trained[k])}
    assert changed == trainable, (f"changed but frozen: {sorted(changed - trainable)}; "
                                  f"trainable but unchanged: {sorted(trainable - changed)}")
    assert "conv1a.weight" not in changed and "b2_2.conv_branch2b1.weight" not in changed
    assert {"fc8.weight", "f8_3.weight", "f8_4.weight", "f9.weight"} <= changed
    # The comparison is meaningful: another seed gives another conv1a.
    other, _ = fresh_state(1)
    assert not torch.equal(other["conv1a.weight"], trained["conv1a.weight"])


@pytest.mark.parametrize("extra", [
    pytest.param(["--loss_weight", "0", "--no-fsl"], id="gap_baseline"),
    pytest.param(["--sampling", "hfpl", "--fsl_mode", "dense"], id="hfpl_dense_fsl"),
])
def test_train_variants_complete(synth, extra):
    session = synth.tmp / f"variant_{'_'.join(extra).replace('-', '')}" / "cam"
    run(*train_args(synth.voc, session, 1, *extra))
    sd = load_checkpoint(f"{session}.pth")
    assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
    cfg = json.loads(Path(f"{session}.config.json").read_text())
    if "--no-fsl" in extra:
        assert cfg["loss_weight"] == 0.0 and cfg["fsl"] is False
    else:
        assert cfg["sampling"] == "hfpl" and cfg["fsl_mode"] == "dense"


def test_resume_with_other_settings_is_refused_and_writes_nothing(synth, capsys):
    """The 2-step state resumed as a 3-step run under another --seed is another run: exit 2, one
    line naming the state file and the differing settings, and nothing written."""
    session = synth.tmp / "resumed" / "cam"
    state = f"{synth.session}.state.pth"
    before = Path(state).read_bytes()
    argv = train_args(synth.voc, session, 3, "--resume", state, "--seed", "1")[2:]
    with pytest.raises(SystemExit) as exit_:
        run_main(train_cam_main, "train_cam", argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"train_cam: error: {state}: --resume: the state was written by a run "
                           "with other settings")
    assert "max_steps: state 2, now 3" in line and "seed: state 0, now 1" in line
    assert "Traceback" not in err
    assert not session.parent.exists() or not any(session.parent.iterdir())
    assert Path(state).read_bytes() == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_torchrun_two_processes(synth):
    session = synth.tmp / "ddp" / "cam"
    args = train_args(synth.voc, session, 2)
    run("-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args)
    ddp = load_checkpoint(f"{session}.pth")
    single = load_checkpoint(f"{synth.session}.pth")
    assert sorted(ddp) == sorted(single)
    assert all(ddp[k].shape == single[k].shape and ddp[k].dtype == single[k].dtype for k in ddp)
    init, _ = fresh_state(0)  # rank 0 builds after seed_everything(seed + rank 0)
    assert torch.equal(ddp["conv1a.weight"], init["conv1a.weight"])
    assert not torch.equal(ddp["fc8.weight"], init["fc8.weight"])
    cfg = json.loads(Path(f"{session}.config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["max_step"] == 2


# --------------------------------------------------------------------------- infer_cam


def infer_args(synth, out: Path, *extra: str, crf_workers: int = 0) -> list[str]:
    return ["-m", "stage1_cam.infer_cam", "--weights", f"{synth.session}.pth", "--infer_list", "val",
            "--data_root", str(synth.voc), "--out_cam", str(out / "cam"), "--out_crf",
            str(out / "crf"), "--backbone_width", WIDTH, "--scales", "1.0", "0.5",
            "--crf_workers", str(crf_workers), "--num_workers", "0", "--device", "cpu",
            "--threads", "1", *extra]


def artifact_paths(out: Path, ids) -> list[Path]:
    return [out / sub / f"{i}.npz" for i in ids for sub in ("cam", "crf/alpha_2.0", "crf/alpha_4.0")]


@pytest.fixture(scope="module")
def inferred(synth):
    out = synth.tmp / "infer"
    r = run(*infer_args(synth, out))
    ids = get_layout("voc", synth.voc, "val").ids()
    assert len(ids) == 2
    return SimpleNamespace(out=out, ids=ids, log=r.stdout + r.stderr)


def test_infer_cam_artifacts(synth, inferred):
    labels = load_cls_labels(synth.voc / "cls_labels.npz")
    out = inferred.out
    assert sorted(p.stem for p in (out / "cam").glob("*.npz")) == sorted(inferred.ids)
    for i in inferred.ids:
        with Image.open(synth.voc / "JPEGImages" / f"{i}.jpg") as im:
            w, h = im.size
        keys, cams = load_cam(out / "cam" / f"{i}.npz")
        np.testing.assert_array_equal(keys, np.flatnonzero(labels[i]))
        assert cams.shape == (len(keys), h, w) and len(keys) > 0
        assert cams.min() >= 0 and cams.max() <= 1
        # Per-class max normalisation: max = m / (m + 1e-5); a present class that wins no pixel
        # keeps an all-zero map, but at least one class wins somewhere.
        maxima = cams.reshape(len(keys), -1).max(1)
        assert all(m == 0 or abs(m - 1) < 1e-4 for m in maxima), maxima
        assert (np.abs(maxima - 1) < 1e-4).any()
        assert ((cams > 0).sum(0) <= 1).all()  # only the winning class survives at a pixel

        for alpha in ("2.0", "4.0"):
            ckeys, probs = load_crf(out / "crf" / f"alpha_{alpha}" / f"{i}.npz")
            np.testing.assert_array_equal(ckeys, np.concatenate([[0], keys + 1]))
            assert probs.shape == (len(keys) + 1, h, w)
            assert probs.min() >= 0 and probs.max() <= 1 + 1e-6
            np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
        # alpha 4 makes the background score (1 - max M)^alpha pointwise smaller than alpha 2
        # does, so the CRF gives the background less mass (catches swapped/ignored alphas).
        _, p2 = load_crf(out / "crf" / "alpha_2.0" / f"{i}.npz")
        _, p4 = load_crf(out / "crf" / "alpha_4.0" / f"{i}.npz")
        assert p4[0].sum() <= p2[0].sum() + 1e-3


def test_infer_cam_skips_done_and_overwrites(synth, inferred):
    paths = artifact_paths(inferred.out, inferred.ids)
    stamp = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in paths}
    r = run(*infer_args(synth, inferred.out))
    assert "2 of 2 images already done" in r.stdout + r.stderr
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in paths} == stamp

    load = {"cam": load_cam, "alpha_2.0": load_crf, "alpha_4.0": load_crf}
    before = {p: load[p.parent.name](p) for p in paths}
    r = run(*infer_args(synth, inferred.out, "--overwrite"))
    assert "0 of 2 images already done" in r.stdout + r.stderr
    # Atomic rewrite = a new file renamed onto the old name, with the same (deterministic) content.
    assert all(p.stat().st_ino != stamp[p][1] for p in paths)
    for p in paths:
        for old, new in zip(before[p], load[p.parent.name](p)):
            np.testing.assert_array_equal(old, new)


def test_infer_cam_crf_pool_matches_serial(synth, inferred):
    out = synth.tmp / "infer_pool"
    run(*infer_args(synth, out, crf_workers=2))
    for i in inferred.ids:
        k1, c1 = load_cam(inferred.out / "cam" / f"{i}.npz")
        k2, c2 = load_cam(out / "cam" / f"{i}.npz")
        np.testing.assert_array_equal(k1, k2)
        np.testing.assert_allclose(c1, c2, atol=1e-6)
        for alpha in ("2.0", "4.0"):
            k1, p1 = load_crf(inferred.out / "crf" / f"alpha_{alpha}" / f"{i}.npz")
            k2, p2 = load_crf(out / "crf" / f"alpha_{alpha}" / f"{i}.npz")
            np.testing.assert_array_equal(k1, k2)
            np.testing.assert_allclose(p1, p2, atol=1e-5)


# --------------------------------------------------------------------------- multiscale_cam


class FakeCAMNet:
    """forward_cam(x) of a stride-1 'network' whose logits depend on the pixel colours *and* on
    the absolute column, so a flipped pass gives different maps unless it is un-flipped."""

    def __init__(self, k: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.normal(size=(2, k, 3))  # colour weights (cam, cam_rv)
        self.b = rng.normal(size=(2, k)) * 3.0  # column-position weights
        self.c = rng.normal(size=(2, k))  # row-position weights
        self.calls = 0

    def maps(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x (P, 3, h, w) -> two (P, K, h, w) softmax maps, computed pixel by pixel."""
        p, _, h, w = x.shape
        out = np.zeros((2, p, self.a.shape[1], h, w))
        for m in range(2):
            for n in range(p):
                for i in range(h):
                    for j in range(w):
                        z = self.a[m] @ x[n, :, i, j] + self.b[m] * j / w + self.c[m] * i / h
                        e = np.exp(z - z.max())
                        out[m, n, :, i, j] = e / e.sum()
        return out[0], out[1]

    def forward_cam(self, x: torch.Tensor):
        self.calls += 1
        cam, cam_rv = self.maps(x.numpy().astype(np.float64))
        return torch.from_numpy(cam).float(), torch.from_numpy(cam_rv).float()


def bilinear_reference(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) -> (K, H, W), half-pixel-centre bilinear (align_corners=False), edge-clamped."""
    def taps(n_in, n_out):
        res = []
        for o in range(n_out):
            s = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(np.floor(s)), n_in - 1)
            res.append((i0, min(i0 + 1, n_in - 1), s - i0))
        return res

    out = np.zeros((m.shape[0], *size))
    for oi, (i0, i1, li) in enumerate(taps(m.shape[1], size[0])):
        for oj, (j0, j1, lj) in enumerate(taps(m.shape[2], size[1])):
            out[:, oi, oj] = ((1 - li) * ((1 - lj) * m[:, i0, j0] + lj * m[:, i0, j1])
                              + li * ((1 - lj) * m[:, i1, j0] + lj * m[:, i1, j1]))
    return out


def multiscale_reference(model: FakeCAMNet, images, label: np.ndarray, size, flip: bool):
    """docs/METHOD.md section 4.1, pass by pass: 0.5 cam + 0.5 cam_rv, times [1, y], renormalised,
    foreground, upsampled, the mirrored pass mirrored back; mean over every pass."""
    cond = np.concatenate([[1.0], label])
    acc, n = 0.0, 0
    for x in images:
        cam, cam_rv = model.maps(x.numpy().astype(np.float64))
        for p in range(x.shape[0]):
            q = (0.5 * cam[p] + 0.5 * cam_rv[p]) * cond[:, None, None]
            q = q / np.maximum(q.sum(0, keepdims=True), 1e-8)
            up = bilinear_reference(q[1:], size)
            acc = acc + (up[:, :, ::-1] if (flip and p == 1) else up)
            n += 1
    return acc / n


@pytest.mark.parametrize("flip", [True, False])
def test_multiscale_cam_matches_reference(flip):
    torch.manual_seed(0)
    model = FakeCAMNet(k=4)
    label = torch.tensor([1.0, 0.0, 1.0])  # class 1 absent
    size = (6, 8)
    images = []
    for h, w in [(6, 8), (3, 4), (9, 12)]:  # scales 1, 0.5 and 1.5 of a 6x8 image
        x = torch.randn(1, 3, h, w)
        images.append(torch.cat([x, x.flip(-1)]) if flip else x)
    got = multiscale_cam(model, images, label, size, flip=flip)
    want = multiscale_reference(model, images, label.numpy(), size, flip)
    assert got.shape == (3, 6, 8)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    assert (got[1] == 0).all()  # label conditioning removes the absent class
    if flip:
        # The un-flip matters: averaging the mirrored pass without mirroring it back differs.
        wrong = multiscale_reference(model, images, label.numpy(), size, flip=False)
        assert np.abs(wrong - want).max() > 1e-2


def test_multiscale_cam_hand_computed_pixel():
    """1x1 image: cam = [.5, .3, .2], cam_rv = [.1, .6, .3], y = [0, 1] ->
    0.5 cam + 0.5 cam_rv = [.3, .45, .25] -> x [1, 0, 1] = [.3, 0, .25] -> / .55 -> fg [0, 5/11]."""
    class Const:
        def forward_cam(self, x):
            n = x.shape[0]
            cam = torch.tensor([0.5, 0.3, 0.2]).view(1, 3, 1, 1).expand(n, 3, 1, 1)
            rv = torch.tensor([0.1, 0.6, 0.3]).view(1, 3, 1, 1).expand(n, 3, 1, 1)
            return cam, rv

    got = multiscale_cam(Const(), [torch.zeros(2, 3, 1, 1), torch.zeros(2, 3, 1, 1)],
                         torch.tensor([0.0, 1.0]), (2, 3), flip=True)
    np.testing.assert_allclose(got[:, 0, 0].numpy(), [0.0, 5 / 11], rtol=1e-6)
    assert got.shape == (2, 2, 3) and torch.allclose(got, got[:, :1, :1].expand(2, 2, 3))


def test_multiscale_cam_relu_logits_hand_computed_pixel():
    """--cam_source relu_logits: logits [.4, 2, -1], rv logits [.2, 1, 3], y = [1, 1] ->
    ReLU(0.5 l + 0.5 l_rv) = ReLU([.3, 1.5, 1]) -> fg [1.5, 1], no renormalisation; an absent
    class is zeroed and a negative logit gives 0."""
    class Const:
        def forward_cam_logits(self, x):
            n = x.shape[0]
            lg = torch.tensor([0.4, 2.0, -1.0]).view(1, 3, 1, 1).expand(n, 3, 1, 1)
            rv = torch.tensor([0.2, 1.0, 3.0]).view(1, 3, 1, 1).expand(n, 3, 1, 1)
            return lg, rv

        def forward_cam(self, x):  # must not be used for this source
            raise AssertionError("softmax path used")

    images = [torch.zeros(2, 3, 1, 1)]
    got = multiscale_cam(Const(), images, torch.tensor([1.0, 1.0]), (1, 1), flip=True,
                         source="relu_logits")
    np.testing.assert_allclose(got[:, 0, 0].numpy(), [1.5, 1.0], rtol=1e-6)
    got = multiscale_cam(Const(), images, torch.tensor([1.0, 0.0]), (1, 1), flip=True,
                         source="relu_logits")
    np.testing.assert_allclose(got[:, 0, 0].numpy(), [1.5, 0.0], rtol=1e-6)


def test_relu_logits_cam_of_the_real_network():
    """forward_cam_logits returns the logits whose softmax forward_cam returns."""
    torch.manual_seed(0)
    model = build_model("cam", num_classes=NUM_CLASSES, width=float(WIDTH)).eval()
    x = torch.randn(1, 3, 32, 32)
    logits, rv_logits = model.forward_cam_logits(x)
    cam, cam_rv = model.forward_cam(x)
    assert torch.allclose(torch.softmax(logits, 1), cam, atol=1e-6)
    assert torch.allclose(torch.softmax(rv_logits, 1), cam_rv, atol=1e-6)


def test_normalise_cams_power():
    """--cam_power g raises the normalised maps to g (1 = unchanged); the winner rule and the
    per-class max normalisation come first."""
    mean_cam = torch.tensor([[[0.2, 0.8], [0.4, 0.0]], [[0.5, 0.1], [0.0, 0.0]]])
    label = torch.tensor([1.0, 1.0])
    _, plain = normalise_cams(mean_cam, label)
    keys, sq = normalise_cams(mean_cam, label, power=2.0)
    np.testing.assert_array_equal(keys, [0, 1])
    want0 = (np.array([[0.0, 0.8], [0.4, 0.0]]) / (0.8 + 1e-5)) ** 2
    want1 = (np.array([[0.5, 0.0], [0.0, 0.0]]) / (0.5 + 1e-5)) ** 2
    np.testing.assert_allclose(sq, np.stack([want0, want1]), rtol=1e-5)
    np.testing.assert_allclose(sq, plain ** 2, rtol=1e-5)


def test_normalise_cams_hand_computed():
    m0 = [[0.2, 0.6], [0.1, 0.0]]
    m1 = [[0.0, 0.0], [0.0, 0.0]]
    m2 = [[0.4, 0.3], [0.0, 0.0]]
    mean_cam = torch.tensor([m0, m1, m2])
    # Winners: (0,0) class 2 (.4), (0,1) class 0 (.6), (1,0) class 0 (.1), (1,1) all 0.
    want0 = np.array([[0.0, 0.6], [0.1, 0.0]]) / (0.6 + 1e-5)
    want2 = np.array([[0.4, 0.0], [0.0, 0.0]]) / (0.4 + 1e-5)

    keys, cams = normalise_cams(mean_cam, torch.tensor([1.0, 0.0, 1.0]))
    assert keys.dtype.kind == "i" and cams.dtype == np.float32
    np.testing.assert_array_equal(keys, [0, 2])
    np.testing.assert_allclose(cams, np.stack([want0, want2]), rtol=1e-6)

    # A present class that wins no pixel keeps an all-zero map (no division blow-up).
    keys, cams = normalise_cams(mean_cam, torch.tensor([1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(keys, [0, 1, 2])
    np.testing.assert_allclose(cams, np.stack([want0, np.zeros((2, 2)), want2]), rtol=1e-6)

    keys, cams = normalise_cams(mean_cam, torch.zeros(3))
    assert keys.shape == (0,) and cams.shape == (0, 2, 2)


# --------------------------------------------------------------------------- stage1_loss


def _loss_setup(*flags):
    args = parse_args(["--data_root", "unused", *flags])
    torch.manual_seed(0)
    model = build_model("cam", num_classes=NUM_CLASSES, width=float(WIDTH))
    img = torch.randn(2, 3, 64, 64)
    label = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0]])
    return args, model, img, label


def test_stage1_loss_gradient_flow():
    args, model, img, label = _loss_setup()
    model.train()
    loss, parts = stage1_loss(model, img, label, args, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.dim() == 0
    assert {"gap", "is", "rv", "cls", "er", "ecr", "fsl", "total"} <= set(parts)
    assert all(np.isfinite(v) for v in parts.values())
    loss.backward()
    for name in ("fc8", "f9", "f8_3", "f8_4", "b7"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
    for name in ("conv1a", "b2", "b2_1", "b2_2"):  # frozen: no gradient at all
        assert all(p.grad is None and not p.requires_grad for p in getattr(model, name).parameters())
    assert all(m.weight.grad is None for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_stage1_loss_fsl_term():
    """Total = cls + ER + ECR + 0.5 L_fs, where L_fs is the dense loss on the crop resized to
    the CAM size (align_corners=True, as the original) and de-normalised (docs/METHOD.md section 3); --no-fsl
    drops exactly that term."""
    args, model, img, label = _loss_setup()
    model.eval()  # dropout off, so both evaluations see the same maps
    loss, parts = stage1_loss(model, img, label, args, torch.Generator().manual_seed(0))
    args_nofsl = parse_args(["--data_root", "unused", "--no-fsl"])
    loss0, parts0 = stage1_loss(model, img, label, args_nofsl, torch.Generator().manual_seed(0))
    assert "fsl" not in parts0 and torch.isfinite(loss0)
    assert parts0["total"] == pytest.approx(parts0["cls"] + parts0["er"] + parts0["ecr"], rel=1e-5)

    with torch.no_grad():
        cam = model(img).cam
        x = F.interpolate(img, size=cam.shape[-2:], mode="bilinear", align_corners=True)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        fsl = feature_similarity_loss_dense((x * std + mean).clamp(0, 1), cam).item()
    assert parts["fsl"] == pytest.approx(fsl, rel=1e-3, abs=1e-7)
    assert float(loss.detach() - loss0.detach()) == pytest.approx(0.5 * fsl, rel=1e-3, abs=1e-6)
    assert parts["total"] == pytest.approx(
        parts["cls"] + parts["er"] + parts["ecr"] + 0.5 * parts["fsl"], rel=1e-5)


def test_stage1_loss_view2_scale():
    """The second view is the crop downscaled by --view2_scale (0.3 by default, SEAM's)."""
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return self.net(x)

    for flags, side in (((), 19), (("--view2_scale", "0.5"), 32)):
        args, model, img, label = _loss_setup("--no-fsl", *flags)
        seen.clear()
        stage1_loss(Recording(model.eval()), img, label, args, torch.Generator().manual_seed(0))
        assert seen == [(64, 64), (side, side)]


def test_loss_weight_warmup_schedule():
    from argparse import Namespace

    from stage1_cam.train_cam import loss_weight_at

    off = Namespace(loss_weight=0.8, loss_weight_warmup=0)
    assert [loss_weight_at(s, off) for s in (0, 5, 100)] == [0.8, 0.8, 0.8]
    ramp = Namespace(loss_weight=0.8, loss_weight_warmup=10)
    assert [loss_weight_at(s, ramp) for s in (0, 5, 10, 50)] == pytest.approx([0.0, 0.4, 0.8, 0.8])
