"""Experiments on the synthetic demo: ``ablate`` (ICAM's two losses over seeds, one table) and
``pretrain_trunk`` (the synthetic-"ImageNet" ResNet-38 trunk shipped in ``pretrained/``)."""
