"""Stage 3 (DeepLab-v1, ResNet-38) on MS-COCO 2017: the VOC structure with 200,000 iterations
and 81 outputs (80 categories + background), SPEC section 6.

Expected layout under DATA_ROOT (written by the COCO preparation tool): images, semantic label
PNGs and the list files ImageSets/train2017.txt, ImageSets/val2017.txt (12-digit ids).
"""

CONFIG = dict(
    DATASET="coco",
    DATA_ROOT="data/coco",
    TRAIN_SPLIT="train2017",
    VAL_SPLIT="val2017",
    NUM_CLASSES=81,                 # 80 categories + background
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
    ITERATIONS=200000,
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
