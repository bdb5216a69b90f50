"""Tools around the three stages, one folder per purpose.

At the top, the everyday tools a user runs on a finished experiment: ``evaluate`` (mIoU and
contour F of a folder of label maps), ``visualize`` (overlay PNGs), ``collect_results`` (the
results table of an EXPDIR) and ``crf_labels`` (CRF label maps as stage-3 training labels).

- ``tools/runner/``: the machinery the ``run_all_*.sh`` runners source (steps, markers, the lock).
- ``tools/data/``: data preparation (synthetic VOC, class labels, train_aug, COCO, MXNet weights).
- ``tools/bench/``: benchmarks, the profiler, the time budget and ``gpu_check.sh``.
- ``tools/experiments/``: experiments on the demo (the ablation, the synthetic trunk pretraining).
- ``tools/container/``: the local build-and-run check of the Dockerfile and ``pytorch.def``.

Nothing in ``lib/`` or a stage imports from here (``tests/test_layout.py``).
"""
