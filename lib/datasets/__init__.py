"""Datasets, layouts, class lists and joint image/label transforms.

``classes`` and ``layout`` are imported eagerly (no torch); ``transforms`` and ``datasets`` on
first attribute access, so tools that only need paths or class names stay light.
"""
from .classes import COCO_CLASSES, SYNTHETIC_CLASSES, VOC_CLASSES, get_class_names
from .layout import Layout, get_layout, resolve_list

_LAZY = {
    "ClassificationDataset": "datasets", "MultiScaleInferenceDataset": "datasets",
    "SegmentationDataset": "datasets", "InferenceDataset": "datasets",
    "collate_single": "datasets",
    "AffinityDataset": "affinity_dataset",
    "RandomResizeLong": "transforms", "RandomScale": "transforms",
    "RandomHorizontalFlip": "transforms", "ColorJitter": "transforms", "HSVJitter": "transforms",
    "Normalize": "transforms", "RandomCrop": "transforms", "denormalize": "transforms",
    "IMAGENET_MEAN": "transforms", "IMAGENET_STD": "transforms",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["VOC_CLASSES", "COCO_CLASSES", "SYNTHETIC_CLASSES", "get_class_names", "Layout",
           "get_layout", "resolve_list", *_LAZY]
