"""tools/experiments/pretrain_trunk.py: the corpus (categories, disjoint streams, no mask), determinism,
resume, and strict loading of the pretrained trunk into the three stages' networks."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.backbones.resnet38d import ResNet38d
from lib.datasets.classes import SYNTHETIC_CLASSES
from lib.models import build_model
from lib.training import load_backbone_weights
from lib.weights import load_imagenet_weights
from tools.data import make_synthetic_voc as msv
from tools.experiments import pretrain_trunk as pt

WIDTH = 1 / 32
FIXTURE_KEYS = Path(__file__).resolve().parents[2] / "shared/fixtures/resnet38d_w16_mxnet_expected.json"


def _pretrain(out: Path, *extra: str) -> Path:
    pt.main(["--out", str(out), "--backbone_width", str(WIDTH), "--size", "32", "--batch_size", "4",
             "--max_steps", "4", "--warmup_steps", "1", "--val_images", "4", "--val_every", "2",
             "--save_every", "2", "--threads", "1", "--tblog_dir", "none", "--no-progress",
             "--fp16", *extra])
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two identical 4-step runs and one run of 2 steps resumed to 4."""
    d = tmp_path_factory.mktemp("pretrain")
    a, b = _pretrain(d / "a" / "trunk.pth"), _pretrain(d / "b" / "trunk.pth")
    c = d / "c" / "trunk.pth"
    _pretrain(c, "--stop_after", "2")
    assert not c.exists()                           # an interrupted run writes no weights
    half = d / "c" / "half.state.pth"
    shutil.copyfile(f"{c}.state.pth", half)
    _pretrain(c, "--resume", str(half))
    return a, b, c


def test_categories_hold_the_demo_classes():
    assert len(pt.CATEGORIES) >= 30
    assert len(set(pt.CATEGORY_NAMES)) == len(pt.CATEGORIES)
    assert len({s for s, _, _ in pt.CATEGORIES}) >= 6 and len({t for _, t, _ in pt.CATEGORIES}) >= 5
    for name in SYNTHETIC_CLASSES:
        assert (name, msv.CLASS_TEXTURES[name], msv.CLASS_HUES[name]) in pt.CATEGORIES


def test_samples_are_image_and_category_set_only():
    data = pt.PretrainImages(pt.TRAIN_TAG, 0, 48)
    counts = set()
    for i in range(12):
        item = data[i]
        assert len(item) == 2                       # (image, targets): no mask anywhere
        x, y = item
        assert x.shape == (3, 48, 48) and x.dtype == torch.float32
        assert y.shape == (len(pt.CATEGORIES),) and set(y.unique().tolist()) <= {0.0, 1.0}
        counts.add(int(y.sum()))
    assert counts <= {1, 2, 3} and len(counts) >= 2


def test_pretraining_never_draws_a_demo_image():
    size = 96                                       # the demo's image size
    digest = lambda a: hashlib.md5(a.tobytes()).digest()  # noqa: E731
    demo = {digest(msv.render_sample(0, i, size)[0]) for i in range(120)}
    ours = [pt.render_pretrain_sample(tag, 0, i, size)[0]
            for tag in (pt.TRAIN_TAG, pt.VAL_TAG) for i in range(60)]
    assert len(demo) == 120
    assert not demo & {digest(im) for im in ours}
    # and the training and held-out streams are disjoint from each other
    assert len({digest(im) for im in ours}) == len(ours)


def test_same_command_same_bytes(runs):
    a, b, _ = runs
    assert a.read_bytes() == b.read_bytes()
    info = json.loads(a.with_suffix(".json").read_text())
    assert info["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert info["categories"] == list(pt.CATEGORY_NAMES) and 0.0 <= info["val_acc"] <= 1.0


def test_resume_gives_the_uninterrupted_tensors(runs):
    a, _, c = runs
    sa = torch.load(a, weights_only=True)
    sc = torch.load(c, weights_only=True)
    assert sa.keys() == sc.keys()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k
    head_a = torch.load(f"{a}.state.pth", weights_only=True)["model"]["linear1000.weight"]
    head_c = torch.load(f"{c}.state.pth", weights_only=True)["model"]["linear1000.weight"]
    assert torch.equal(head_a, head_c)


def test_trunk_file_has_the_imagenet_key_layout(runs):
    state = torch.load(runs[0], weights_only=True)
    assert not any(k.startswith("linear") or k.endswith("num_batches_tracked") for k in state)
    assert all(v.dtype == torch.float16 for v in state.values())
    if FIXTURE_KEYS.is_file():                      # the converted MXNet ImageNet file's keys
        assert set(state) == set(json.loads(FIXTURE_KEYS.read_text()))
    trunk_keys = ResNet38d(width=WIDTH).state_dict()
    assert list(state) == [k for k in trunk_keys if not k.endswith("num_batches_tracked")]


@pytest.mark.parametrize("name", ["cam", "aff", "deeplabv1"])
def test_every_stage_loads_the_trunk_strictly(runs, name):
    path = runs[0]
    state = torch.load(path, weights_only=True)
    model = build_model(name, num_classes=5, width=WIDTH)
    if name == "deeplabv1":                         # stage 3 loads with load_imagenet_weights
        report = load_imagenet_weights(model, path)
        assert not report.missing and not report.unexpected
        assert sorted(report.loaded) == sorted(state)
        own = model.backbone.state_dict()
    else:                                           # stages 1 and 2 through --weights
        assert load_backbone_weights(model, str(path), "test") == str(path)
        own = model.state_dict()
    for k, v in state.items():
        assert own[k].dtype == torch.float32, k     # fp16 storage, fp32 parameters
        assert torch.equal(own[k], v.float()), k
    assert any(not np.allclose(v.float().numpy(), 0) for v in state.values())


def test_metrics_and_loss_hand_cases():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    y = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 0], [1, 0, 0, 0]])
    assert pt.set_accuracy(logits, y).tolist() == [0.0, 1.0, 0.0]   # top-2 {0,1} vs {0,2}
    assert pt.top1_hit(logits, y).tolist() == [1.0, 1.0, 0.0]
    flat = torch.zeros(1, 4)
    two = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert pt.classification_loss(flat, two, "softmax").item() == pytest.approx(np.log(4))
    assert pt.classification_loss(flat, two, "sigmoid").item() == pytest.approx(np.log(2))


@pytest.mark.parametrize("p, category_shapes", [(0.0, False), (1.0, True)])
def test_shape_distractors_sets_how_often_a_distractor_takes_a_category_shape(p, category_shapes):
    rng = np.random.default_rng(3)
    kinds = {pt._distractor(rng, 96, p).kind for _ in range(40)}
    plain = {"ellipse", "blob"}                     # the demo's own distractor shapes
    assert (kinds == plain) == (not category_shapes)
    assert (not kinds & plain) == category_shapes
