"""Bad input and faults at every entry point: exit status, one line ``prog: error: ...`` naming the
file (or flag / config key), no traceback unless ICAM_DEBUG, and nothing existing overwritten.

Most cases call ``run_main(main, prog, argv)`` in-process (a subprocess costs ~2 s of torch
import); a few run the real ``python -m`` entry points.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.config import RANGES, SCHEMA, load_config, validate_config
from lib.errors import (RunError, UserError, check_args, check_writable_dir, error_line, in_range,
                        run_main)
from lib.io import (check_finite_output, load_cam, load_crf, read_list, save_cam, save_crf,
                    save_label_png)

from helpers import ENV, ROOT  # noqa: E402  (tests/helpers.py)

WIDTH = "0.0625"
NUM_CLASSES = 5  # the synthetic set's foreground classes
VOC_CONFIG = ROOT / "voc" / "config_voc2012.py"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    """4 train + 2 val synthetic images of 64 px with cls_labels.npz, generated in-process."""
    from tools.data.make_cls_labels import main as make_cls_labels
    from tools.data.make_synthetic_voc import generate

    root = tmp_path_factory.mktemp("errors") / "voc"
    generate(root, 4, 2, 64, 0, False)
    make_cls_labels(["--data_root", str(root)])
    return root


def val_ids(voc: Path) -> list[str]:
    return read_list(voc / "ImageSets" / "Segmentation" / "val.txt")


def fail(capsys, main, prog: str, argv: list[str] | None = None, code: int = 2) -> str:
    """Run ``main`` under run_main; assert the exit status and a single ``prog: error:`` line."""
    with pytest.raises(SystemExit) as e:
        run_main(main, prog, argv)
    assert e.value.code == code
    err = capsys.readouterr().err
    # Progress bars and info lines may precede it; the error itself is one last line.
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ": error: " in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{prog}: error: ") and err.rstrip().endswith(lines[0]), err
    return lines[0]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def nan_weights(kind: str, path: Path, **kw) -> Path:
    """A checkpoint of the tiny ``kind`` network whose float tensors are all NaN."""
    from lib.models import build_model

    model = build_model(kind, width=float(WIDTH), **kw)
    state = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    torch.save(state, path)
    return path


def good_cam(path: Path, h: int = 64, w: int = 64) -> None:
    cams = np.zeros((1, h, w), np.float32)
    cams[0, 8:40, 8:40] = 1.0
    save_cam(path, [0], cams)


def write_npz(path: Path, **arrays) -> None:
    """Write an artifact bypassing the savers' checks (a corrupt file from elsewhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# --------------------------------------------------------------------------- the wrapper


def test_run_main_reports_one_line_and_exit_codes(capsys):
    def user(argv):
        raise UserError("data/x.png: broken\nsecond line")

    def run_err(argv):
        raise RunError("a.npz: diverged")

    def missing(argv):
        open("/nonexistent/dir/file.txt")

    assert fail(capsys, user, "prog", []) == "prog: error: data/x.png: broken second line"
    assert fail(capsys, run_err, "prog", [], code=1) == "prog: error: a.npz: diverged"
    assert fail(capsys, missing, "prog", []) == \
        "prog: error: /nonexistent/dir/file.txt: No such file or directory"


def test_icam_debug_shows_the_traceback(capsys, monkeypatch):
    def user(argv):
        raise UserError("f.txt: bad")

    monkeypatch.setenv("ICAM_DEBUG", "1")
    with pytest.raises(SystemExit) as e:
        run_main(user, "prog", [])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1] == "prog: error: f.txt: bad"


def test_error_line_unwraps_a_dataloader_worker_error():
    """torch re-raises a worker's exception with the worker traceback in its message."""
    msg = ("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent "
           "call last):\n  File \"x.py\", line 1, in f\nlib.errors.UserError: a.jpg: cannot read "
           "image (truncated)\n")
    assert error_line("p", UserError(msg)) == "p: error: a.jpg: cannot read image (truncated)"


def test_user_error_is_a_value_error():
    with pytest.raises(ValueError):
        raise UserError("x")


@pytest.mark.parametrize("value, spec, ok", [
    (0.5, "(0, 1]", True), (1, "(0, 1]", True), (0, "(0, 1]", False), (1, "[0, 1)", False),
    (0, ">= 0", True), (-1, ">= 0", False), (0, "> 0", False), (3, "< 3", False), (3, "<= 3", True),
    (math.nan, "> 0", False), (math.inf, "> 0", False), (True, ">= 0", False),
])
def test_in_range(value, spec, ok):
    assert in_range(value, spec) is ok


def test_check_args_names_the_flag():
    from argparse import Namespace

    check_args(Namespace(lr=0.1, n=None), {"lr": "> 0", "n": ">= 0", "absent": ">= 0"})
    with pytest.raises(UserError, match=r"^--lr: must be > 0, got -1.0$"):
        check_args(Namespace(lr=-1.0), {"lr": "> 0"})
    with pytest.raises(UserError, match=r"^--scales: must be > 0, got \[1.0, 0.0\]$"):
        check_args(Namespace(scales=[1.0, 0.0]), {"scales": "> 0"})


