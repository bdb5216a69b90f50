"""Backbones: the wide ResNet-38 trunk shared by all ICAM networks."""
from lib.backbones.resnet38d import BottleneckBlock, ResBlock, ResNet38d, resnet38d, scale_ch

__all__ = ["ResNet38d", "resnet38d", "scale_ch", "ResBlock", "BottleneckBlock"]
