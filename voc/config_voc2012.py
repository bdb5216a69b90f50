"""Stage 3 (DeepLab-v1, ResNet-38) on PASCAL VOC 2012 + SBD: the original values (docs/METHOD.md section 6).

Load with ``lib.config.load_config``; override from the command line with ``--set KEY=VALUE``
or the shorthand flags of ``stage3_seg.train_seg`` / ``stage3_seg.infer_seg``.
Relative paths are relative to the directory the scripts run from (the repo root).
"""

CONFIG = dict(
    DATASET="voc",
    DATA_ROOT="data/VOCdevkit/VOC2012",
    TRAIN_SPLIT="train_aug",        # 10,582 images; labels come from --pseudo_gt
    VAL_SPLIT="val",
    NUM_CLASSES=21,                 # 20 classes + background
    BACKBONE_WIDTH=1.0,
    IMAGENET_WEIGHTS="pretrained/ilsvrc-cls_rna-a1_cls1000_ep-0001.params",
    # training
    CROP=448,
    RANDOM_SCALE=(0.5, 1.5),
    FLIP=0.5,
    HSV=(10, 10, 10),
    LR=0.001,
    MOMENTUM=0.9,
    WEIGHT_DECAY=5e-4,
    POWER=0.9,
    BATCH=10,                       # global batch, split over the torchrun processes
    ITERATIONS=20000,
    BN_MOMENTUM=0.0003,
    WORKERS=4,
    GPUS=1,                         # processes the run is planned for (torchrun --nproc_per_node)
    FSL_WEIGHT=0.5,
    FSL_MU=2.5,
    FSL_SIGMA=5.0,
    # test
    TEST_SCALES=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
    TEST_FLIP=True,
    TEST_CRF=True,
)
