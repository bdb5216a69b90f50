"""tools.experiments.ablate: the variants are valid stage-1 flags, and the table is the mean and sample std."""
from __future__ import annotations

import json
import shlex

import pytest

from stage1_cam import train_cam
from tools.experiments import ablate


@pytest.mark.parametrize("variant", sorted(ablate.VARIANTS))
def test_every_variant_is_a_valid_stage_1_command(variant):
    args = train_cam.parse_args(["--data_root", "x", *shlex.split(ablate.VARIANTS[variant][1])])
    expected = {"gap": (0.0, "avg", False), "is": (0.8, "max", False), "fsl": (0.0, "max", True),
                "icam": (0.8, "max", True), "hfpl": (0.8, "max", True)}[variant]
    assert (args.loss_weight, args.rv_pooling, args.fsl) == expected
    assert args.sampling == ("hfpl" if variant == "hfpl" else "icam")


def _result(miou: float, f: float) -> dict:
    row = {"miou": miou, "contour_f": f, "train": None}
    return {"cam": row, "crf": row, "rw": {"miou": None, "contour_f": None, "train": None},
            "final": row, "wall_time_s": {"total": 1.0}}


def test_table_is_mean_and_sample_std_over_the_finished_seeds(tmp_path):
    for seed, (m, f) in enumerate([(0.50, 0.30), (0.70, 0.40)]):
        d = ablate.run_dir(tmp_path, "gap", seed)
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(_result(m, f)))
    table = ablate.summarise(tmp_path, ["gap", "is"], [0, 1, 2])
    mean, std, n, vals = table["gap"]["cam"]["miou"]
    assert (round(mean, 6), round(std, 6), n, vals) == (60.0, round(2 ** 0.5 * 10, 6), 2, [50.0, 70.0])
    assert table["gap"]["rw"]["miou"] == [None, None, 0, []]     # a stage that did not run
    assert table["is"]["cam"]["miou"][2] == 0                      # a variant with no finished run
    md = ablate.format_markdown(table)
    assert "| GAP baseline |" in md and "60.00 ± 14.14 / 35.00 ± 7.07" in md
    assert md.splitlines()[-1].count("| - ") == 4                  # the empty variant row


def test_per_class_iou_is_the_mean_over_the_seeds_that_have_it(tmp_path):
    for seed, star in [(0, 0.10), (1, 0.30)]:
        ev = ablate.run_dir(tmp_path, "icam", seed) / "eval"
        ev.mkdir(parents=True)
        (ev / "cam_val.json").write_text(json.dumps({"per_class_iou": {"background": 0.9, "star": star}}))
    (ablate.run_dir(tmp_path, "icam", 1) / "eval" / "final_val.json").write_text(
        json.dumps({"per_class_iou": {"background": 0.5, "star": 0.25}}))
    means = ablate.per_class_means(tmp_path, ["gap", "icam"], [0, 1, 2])
    assert "gap" not in means                                        # no run of that variant
    assert means["icam"]["cam"] == pytest.approx({"background": 90.0, "star": 20.0})
    assert means["icam"]["final"] == pytest.approx({"background": 50.0, "star": 25.0})  # one seed
    assert set(means["icam"]) == {"cam", "final"}
    md = ablate.format_per_class(means).splitlines()
    assert md[0] == "| stage-1 variant | artifact | background | star |"
    assert md[2] == "| ICAM (IS + FSL, default) | CAM (stage 1) | 90.0 | 20.0 |"
    assert md[3] == "| ICAM (IS + FSL, default) | DeepLab-v1 (stage 3) | 50.0 | 25.0 |"
