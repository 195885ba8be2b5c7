"""Framework-agnostic AdvCL core: plain PyTorch, one module per idea of the paper.

Nothing here imports a trainer, a host framework (solo-learn, lightly) or the ``advcl`` lab;
optional libraries (faiss for ClusterFit) are imported where used.  Finetuning and evaluation (protocols,
robust accuracy, TRADES) live beside it in :mod:`advcl_plugin.evaluation`.
"""

from advcl_plugin.core.advcl_loss import AdvCLLoss, advcl_loss
from advcl_plugin.core.adversarial_view import AdversarialView
from advcl_plugin.core.attack import check_pixel_range, pgd_linf
from advcl_plugin.core.clusterfit import PseudoLabels, cluster_pseudo_labels, compute_features
from advcl_plugin.core.config import KS_ENSEMBLE, PAPER, PAPER_VIEWS, AdvCLConfig, ViewConfig
from advcl_plugin.core.contrastive import MultiViewNTXentLoss, multi_view_contrastive_loss
from advcl_plugin.core.distributed import gather_with_grad
from advcl_plugin.core.frequency import (
    HighFrequencyView,
    LowFrequencyView,
    check_radius,
    frequency_mask,
    high_frequency,
    low_frequency,
)
from advcl_plugin.core.heads import ProjectionHead, PseudoLabelHeads, pseudo_label_loss
from advcl_plugin.core.objective import AdvCLObjective, AdvCLOutput
from advcl_plugin.core.resnet import CifarResNet, cifar_resnet18
from advcl_plugin.core.routed_bn import (
    DEFAULT_ROUTES,
    MultiRouteBatchNorm,
    bn_route,
    convert_to_multi_bn,
    export_bn_route,
    load_clean_encoder,
    plain_state_dict,
    routed_bn_layers,
)

__all__ = [
    "DEFAULT_ROUTES",
    "KS_ENSEMBLE",
    "PAPER",
    "PAPER_VIEWS",
    "AdvCLConfig",
    "AdvCLLoss",
    "AdvCLObjective",
    "AdvCLOutput",
    "AdversarialView",
    "CifarResNet",
    "HighFrequencyView",
    "LowFrequencyView",
    "MultiRouteBatchNorm",
    "MultiViewNTXentLoss",
    "ProjectionHead",
    "PseudoLabelHeads",
    "PseudoLabels",
    "ViewConfig",
    "advcl_loss",
    "bn_route",
    "check_pixel_range",
    "check_radius",
    "cifar_resnet18",
    "cluster_pseudo_labels",
    "compute_features",
    "convert_to_multi_bn",
    "export_bn_route",
    "frequency_mask",
    "gather_with_grad",
    "high_frequency",
    "load_clean_encoder",
    "low_frequency",
    "multi_view_contrastive_loss",
    "pgd_linf",
    "plain_state_dict",
    "pseudo_label_loss",
    "routed_bn_layers",
]
