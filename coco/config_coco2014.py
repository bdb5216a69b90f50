"""Stage 3 (DeepLab-v1, ResNet-38) on MS-COCO 2014: the VOC structure with 200,000 iterations
and 81 outputs (80 categories + background), docs/METHOD.md section 6.

Expected layout under DATA_ROOT (written by the COCO preparation tool): images, semantic label
PNGs and the list files ImageSets/train2014.txt, ImageSets/val2014.txt (12-digit ids).
"""

import runpy
from pathlib import Path

# Same structure and values as the VOC config (docs/METHOD.md section 6), except the dataset fields and
# 10x the iterations.
_VOC = runpy.run_path(str(Path(__file__).resolve().parents[1] / "voc" / "config_voc2012.py"))

CONFIG = {
    **_VOC["CONFIG"],
    "DATASET": "coco",
    "DATA_ROOT": "data/coco",
    "TRAIN_SPLIT": "train2014",
    "VAL_SPLIT": "val2014",
    "NUM_CLASSES": 81,              # 80 categories + background
    "ITERATIONS": 200000,
}
