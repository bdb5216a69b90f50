"""Data preparation: ``make_synthetic_voc`` (the demo's VOC-format set), ``make_cls_labels``
(image-level labels from the annotations), ``make_train_aug`` (VOC's train_aug list),
``process_coco`` (COCO to VOC-style label PNGs) and ``convert_mxnet_params`` (the ImageNet
ResNet-38 weights without MXNet)."""
