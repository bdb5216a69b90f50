"""Losses of the three ICAM stages (docs/METHOD.md sections 3, 5, 6)."""
from lib.losses.affinity import affinity_loss
from lib.losses.classification import (
    classification_loss,
    gap_loss,
    hfpl_importance_sampling_loss,
    importance_sampling_loss,
    max_pool_loss,
    probs_to_logits,
    revised_cam_loss,
    softmax_maxpool,
    with_background,
)
from lib.losses.feature_similarity import (
    default_block_size,
    feature_similarity_loss,
    feature_similarity_loss_blocked,
    feature_similarity_loss_dense,
    fsl_image,
)
from lib.losses.seam import equivariant_cross_regularization_loss, equivariant_regularization_loss

__all__ = [
    "affinity_loss",
    "classification_loss",
    "default_block_size",
    "equivariant_cross_regularization_loss",
    "equivariant_regularization_loss",
    "feature_similarity_loss",
    "feature_similarity_loss_blocked",
    "feature_similarity_loss_dense",
    "fsl_image",
    "gap_loss",
    "hfpl_importance_sampling_loss",
    "importance_sampling_loss",
    "max_pool_loss",
    "probs_to_logits",
    "revised_cam_loss",
    "softmax_maxpool",
    "with_background",
]