def test_check_writable_dir(tmp_path):
    assert check_writable_dir(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe file is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"file/sub: output folder is not writable"):
        check_writable_dir(tmp_path / "file" / "sub")


def test_check_files_exist_counts_the_missing(tmp_path):
    from lib.datasets.layout import check_files_exist

    (tmp_path / "a.jpg").write_bytes(b"x")
    paths = [tmp_path / f"{c}.jpg" for c in "abcde"]
    with pytest.raises(UserError) as e:
        check_files_exist(paths, "image")
    assert str(e.value) == (f"{tmp_path}/b.jpg: image does not exist (4 of 5 listed images "
                            f"missing; also {tmp_path}/c.jpg, {tmp_path}/d.jpg, ...)")


# --------------------------------------------------------------------------- artifact readers


@pytest.mark.parametrize("value, needle", [
    (math.nan, "1 non-finite values"), (math.inf, "1 non-finite values"),
    (-0.5, r"span \[-0.5, 1\], outside the allowed \[0, 1\]"),
    (1.5, r"span \[0, 1.5\], outside the allowed \[0, 1\]"),
])
def test_load_cam_and_load_crf_reject_bad_values(tmp_path, value, needle):
    x = np.zeros((2, 4, 4), np.float32)
    x[1, 0, 0] = 1.0
    x[0, 2, 3] = value
    write_npz(tmp_path / "c.npz", keys=np.array([0, 3]), cams=x)
    write_npz(tmp_path / "r.npz", keys=np.array([0, 4]), probs=x)
    with pytest.raises(UserError, match=rf"c\.npz: cams .*{needle}"):
        load_cam(tmp_path / "c.npz")
    with pytest.raises(UserError, match=rf"r\.npz: probs .*{needle}"):
        load_crf(tmp_path / "r.npz")


def test_readers_accept_the_valid_range_and_reject_bad_keys(tmp_path):
    x = np.zeros((2, 4, 4), np.float32)
    x[0, 0, 0], x[1, 1, 1] = 1.0, 1.0 + 5e-4  # float32 rounding above 1 is tolerated
    write_npz(tmp_path / "ok.npz", keys=np.array([1, 3]), cams=x)
    keys, cams = load_cam(tmp_path / "ok.npz")
    assert keys.tolist() == [1, 3] and cams.max() == pytest.approx(1.0005)
    write_npz(tmp_path / "empty.npz", keys=np.zeros(0, np.int64), cams=np.zeros((0, 4, 4), np.float32))
    assert load_cam(tmp_path / "empty.npz")[1].shape == (0, 4, 4)
    write_npz(tmp_path / "unsorted.npz", keys=np.array([3, 1]), cams=x)
    with pytest.raises(UserError, match=r"unsorted\.npz: keys \[3, 1\]"):
        load_cam(tmp_path / "unsorted.npz")
    with pytest.raises(UserError, match=r"nope\.npz: does not exist"):
        load_cam(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match=r"junk\.npz: cannot read CRF artifact: the file is text"):
        load_crf(tmp_path / "junk.npz")


def test_savers_refuse_non_finite_maps_and_write_nothing(tmp_path):
    x = np.full((1, 4, 4), 0.5, np.float32)
    x[0, 1, 1] = math.nan
    with pytest.raises(RunError, match=r"a\.npz: the network produced non-finite"):
        save_cam(tmp_path / "a.npz", [0], x)
    with pytest.raises(RunError, match=r"b\.npz: the network produced non-finite"):
        save_crf(tmp_path / "b.npz", [0], x)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RunError, match="img7"):
        check_finite_output(torch.tensor([1.0, math.inf]), "out/img7.png")
    check_finite_output(torch.zeros(3), "fine")


