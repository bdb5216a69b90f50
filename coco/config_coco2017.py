"""Stage 3 (DeepLab-v1, ResNet-38) on MS-COCO 2017: the VOC structure with 200,000 iterations
and 81 outputs (80 categories + background), docs/METHOD.md section 6.

Expected layout under DATA_ROOT (written by the COCO preparation tool): images, semantic label
PNGs and the list files ImageSets/train2017.txt, ImageSets/val2017.txt (12-digit ids).
"""

import runpy
from pathlib import Path

_COCO2014 = runpy.run_path(str(Path(__file__).resolve().parent / "config_coco2014.py"))

CONFIG = {**_COCO2014["CONFIG"], "TRAIN_SPLIT": "train2017", "VAL_SPLIT": "val2017"}
