"""Benchmarks that print tables (never pass/fail tests): ``bench_pipeline`` (every stage per
precision mode), ``bench_fsl``, ``bench_crf``, ``bench_random_walk``, ``bench_evaluate``,
``bench_loader``, ``profile_step`` (where a training step spends its time), ``time_budget`` (a
full run's time from the measurements), ``gpu_goals`` and ``gpu_check.sh`` (the one-shot check of
a GPU machine)."""
