"""lightly adapter: AdvCL's loss, views and adversarial view as lightly components, and lightly's
benchmarking classifiers for robust finetuning (``pip install "advcl-plugin[lightly]"``).

``AdvCLLoss``, ``AdversarialView``, ``ProjectionHead`` and ``PseudoLabelHeads`` are the core's
(plain PyTorch); ``AdvCLTransform`` is a lightly ``MultiViewTransform``; the classifiers subclass
lightly's ``LinearClassifier`` / ``FinetuneClassifier``; ``load_clean_encoder`` warm-starts every BN route
of a routed backbone from a clean (e.g. lightly-trained SimCLR) encoder.

Examples:
    >>> from advcl_plugin.lightly import AdvCLLoss, AdvCLTransform, AdversarialView, RobustLinearClassifier
"""

from advcl_plugin._optional import require

require("lightly", "lightly")
require("pytorch_lightning", "lightly")

from advcl_plugin.core.advcl_loss import AdvCLLoss  # noqa: E402
from advcl_plugin.core.adversarial_view import AdversarialView  # noqa: E402
from advcl_plugin.core.heads import ProjectionHead, PseudoLabelHeads  # noqa: E402
from advcl_plugin.core.routed_bn import load_clean_encoder  # noqa: E402
from advcl_plugin.lightly.classifiers import AdversarialFinetuneClassifier, RobustLinearClassifier  # noqa: E402
from advcl_plugin.lightly.evaluation import robust_linear_evaluation  # noqa: E402
from advcl_plugin.lightly.transforms import AdvCLTransform  # noqa: E402

__all__ = [
    "AdvCLLoss",
    "AdvCLTransform",
    "AdversarialFinetuneClassifier",
    "AdversarialView",
    "ProjectionHead",
    "PseudoLabelHeads",
    "RobustLinearClassifier",
    "load_clean_encoder",
    "robust_linear_evaluation",
]
