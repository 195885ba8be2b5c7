"""lightly integration: AdvCL's loss, views and head as lightly components, an adversarial view
for any lightly model, and lightly's benchmarking classifiers for robust finetuning.

Example:
    >>> from advcl_plugin.lightly import AdvCLLoss, AdvCLTransform, AdversarialView, RobustLinearClassifier
"""

from advcl_plugin.core.heads import ProjectionHead, PseudoLabelHeads
from advcl_plugin.lightly.adversarial_view import AdversarialView
from advcl_plugin.lightly.classifiers import AdversarialFinetuneClassifier, RobustLinearClassifier
from advcl_plugin.lightly.evaluation import robust_linear_evaluation
from advcl_plugin.lightly.loss import AdvCLLoss
from advcl_plugin.lightly.transforms import AdvCLTransform

__all__ = [
    "AdvCLLoss",
    "AdvCLTransform",
    "AdversarialFinetuneClassifier",
    "AdversarialView",
    "ProjectionHead",
    "PseudoLabelHeads",
    "RobustLinearClassifier",
    "robust_linear_evaluation",
]
