"""lib.inference: sharding, skipping finished outputs, strict checkpoint loading, the one-image
loader and the progress lines; and the shared [0, keys+1] lookup of the inference scripts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lib.checkpoint import save_checkpoint
from lib.crf import cam_bg_fg_scores
from lib.errors import UserError
from lib.inference import InferenceRun, load_inference_weights, pending_ids
from lib.io import channel_class_ids, scores_to_label


class _Tiny(torch.nn.Module):
    def __init__(self, classes: int = 3, width: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 1)
        self.bn = torch.nn.BatchNorm2d(width)
        self.fc8 = torch.nn.Conv2d(width, classes, 1, bias=False)


def _run(rank: int = 0, world: int = 1) -> InferenceRun:
    run = InferenceRun("infer_test", "cpu")
    run.rank, run.world = rank, world  # a rank of a torchrun world, without a process group
    return run


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [0, 1, 5, 12])
def test_shards_cover_the_list_once(tmp_path, world, n, capsys):
    ids = [f"im{i:02d}" for i in range(n)]
    shards = [_run(r, world).select(ids, lambda i: [tmp_path / f"{i}.png"]) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == ids and len(flat) == len(set(flat))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1  # balanced


def test_select_skips_images_whose_outputs_all_exist(tmp_path, capsys):
    ids = ["a", "b", "c", "d"]

    def outputs(i):
        return [tmp_path / "cam" / f"{i}.npz", tmp_path / "crf" / f"{i}.npz"]

    for i in ("a", "c"):
        for p in outputs(i):
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(b"x")
    (tmp_path / "cam" / "b.npz").write_bytes(b"x")  # b is half done: it is redone
    assert _run().select(ids, outputs) == ["b", "d"]
    assert "infer_test: 2 of 4 images already done" in capsys.readouterr().out
    assert _run().select(ids, outputs, overwrite=True) == ids
    assert pending_ids(ids, outputs) == ["b", "d"]
    # rank 1 of 2 takes b and d, both pending
    assert _run(1, 2).select(ids, outputs) == ["b", "d"]


def test_a_temporary_file_left_by_a_killed_write_is_not_an_output(tmp_path, capsys):
    """atomic_path's temporary name (what SIGKILL mid-write leaves) never marks an image done."""
    from lib.io import atomic_path, is_temporary

    out = tmp_path / "cam"
    writer = atomic_path(out / "a.npz")
    tmp = Path(writer.__enter__())  # ... and the process dies before the rename
    tmp.write_bytes(b"PK\x03\x04 half an npz")
    assert tmp.parent == out and is_temporary(tmp) and not is_temporary(out / "a.npz")
    assert _run().select(["a", "b"], lambda i: [out / f"{i}.npz"]) == ["a", "b"]
    assert "0 of 2 images already done" in capsys.readouterr().out


def test_select_creates_the_output_folders(tmp_path, capsys):
    _run().select(["x"], lambda i: [tmp_path / "o1" / f"{i}.npz", tmp_path / "o2" / "a" / f"{i}.npz"])
    assert (tmp_path / "o1").is_dir() and (tmp_path / "o2" / "a").is_dir()


def test_strict_loading_loads_a_fitting_checkpoint(tmp_path):
    src = _Tiny()
    torch.nn.init.normal_(src.fc8.weight)
    save_checkpoint(src.state_dict(), tmp_path / "ok.pth")
    model = _run().load_model(_Tiny(), tmp_path / "ok.pth")
    assert not model.training
    assert torch.equal(model.fc8.weight, src.fc8.weight)


def test_strict_loading_errors_name_the_file(tmp_path):
    save_checkpoint(_Tiny(classes=5).state_dict(), tmp_path / "other_classes.pth")
    with pytest.raises(UserError, match=r"other_classes\.pth: does not fit.*fc8\.weight.*\(built "
                                        r"with 3 classes\)"):
        load_inference_weights(_Tiny(), tmp_path / "other_classes.pth", "built with 3 classes")
    state = _Tiny().state_dict()
    del state["bn.weight"]
    torch.save(state, tmp_path / "missing_key.pth")
    with pytest.raises(UserError, match=r"missing_key\.pth: .*missing from the checkpoint .*bn\.weight"):
        load_inference_weights(_Tiny(), tmp_path / "missing_key.pth")
    with pytest.raises(UserError, match=r"nope\.pth: --weights: checkpoint not found"):
        load_inference_weights(_Tiny(), tmp_path / "nope.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"garbage\.pth"):
        load_inference_weights(_Tiny(), tmp_path / "garbage.pth")


class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return {"id": str(i), "image_uint8": np.full((2, 2, 3), i, np.uint8), "keys": np.arange(i)}


def test_loader_yields_items_as_the_dataset_returns_them_and_progress_logs(capsys):
    run = _run()
    items = list(run.progress(run.loader(_Items(), 0), 3))
    assert [it["id"] for it in items] == ["0", "1", "2"]
    assert all(isinstance(it["image_uint8"], np.ndarray) and isinstance(it["keys"], np.ndarray)
               for it in items)  # no conversion to tensors
    np.testing.assert_array_equal(items[2]["keys"], [0, 1])
    # stderr is not a terminal here: no bar, one plain line at the end
    err = capsys.readouterr().err
    assert "infer_test: 3/3 images" in err and "it/s" not in err


def test_pool_runs_jobs_in_submission_order():
    with _run().pool(0) as pool:
        for x in (3, 1, 2):
            pool.submit(abs, -x)
        assert pool.results() == [3, 1, 2]


def test_channel_class_ids_and_scores_to_label():
    np.testing.assert_array_equal(channel_class_ids([2, 7]), [0, 3, 8])
    assert channel_class_ids(np.zeros(0, np.int64)).tolist() == [0]
    scores = np.zeros((3, 1, 4), np.float32)
    scores[0, 0, 0] = scores[1, 0, 1] = scores[2, 0, 2] = 1  # pixel 3: a tie -> first channel
    expected = [[0, 3, 8, 0]]
    np.testing.assert_array_equal(scores_to_label(scores, [2, 7]), expected)
    np.testing.assert_array_equal(scores_to_label(torch.from_numpy(scores), [2, 7]), expected)
    assert scores_to_label(scores, [2, 7]).dtype == np.uint8


def test_background_score_hand_case_and_no_class():
    cams = np.array([[[0.5, 1.0]], [[0.25, 0.0]]], np.float32)  # (2, 1, 2)
    s = cam_bg_fg_scores(cams, 2)
    np.testing.assert_allclose(s[0], [[0.25, 0.0]])
    np.testing.assert_array_equal(s[1:], cams)
    empty = cam_bg_fg_scores(np.zeros((0, 2, 3), np.float32), 6)
    assert empty.shape == (1, 2, 3) and (empty == 1).all()
