"""Label PNGs from stage-1 CRF artifacts, so stage 3 can train on the CRF maps.

Each ``<id>.npz`` in ``--crf_dir`` (keys (K+1,), probs (K+1, H, W); see ``lib/io.py``) becomes
``<id>.png`` in ``--out_dir``: label = ``keys[argmax_c probs_c]`` (0 background, k+1 class k).
The pipeline runs this when ``SEG_LABELS=crf`` (the CPU demo's choice: at 96 px the random walk
runs on a 12x12 grid and its labels are worse than the alpha-4 CRF maps it starts from). Existing
PNGs are kept unless ``--overwrite``; each is written atomically. Hidden names (``.<id>.*.tmp.npz``:
the temporary file of a CRF write that was killed) are not artifacts and are skipped.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from lib.errors import UserError, check_writable_dir, run_main
from lib.io import crf_to_label, list_artifacts, load_crf, save_label_png


def convert(crf_dir: Path, out_dir: Path, overwrite: bool = False) -> int:
    """Write the label PNGs; returns how many were written (skipped ones are not counted)."""
    if not crf_dir.is_dir():
        raise UserError(f"{crf_dir}: --crf_dir is not a directory")
    files = list_artifacts(crf_dir, ".npz")  # not the temporary files a killed writer leaves
    if not files:
        raise UserError(f"{crf_dir}: no CRF artifacts (*.npz); the folder is empty")
    check_writable_dir(out_dir)
    written = 0
    for f in tqdm(files, desc="crf_labels"):
        out = out_dir / f"{f.stem}.png"
        if out.exists() and not overwrite:
            continue
        save_label_png(out, crf_to_label(*load_crf(f)))
        written += 1
    return written


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--crf_dir", required=True, help="folder of CRF .npz artifacts (crf/alpha_4.0)")
    p.add_argument("--out_dir", required=True, help="folder for the label PNGs")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    n = convert(Path(args.crf_dir), Path(args.out_dir), args.overwrite)
    print(f"crf_labels: wrote {n} label PNGs to {args.out_dir}")


if __name__ == "__main__":
    run_main(main, "crf_labels")
