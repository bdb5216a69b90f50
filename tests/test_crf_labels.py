"""tools.crf_labels: CRF artifacts -> label PNGs for stage 3 (SEG_LABELS=crf)."""
import numpy as np
import pytest

from lib.errors import UserError
from lib.io import load_label_png, save_crf
from tools.crf_labels import convert, main


def test_labels_are_the_class_ids_of_the_argmax_channel(tmp_path):
    # keys: background, class 2 (id 3), class 14 (id 15); hand-placed winners per pixel.
    probs = np.zeros((3, 2, 3), np.float32)
    probs[0] = [[0.6, 0.1, 0.2], [0.3, 0.3, 0.9]]
    probs[1] = [[0.3, 0.8, 0.1], [0.6, 0.2, 0.05]]
    probs[2] = [[0.1, 0.1, 0.7], [0.1, 0.5, 0.05]]
    save_crf(tmp_path / "crf" / "a.npz", [0, 3, 15], probs)
    main(["--crf_dir", str(tmp_path / "crf"), "--out_dir", str(tmp_path / "png")])
    assert load_label_png(tmp_path / "png" / "a.png").tolist() == [[0, 3, 15], [3, 15, 0]]


def test_rerun_keeps_finished_labels_unless_overwrite(tmp_path):
    save_crf(tmp_path / "crf" / "a.npz", [0, 1], np.stack([np.zeros((2, 2)), np.ones((2, 2))]))
    assert convert(tmp_path / "crf", tmp_path / "png") == 1
    (tmp_path / "png" / "a.png").write_bytes(b"kept")
    assert convert(tmp_path / "crf", tmp_path / "png") == 0
    assert (tmp_path / "png" / "a.png").read_bytes() == b"kept"
    assert convert(tmp_path / "crf", tmp_path / "png", overwrite=True) == 1
    assert load_label_png(tmp_path / "png" / "a.png").tolist() == [[1, 1], [1, 1]]


def test_bad_input_names_the_folder_or_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises((UserError, OSError), match="no CRF artifacts.*empty"):
        convert(tmp_path / "empty", tmp_path / "png")
    (tmp_path / "crf").mkdir()
    (tmp_path / "crf" / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.npz"):
        convert(tmp_path / "crf", tmp_path / "png")
    assert not (tmp_path / "png" / "broken.png").exists()


def test_a_temporary_file_left_by_a_killed_write_is_skipped(tmp_path, capsys):
    """A CRF write killed before its rename leaves ``.<id>.<random>.tmp.npz`` (half an archive):
    it is not an artifact, so the step converts the finished ones and succeeds on every rerun."""
    from lib.io import atomic_path

    save_crf(tmp_path / "crf" / "a.npz", [0, 1], np.stack([np.ones((2, 2)), np.zeros((2, 2))]))
    save_crf(tmp_path / "crf" / "b.npz", [0, 1], np.stack([np.zeros((2, 2)), np.ones((2, 2))]))
    data = (tmp_path / "crf" / "b.npz").read_bytes()
    tmp = atomic_path(tmp_path / "crf" / "b.npz").__enter__()  # the process dies in here
    with open(tmp, "wb") as f:
        f.write(data[: len(data) // 2])
    for _ in range(2):
        main(["--crf_dir", str(tmp_path / "crf"), "--out_dir", str(tmp_path / "png"), "--overwrite"])
        assert "wrote 2 label PNGs" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["a.png", "b.png"]
    assert load_label_png(tmp_path / "png" / "b.png").tolist() == [[1, 1], [1, 1]]