def test_read_list_empty_or_missing(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(UserError, match=r"empty\.txt: the image list is empty"):
        read_list(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        read_list(tmp_path / "nope.txt")


def test_read_list_refuses_a_repeated_id_naming_both_lines(tmp_path):
    # the first repeat found is reported: 'b' (lines 2 and 5), although 'a' repeats too (line 6)
    (tmp_path / "val.txt").write_text("a\nb x.png\n\nc\nJPEGImages/b.jpg\na\n")
    with pytest.raises(UserError) as e:
        read_list(tmp_path / "val.txt")
    assert str(e.value) == (f"{tmp_path}/val.txt: image id 'b' is listed twice (lines 2 and 5); "
                            f"remove the repeated line")
    (tmp_path / "ok.txt").write_text("b\na\nc\n")
    assert read_list(tmp_path / "ok.txt") == ["b", "a", "c"]  # list order kept


def test_evaluate_refuses_a_list_with_a_repeated_id(capsys, tmp_path):
    """A repeated id would be counted twice and shift the scores; one line, nothing scored."""
    from lib.evaluation import evaluate_dir
    from tools.evaluate import main

    argv = cam_eval_setup(tmp_path, 0.5)
    (tmp_path / "list.txt").write_text("a\nb\na\n")
    line = fail(capsys, main, "evaluate", argv)
    assert line == (f"evaluate: error: {tmp_path}/list.txt: image id 'a' is listed twice "
                    f"(lines 1 and 3); remove the repeated line")
    with pytest.raises(UserError, match="image id 'b' is given twice"):
        evaluate_dir(tmp_path / "pred", tmp_path / "gt", ["a", "b", "b"], 2, "cam", workers=1,
                     progress=False)


# --------------------------------------------------------------------------- unreadable files

HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body></body></html>\n"


def cut(src: Path, dst: Path, keep: int) -> Path:
    """The first ``keep`` bytes of ``src`` as ``dst`` (a write or copy that was interrupted)."""
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


def test_describe_unreadable_says_what_the_file_is(tmp_path):
    """Each kind of wrong content, with the exact phrase the one-line error carries."""
    from lib.io import describe_unreadable

    def describe(content: bytes, formats=("zip",), reason=None) -> str:
        (tmp_path / "f").write_bytes(content)
        return describe_unreadable(tmp_path / "f", formats, reason)

    assert describe(b"") == "empty file (0 bytes)"
    assert describe(b"\xef\xbb\xbf  " + HTML_PAGE) == \
        "the file is an HTML page (a saved web page or a server's error page?)"
    assert describe(b"PK\x03\x04" + bytes(96)) == \
        "truncated (100 bytes, the zip archive's end record is missing: an interrupted write or copy)"
    assert describe(b"\x89PNG\r\n\x1a\n" + bytes(12), ("png",)) == \
        "truncated (20 bytes, the PNG end chunk is missing: an interrupted write or copy)"
    assert describe(b"\x89PNG\r\n\x1a\n" + bytes(12)) == "the file is a PNG image"
    assert describe(b"\xff\xd8\xff\xe0" + bytes(8), ("png",)) == "the file is a JPEG image"
    assert describe(b"\x12\x01" + bytes(22)) == "the file is an MXNet .params file"
    assert describe(b"PK\x03\x04" + bytes(8) + b"PK\x05\x06" + bytes(18), ("zip",),
                    OSError("Bad CRC-32 for file 'keys.npy'\nmore")) == \
        "damaged (Bad CRC-32 for file 'keys.npy')"
    assert describe(b"model weights, see README\n") == "the file is text ('model weights, see README'...)"
    assert describe(bytes([0xB8, 0x9F, 0xC7, 0x5A, 0x9C, 0xB3, 0xEC, 0x89, 0x00])) == \
        "unrecognised content (first bytes b8 9f c7 5a 9c b3 ec 89)"


def test_truncated_and_foreign_artifacts_are_one_line_naming_the_file(tmp_path):
    """A truncated CAM / cls_labels .npz, a corrupt label PNG: a UserError (one line under
    run_main) naming the file and the problem, never BadZipFile or a PIL traceback."""
    from lib.io import load_cls_labels, load_label_png, save_cls_labels

    good_cam(tmp_path / "cam.npz")
    cam = cut(tmp_path / "cam.npz", tmp_path / "cam_cut.npz", 1000)
    with pytest.raises(UserError) as e:
        load_cam(cam)
    assert str(e.value) == (f"{cam}: cannot read CAM artifact: truncated (1000 bytes, the zip "
                            f"archive's end record is missing: an interrupted write or copy)")
    save_cls_labels(tmp_path / "cls.npz", ["a", "b"], np.eye(2), ["x", "y"])
    size = (tmp_path / "cls.npz").stat().st_size
    cut(tmp_path / "cls.npz", tmp_path / "cls_cut.npz", size - 10)  # half the 22-byte end record
    (tmp_path / "page.npz").write_bytes(HTML_PAGE)
    lab = np.zeros((32, 32), np.uint8)
    lab[4:20, 6:30] = 3
    save_label_png(tmp_path / "lab.png", lab)
    cut(tmp_path / "lab.png", tmp_path / "lab_cut.png", (tmp_path / "lab.png").stat().st_size // 2)
    (tmp_path / "page.png").write_bytes(HTML_PAGE)
    data = bytearray((tmp_path / "lab.png").read_bytes())
    data[16:24] = b"\xff" * 8  # width and height of the IHDR chunk: its CRC no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(data))
    for name, load, needle in [
        ("cls_cut.npz", load_cls_labels, rf"cannot read image-level labels \(\.npz\): truncated \({size - 10} bytes"),
        ("page.npz", load_cam, r"cannot read CAM artifact: the file is an HTML page"),
        ("lab_cut.png", load_label_png, r"cannot read label PNG: truncated \(\d+ bytes, the PNG end chunk is missing"),
        ("page.png", load_label_png, r"cannot read label PNG: the file is an HTML page"),
        ("crc.png", load_label_png, r"cannot read label PNG: damaged \("),
    ]:
        with pytest.raises(UserError, match=rf"^{tmp_path}/{name}: {needle}"):
            load(tmp_path / name)


def test_not_a_checkpoint_is_one_line_saying_what_it_is(tmp_path):
    """A truncated checkpoint, a saved web page or random bytes as .pth / .params (case 7b)."""
    from lib.checkpoint import CheckpointError, save_checkpoint
    from lib.mxnet_params import read_mxnet_params, write_mxnet_params
    from lib.weights import load_checkpoint

    save_checkpoint({"w": torch.zeros(64)}, tmp_path / "ck.pth")
    (tmp_path / "ck.pth.sha256").unlink()  # else the checksum mismatch is reported first
    ck = cut(tmp_path / "ck.pth", tmp_path / "ck_cut.pth", 700)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    assert str(e.value) == (f"{ck}: cannot read torch checkpoint: truncated (700 bytes, the zip "
                            f"archive's end record is missing: an interrupted write or copy)")
    rand = bytes([0xB8, 0x9F, 0xC7, 0x5A, 0x9C, 0xB3, 0xEC, 0x89]) * 64
    for suffix in (".pth", ".params"):
        (tmp_path / f"page{suffix}").write_bytes(HTML_PAGE)
        (tmp_path / f"rand{suffix}").write_bytes(rand)
    with pytest.raises(UserError) as e:
        load_checkpoint(tmp_path / "page.pth")
    assert str(e.value) == (f"{tmp_path}/page.pth: cannot read torch checkpoint: the file is an HTML "
                            f"page (a saved web page or a server's error page?)")
    with pytest.raises(UserError) as e:
        load_checkpoint(tmp_path / "rand.pth")
    assert str(e.value) == (f"{tmp_path}/rand.pth: cannot read torch checkpoint: unrecognised content "
                            f"(first bytes b8 9f c7 5a 9c b3 ec 89); neither a torch nor an MXNet "
                            f"weights file")
    with pytest.raises(UserError) as e:
        read_mxnet_params(tmp_path / "page.params")
    assert str(e.value) == (f"{tmp_path}/page.params: cannot read MXNet .params file: the file is an "
                            f"HTML page (a saved web page or a server's error page?)")
    with pytest.raises(UserError, match=r"rand\.params: malformed MXNet \.params file at byte 0: list "
                                        r"magic is 0x89ECB39C5AC79FB8, expected 0x112 \(not an MXNet "
                                        r"NDArray list file, nor a torch checkpoint\)"):
        read_mxnet_params(tmp_path / "rand.params")
    # the two frameworks' files swapped: the hint says which name each needs
    write_mxnet_params(tmp_path / "mx.pth", {"arg:conv1a_weight": np.zeros((2, 3), np.float32)})
    with pytest.raises(UserError, match=r"mx\.pth: cannot read torch checkpoint: the file is an MXNet "
                                        r"\.params file; MXNet weights are read from a file named \*\.params"):
        load_checkpoint(tmp_path / "mx.pth")
    (tmp_path / "ck.params").write_bytes((tmp_path / "ck.pth").read_bytes())
    with pytest.raises(UserError, match=r"ck\.params: cannot read MXNet \.params file: the file is a zip "
                                        r"archive \(\.npz / torch \.pth\); a torch checkpoint is read "
                                        r"from a file named \*\.pth"):
        read_mxnet_params(tmp_path / "ck.params")


@pytest.mark.parametrize("name", ["page.pth", "page.params", "rand.pth"])
def test_train_cam_weights_that_are_not_weights(capsys, voc, tmp_path, name):
    """WEIGHTS pointing at a saved web page or random bytes: exit 2, one line, before training."""
    from stage1_cam.train_cam import main

    w = tmp_path / name
    w.write_bytes(HTML_PAGE if name.startswith("page") else bytes(range(7, 200)) * 4)
    argv = train_cam_argv(voc, tmp_path / "cam")
    argv[argv.index("--weights") + 1] = str(w)
    line = fail(capsys, main, "train_cam", argv)
    what = "torch checkpoint" if name.endswith(".pth") else "MXNet .params file"
    assert line.startswith(f"train_cam: error: {w}: cannot read {what}: ")
    assert ("an HTML page" if name.startswith("page") else "neither a torch nor an MXNet") in line


def test_entry_points_name_a_truncated_cam_label_or_cls_labels(capsys, voc, tmp_path):
    """evaluate on a truncated CAM and a truncated pseudo-label PNG; infer_cam on a truncated
    cls_labels.npz and on a truncated checkpoint: one line each, naming the file."""
    from stage1_cam.infer_cam import main as infer_cam
    from tools.evaluate import main as evaluate

    argv = cam_eval_setup(tmp_path, 0.5)
    cam = tmp_path / "pred" / "b.npz"
    cut(cam, cam, 200)
    line = fail(capsys, evaluate, "evaluate", argv)
    assert line == (f"evaluate: error: {cam}: cannot read CAM artifact: truncated (200 bytes, the zip "
                    f"archive's end record is missing: an interrupted write or copy)")
    png = tmp_path / "gt" / "a.png"
    cut(png, png, 40)
    argv[argv.index("--pred_dir") + 1] = str(tmp_path / "gt")  # the GT as predictions: PNGs
    line = fail(capsys, evaluate, "evaluate", argv[:-2] + ["--type", "png"])
    assert line.startswith(f"evaluate: error: {png}: cannot read label PNG: truncated (40 bytes, ")

    cls = cut(voc / "cls_labels.npz", tmp_path / "cls_labels.npz", 300)
    weights = nan_weights("cam", tmp_path / "cam.pth", num_classes=NUM_CLASSES)
    line = fail(capsys, infer_cam, "infer_cam",
                infer_cam_argv(voc, weights, tmp_path / "out", "--cls_labels", str(cls)))
    assert line.startswith(f"infer_cam: error: {cls}: cannot read image-level labels (.npz): "
                           f"truncated (300 bytes")
    cut(weights, weights, 5000)
    line = fail(capsys, infer_cam, "infer_cam", infer_cam_argv(voc, weights, tmp_path / "out"))
    assert line.startswith(f"infer_cam: error: {weights}: cannot read torch checkpoint: truncated "
                           f"(5000 bytes")


# --------------------------------------------------------------------------- config ranges

BAD_VALUES = {  # one out-of-range value per key of lib.config.RANGES
    "NUM_CLASSES": 1, "BACKBONE_WIDTH": 0.0, "CROP": 0, "RANDOM_SCALE": (0.0, 1.0), "FLIP": 1.5,
    "HSV": (10, -1, 10), "LR": -1.0, "MOMENTUM": 1.0, "WEIGHT_DECAY": -1e-4, "POWER": -0.9,
    "BATCH": 0, "ITERATIONS": 0, "BN_MOMENTUM": 2.0, "WORKERS": -3, "GPUS": 0,
    "TEST_SCALES": (1.0, -0.5), "FSL_WEIGHT": -0.1, "FSL_MU": math.inf, "FSL_SIGMA": 0.0,
}


def test_every_numeric_key_has_a_range():
    numeric = {k for k, (spec, _) in SCHEMA.items()
               if spec in (int, float) or (isinstance(spec, tuple) and spec[0] == "tuple")}
    assert numeric == set(RANGES) == set(BAD_VALUES)


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_config_value_out_of_range_names_key_value_and_range(key):
    cfg = load_config(VOC_CONFIG)  # valid as shipped
    cfg[key] = BAD_VALUES[key]
    with pytest.raises(UserError) as e:
        validate_config(cfg, "cfg.py")
    msg = str(e.value)
    assert msg.startswith(f"cfg.py: {key}=") and "out of range" in msg and RANGES[key] in msg


@pytest.mark.parametrize("key", ["DATA_ROOT", "TRAIN_SPLIT", "VAL_SPLIT"])
def test_config_empty_strings_rejected(key):
    cfg = load_config(VOC_CONFIG)
    cfg[key] = " "
    with pytest.raises(UserError, match=f"{key} must not be empty"):
        validate_config(cfg)


@pytest.mark.parametrize("override, needle", [
    ("LR=-1", r"LR=-1.0 is out of range \(must be > 0"),
    ("WORKERS=-3", r"WORKERS=-3 is out of range \(must be >= 0"),
    ("BN_MOMENTUM=2.0", r"BN_MOMENTUM=2.0 is out of range \(must be in \(0, 1\]"),
])
def test_train_seg_rejects_invalid_overrides(capsys, tmp_path, override, needle):
    """The issue's three cases: each passed the type check before, now exit 2 naming key/value."""
    from stage3_seg.train_seg import main

    line = fail(capsys, main, "train_seg", ["--config", str(VOC_CONFIG), "--pseudo_gt",
                                             str(tmp_path), "--session_name", str(tmp_path / "s"),
                                             "--set", override])
    import re
    assert re.search(needle, line), line
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- stage 1 / 2 flags


def train_cam_argv(voc: Path, session: Path, *extra: str) -> list[str]:
    return ["--data_root", str(voc), "--threads", "1", "--num_workers", "0", "--device", "cpu",
            "--weights", "none", "--backbone_width", WIDTH, "--crop_size", "64", "--resize_long",
            "64", "80", "--batch_size", "2", "--max_steps", "1", "--train_list", "train",
            "--session_name", str(session), *extra]


@pytest.mark.parametrize("flag, value, needle", [
    ("--lr", "-1", "--lr: must be > 0, got -1.0"),
    ("--num_workers", "-3", "--num_workers: must be >= 0, got -3"),
    ("--batch_size", "0", "--batch_size: must be >= 1, got 0"),
    ("--crop_size", "0", "--crop_size: must be >= 1, got 0"),
    ("--momentum", "1.5", "--momentum: must be in [0, 1), got 1.5"),
    ("--loss_weight", "2", "--loss_weight: must be in [0, 1], got 2.0"),
    ("--num_samples", "0", "--num_samples: must be >= 1, got 0"),
    ("--resize_long", "80", "--resize_long: needs LO <= HI, got 80 64"),
])
def test_train_cam_rejects_invalid_flags(capsys, voc, tmp_path, flag, value, needle):
    from stage1_cam.train_cam import main

    argv = train_cam_argv(voc, tmp_path / "cam")
    if flag == "--resize_long":
        argv += [flag, value, "64"]
    else:
        argv += [flag, value]
    assert fail(capsys, main, "train_cam", argv) == f"train_cam: error: {needle}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag, value, needle", [
    ("--crop_size", "60", "--crop_size: 60 must be a multiple of 8"),
    ("--lr", "-1", "--lr: must be > 0"),
    ("--num_workers", "-3", "--num_workers: must be >= 0"),
])
def test_train_aff_rejects_invalid_flags(capsys, voc, tmp_path, flag, value, needle):
    from stage2_aff.train_aff import main

    argv = ["--data_root", str(voc), "--la_crf_dir", str(tmp_path), "--ha_crf_dir",
            str(tmp_path), "--session_name", str(tmp_path / "aff"), flag, value]
    assert needle in fail(capsys, main, "train_aff", argv)


def test_train_cam_missing_jpeg_fails_before_training(capsys, voc, tmp_path):
    ids = read_list(voc / "ImageSets" / "Segmentation" / "train.txt")
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([*ids, "ghost1", "ghost2"]) + "\n")
    from stage1_cam.train_cam import main

    line = fail(capsys, main, "train_cam",
                train_cam_argv(voc, tmp_path / "ck" / "cam") + ["--train_list", str(lst)])
    assert line == (f"train_cam: error: {voc}/JPEGImages/ghost1.jpg: image does not exist "
                    f"(2 of 6 listed images missing; also {voc}/JPEGImages/ghost2.jpg)")
    assert list((tmp_path / "ck").iterdir()) == []  # no checkpoint, config or log was written


def test_train_cam_unwritable_checkpoint_folder(capsys, voc, tmp_path):
    (tmp_path / "file").write_text("x")
    from stage1_cam.train_cam import main

    line = fail(capsys, main, "train_cam", train_cam_argv(voc, tmp_path / "file" / "cam"))
    assert line.startswith(f"train_cam: error: {tmp_path}/file: checkpoint folder")


def test_train_aff_missing_crf_files_named(capsys, voc, tmp_path):
    from stage2_aff.train_aff import main

    la, ha = tmp_path / "la", tmp_path / "ha"
    la.mkdir(), ha.mkdir()
    argv = ["--data_root", str(voc), "--la_crf_dir", str(la), "--ha_crf_dir", str(ha),
            "--session_name", str(tmp_path / "aff"), "--train_list", "train", "--device", "cpu",
            "--num_workers", "0", "--crop_size", "64", "--batch_size", "2"]
    line = fail(capsys, main, "train_aff", argv)
    assert f"{la}/" in line and "CRF file does not exist (4 of 4 listed CRF files missing" in line


# --------------------------------------------------------------------------- inference


def infer_cam_argv(voc: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return ["--weights", str(weights), "--infer_list", "val", "--data_root", str(voc),
            "--out_cam", str(out / "cam"), "--out_crf", str(out / "crf"), "--backbone_width",
            WIDTH, "--scales", "1.0", "--crf_workers", "0", "--num_workers", "0", "--device",
            "cpu", "--threads", "1", *extra]


def test_infer_cam_never_writes_nan_and_keeps_existing_outputs(capsys, voc, tmp_path):
    """NaN weights: exit 1 naming the image, no artifact written, an existing one untouched."""
    from stage1_cam.infer_cam import main

    weights = nan_weights("cam", tmp_path / "nan.pth", num_classes=NUM_CLASSES)
    out = tmp_path / "out"
    first = val_ids(voc)[0]
    good_cam(out / "cam" / f"{first}.npz")
    before = tree_bytes(out)
    line = fail(capsys, main, "infer_cam", infer_cam_argv(voc, weights, out, "--overwrite"), code=1)
    assert line == (f"infer_cam: error: {out}/cam/{first}.npz: the network produced non-finite "
                    f"scores (NaN/inf); nothing written (are the weights corrupt or diverged?)")
    assert tree_bytes(out) == before


def test_infer_cam_unwritable_output_fails_first(capsys, voc, tmp_path):
    from stage1_cam.infer_cam import main

    (tmp_path / "file").write_text("x")
    line = fail(capsys, main, "infer_cam",
                infer_cam_argv(voc, tmp_path / "absent.pth", tmp_path / "file"))
    # The output folder is checked before the (missing) weights are even opened.
    assert line.startswith(f"infer_cam: error: {tmp_path}/file/cam: output folder is not writable")


def test_infer_cam_truncated_jpeg_named(capsys, voc, tmp_path):
    """A truncated JPEG read in a DataLoader worker is named in one line."""
    import shutil

    from lib.models import build_model
    from stage1_cam.infer_cam import main

    root = tmp_path / "voc"
    shutil.copytree(voc, root)
    jpg = root / "JPEGImages" / f"{val_ids(voc)[0]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])
    weights = tmp_path / "w.pth"
    torch.save(build_model("cam", num_classes=NUM_CLASSES, width=float(WIDTH)).state_dict(), weights)
    argv = infer_cam_argv(root, weights, tmp_path / "out")
    argv[argv.index("--num_workers") + 1] = "1"
    line = fail(capsys, main, "infer_cam", argv)
    assert line.startswith(f"infer_cam: error: {jpg}: cannot read image")


def aff_setup(voc: Path, tmp_path: Path, nan: bool = False):
    from lib.models import build_model

    weights = tmp_path / "aff.pth"
    if nan:
        nan_weights("aff", weights)
    else:
        torch.save(build_model("aff", width=float(WIDTH)).state_dict(), weights)
    cam_dir = tmp_path / "cam"
    for i in val_ids(voc):
        good_cam(cam_dir / f"{i}.npz")
    return weights, cam_dir


def infer_aff_argv(voc, weights, cam_dir, out) -> list[str]:
    return ["--weights", str(weights), "--infer_list", "val", "--data_root", str(voc),
            "--cam_dir", str(cam_dir), "--out_rw", str(out), "--backbone_width", WIDTH,
            "--num_workers", "0", "--device", "cpu", "--threads", "1", "--overwrite"]


@pytest.mark.parametrize("corrupt, needle", [
    ("nan", "cams has 1 non-finite values"),
    ("range", r"cams values span [0, 3], outside the allowed [0, 1]"),
    ("missing", "CAM file does not exist (1 of 2 listed CAM files missing)"),
])
def test_infer_aff_rejects_bad_cam_artifacts(capsys, voc, tmp_path, corrupt, needle):
    from stage2_aff.infer_aff import main

    weights, cam_dir = aff_setup(voc, tmp_path)
    bad = cam_dir / f"{val_ids(voc)[1]}.npz"
    if corrupt == "missing":
        bad.unlink()
    else:
        x = np.zeros((1, 64, 64), np.float32)
        x[0, 3, 3] = math.nan if corrupt == "nan" else 3.0
        write_npz(bad, keys=np.array([0]), cams=x)
    out = tmp_path / "rw"
    out.mkdir()
    save_label_png(out / f"{val_ids(voc)[1]}.png", np.ones((64, 64), np.uint8))
    before = tree_bytes(out)
    line = fail(capsys, main, "infer_aff", infer_aff_argv(voc, weights, cam_dir, out))
    assert line.startswith(f"infer_aff: error: {bad}: ") and needle in line, line
    assert tree_bytes(out)[f"{val_ids(voc)[1]}.png"] == before[f"{val_ids(voc)[1]}.png"]


def test_infer_aff_nan_network_writes_nothing(capsys, voc, tmp_path):
    from stage2_aff.infer_aff import main

    weights, cam_dir = aff_setup(voc, tmp_path, nan=True)
    out = tmp_path / "rw"
    line = fail(capsys, main, "infer_aff", infer_aff_argv(voc, weights, cam_dir, out), code=1)
    first = val_ids(voc)[0]
    assert line.startswith(f"infer_aff: error: {out}/{first}.png (image {first}): the network "
                           f"produced non-finite scores")
    assert list(out.iterdir()) == []


def test_infer_seg_nan_network_and_bad_list(capsys, voc, tmp_path):
    from lib.models import build_model
    from stage3_seg.infer_seg import main

    model = build_model("deeplabv1", num_classes=NUM_CLASSES, width=float(WIDTH))
    state = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "seg.pth")
    out = tmp_path / "pred"
    base = ["--config", str(VOC_CONFIG), "--weights", str(tmp_path / "seg.pth"), "--out_pred",
            str(out), "--set", "DATASET=synthetic", "--set", f"DATA_ROOT={voc}", "--set",
            f"NUM_CLASSES={NUM_CLASSES + 1}", "--set", f"BACKBONE_WIDTH={WIDTH}", "--no-crf",
            "--scales", "1.0", "--no-flip", "--crf_workers", "0", "--device", "cpu", "--threads", "1"]
    first = val_ids(voc)[0]
    line = fail(capsys, main, "infer_seg", base, code=1)
    assert line.startswith(f"infer_seg: error: {out}/{first}.png (image {first}): the network")
    assert list(out.iterdir()) == []
    (tmp_path / "empty.txt").write_text("")
    line = fail(capsys, main, "infer_seg", base + ["--infer_list", str(tmp_path / "empty.txt")])
    assert line == f"infer_seg: error: {tmp_path}/empty.txt: the image list is empty"
    (tmp_path / "ghost.txt").write_text("ghost\n")
    line = fail(capsys, main, "infer_seg", base + ["--infer_list", str(tmp_path / "ghost.txt")])
    assert line.startswith(f"infer_seg: error: {voc}/JPEGImages/ghost.jpg: image does not exist")


# --------------------------------------------------------------------------- tools


def cam_eval_setup(tmp_path: Path, value: float):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    lab = np.zeros((8, 8), np.uint8)
    lab[2:5, 2:5] = 1
    for i in ("a", "b"):
        save_label_png(gt / f"{i}.png", lab)
        good_cam(pred / f"{i}.npz", 8, 8)
    x = np.zeros((1, 8, 8), np.float32)
    x[0, 1, 1] = value
    write_npz(pred / "b.npz", keys=np.array([0]), cams=x)
    (tmp_path / "list.txt").write_text("a\nb\n")
    return ["--pred_dir", str(pred), "--gt_dir", str(gt), "--list", str(tmp_path / "list.txt"),
            "--num_classes", "2", "--eval_workers", "1", "--no-progress", "--type", "cam"]


@pytest.mark.parametrize("value, needle", [
    (math.nan, "cams has 1 non-finite values"), (-math.inf, "cams has 1 non-finite values"),
    (7.0, "outside the allowed [0, 1]"),
])
def test_evaluate_rejects_non_finite_and_out_of_range_cams(capsys, tmp_path, value, needle):
    from tools.evaluate import main

    line = fail(capsys, main, "evaluate", cam_eval_setup(tmp_path, value))
    assert line.startswith(f"evaluate: error: {tmp_path}/pred/b.npz: ") and needle in line


def test_evaluate_unwritable_json_fails_before_evaluating(capsys, tmp_path):
    from tools.evaluate import main

    argv = cam_eval_setup(tmp_path, 0.5)
    (tmp_path / "file").write_text("x")
    line = fail(capsys, main, "evaluate", argv + ["--out_json", str(tmp_path / "file" / "r.json")])
    assert line.startswith(f"evaluate: error: {tmp_path}/file: folder of --out_json is not writable")
    (tmp_path / "empty.txt").write_text("")
    argv[argv.index("--list") + 1] = str(tmp_path / "empty.txt")
    assert fail(capsys, main, "evaluate", argv) == \
        f"evaluate: error: {tmp_path}/empty.txt: the image list is empty"


@pytest.mark.parametrize("value, needle", [
    (math.nan, "probs has 1 non-finite values"), (1.5, "outside the allowed [0, 1]")])
def test_crf_labels_rejects_bad_maps_and_keeps_existing_pngs(capsys, tmp_path, value, needle):
    from tools.crf_labels import main

    x = np.zeros((2, 8, 8), np.float32)
    x[0] = 1.0
    write_npz(tmp_path / "crf" / "a.npz", keys=np.array([0, 1]), probs=x)
    x[1, 2, 2] = value
    write_npz(tmp_path / "crf" / "b.npz", keys=np.array([0, 1]), probs=x)
    save_label_png(tmp_path / "out" / "b.png", np.full((8, 8), 2, np.uint8))
    before = (tmp_path / "out" / "b.png").read_bytes()
    line = fail(capsys, main, "crf_labels", ["--crf_dir", str(tmp_path / "crf"), "--out_dir",
                                             str(tmp_path / "out"), "--overwrite"])
    assert line.startswith(f"crf_labels: error: {tmp_path}/crf/b.npz: ") and needle in line
    assert (tmp_path / "out" / "b.png").read_bytes() == before


def test_visualize_names_truncated_jpeg_and_bad_cam(capsys, voc, tmp_path):
    import shutil

    from tools.visualize import main

    images = tmp_path / "img"
    shutil.copytree(voc / "JPEGImages", images)
    ids = val_ids(voc)
    jpg = images / f"{ids[0]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:300])
    line = fail(capsys, main, "visualize", ["--image_dir", str(images), "--ids", ids[0],
                                            "--out", str(tmp_path / "vis")])
    assert line.startswith(f"visualize: error: {jpg}: cannot read image")
    x = np.zeros((1, 64, 64), np.float32)
    x[0, 0, 0] = math.inf
    write_npz(tmp_path / "cam" / f"{ids[1]}.npz", keys=np.array([0]), cams=x)
    line = fail(capsys, main, "visualize", ["--image_dir", str(images), "--ids", ids[1],
                                            "--cam_dir", str(tmp_path / "cam"), "--out",
                                            str(tmp_path / "vis")])
    assert line.startswith(f"visualize: error: {tmp_path}/cam/{ids[1]}.npz: cams has 1 non-finite")


def test_collect_results_names_a_broken_json(capsys, tmp_path):
    from tools.collect_results import main

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "cam_val.json").write_text("{not json")
    line = fail(capsys, main, "collect_results", ["--expdir", str(tmp_path)])
    assert line.startswith(f"collect_results: error: {tmp_path}/eval/cam_val.json: not an evaluation")
    assert not (tmp_path / "results.json").exists()
    assert fail(capsys, main, "collect_results", ["--expdir", str(tmp_path / "nope")]) == \
        f"collect_results: error: {tmp_path}/nope: --expdir is not a directory"


