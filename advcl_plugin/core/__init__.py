"""Framework-agnostic AdvCL core: plain PyTorch, one module per idea of the paper."""

from advcl_plugin.core.attack import check_pixel_range, pgd_linf
from advcl_plugin.core.clusterfit import PseudoLabels, cluster_pseudo_labels, compute_features
from advcl_plugin.core.contrastive import MultiViewNTXentLoss, multi_view_contrastive_loss
from advcl_plugin.core.distributed import gather_with_grad
from advcl_plugin.core.frequency import (
    HighFrequencyView,
    LowFrequencyView,
    frequency_mask,
    high_frequency,
    low_frequency,
)
from advcl_plugin.core.heads import ProjectionHead, PseudoLabelHeads, pseudo_label_loss
from advcl_plugin.core.objective import AdvCLObjective, advcl_loss
from advcl_plugin.core.resnet import CifarResNet, cifar_resnet18
from advcl_plugin.core.routed_bn import (
    DEFAULT_ROUTES,
    MultiRouteBatchNorm,
    bn_route,
    convert_to_multi_bn,
    export_bn_route,
    routed_bn_layers,
)

__all__ = [
    "DEFAULT_ROUTES",
    "AdvCLObjective",
    "CifarResNet",
    "HighFrequencyView",
    "LowFrequencyView",
    "MultiRouteBatchNorm",
    "MultiViewNTXentLoss",
    "ProjectionHead",
    "PseudoLabelHeads",
    "PseudoLabels",
    "advcl_loss",
    "bn_route",
    "check_pixel_range",
    "cifar_resnet18",
    "cluster_pseudo_labels",
    "compute_features",
    "convert_to_multi_bn",
    "export_bn_route",
    "frequency_mask",
    "gather_with_grad",
    "high_frequency",
    "low_frequency",
    "multi_view_contrastive_loss",
    "pgd_linf",
    "pseudo_label_loss",
    "routed_bn_layers",
]
