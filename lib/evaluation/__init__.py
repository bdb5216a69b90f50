"""Evaluation toolkit (docs/METHOD.md section 7): mIoU from confusion matrices and the contour F-score.

``evaluate_dir`` is the dataset driver (also behind ``python -m tools.evaluate``);
``lib.evaluation.reference`` holds a slow loop-based reference used by tests and the benchmark.
"""
from lib.evaluation.contour import (contour_counts, contour_fscore_from_counts, dilate, disk_kernel,
                                    seg2bmap, tolerance_radius)
from lib.evaluation.evaluate import (EvalCounts, accumulate_counts, evaluate_dir, format_results,
                                     format_sweep, resolve_class_names, save_results_json)
from lib.evaluation.miou import (SWEEP_THRESHOLDS, confusion_matrix, iou_from_confusion,
                                 miou_from_confusion, sweep_confusions)

__all__ = [
    "confusion_matrix", "iou_from_confusion", "miou_from_confusion", "sweep_confusions", "SWEEP_THRESHOLDS",
    "seg2bmap", "tolerance_radius", "disk_kernel", "dilate", "contour_counts", "contour_fscore_from_counts",
    "EvalCounts", "accumulate_counts", "evaluate_dir", "resolve_class_names", "format_results",
    "format_sweep", "save_results_json",
]