# --------------------------------------------------------------------------- real entry points


@pytest.mark.parametrize("module, argv, code, needle", [
    ("stage1_cam.train_cam", ["--data_root", ".", "--lr", "-1"], 2,
     "train_cam: error: --lr: must be > 0, got -1.0"),
    ("stage3_seg.train_seg", ["--config", "voc/config_voc2012.py", "--pseudo_gt", ".",
                              "--session_name", "x", "--set", "BN_MOMENTUM=2.0"], 2,
     "train_seg: error: effective config (after command-line overrides): BN_MOMENTUM=2.0 is out "
     "of range"),
    ("tools.evaluate", ["--pred_dir", ".", "--gt_dir", ".", "--list", "/nonexistent/list.txt",
                        "--num_classes", "2"], 2,
     "evaluate: error: image list /nonexistent/list.txt does not exist"),
])
def test_entry_point_subprocess(module, argv, code, needle):
    r = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr
    assert len(lines) == 1 and lines[0].startswith(needle), r.stderr


def test_train_seg_refuses_channels_last_on_the_cpu(capsys, voc, tmp_path):
    """PyTorch's CPU kernels corrupt the heap in channels_last DeepLab training: exit 2 before
    the first step, nothing written."""
    from stage3_seg.train_seg import main

    out = tmp_path / "ckpts"
    line = fail(capsys, main, "train_seg", [
        "--config", str(VOC_CONFIG), "--pseudo_gt", str(voc / "SegmentationClass"),
        "--session_name", str(out / "final"), "--set", f"DATA_ROOT={voc}",
        "--set", "TRAIN_SPLIT=train", "--set", f"NUM_CLASSES={NUM_CLASSES + 1}",
        "--set", f"BACKBONE_WIDTH={WIDTH}", "--set", "BATCH=2", "--set", "CROP=32",
        "--set", "WORKERS=0", "--weights", "none", "--max_steps", "1", "--device", "cpu",
        "--channels_last"])
    assert "--channels_last" in line and "CUDA only" in line
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))
