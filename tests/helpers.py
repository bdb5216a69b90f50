"""Shared by the stage tests: run a repo module in a subprocess, build the tiny synthetic set."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# One thread per subprocess: the tests run on 2 shared cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run(*args, timeout=180):
    """``python ARGS`` from the repo root; fails the test with the output tails on a non-zero exit."""
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{args[:3]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def make_tiny_voc(root: Path, cls_labels: bool = True) -> Path:
    """4 train + 2 val synthetic images at 64 px (seed 0) in VOC layout, with cls_labels.npz."""
    run("-m", "tools.data.make_synthetic_voc", "--out", str(root), "--num_train", "4", "--num_val", "2",
        "--size", "64", "--seed", "0")
    if cls_labels:
        run("-m", "tools.data.make_cls_labels", "--data_root", str(root))
    return root
