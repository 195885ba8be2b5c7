"""solo-learn integration.

``import advcl_plugin.solo`` registers ``advcl`` and the adversarial variants ``simclr_adv``,
``byol_adv``, ``mocov2plus_adv``, ``vicreg_adv``, ``simsiam_adv`` and ``barlow_twins_adv`` in
``solo.methods.METHODS``, so that solo-learn's own ``main_pretrain.py`` finds them by the
``method:`` key of a recipe; that import is all a solo-learn script needs.  The ``advcl-solo``
launcher does it and also calls :func:`apply_lightning_compat` (solo-learn 1.0.6's k-NN and
``devices`` handling under current Lightning/torchmetrics) before running solo-learn's scripts.

Requires solo-learn (installed from its source) and ``lightning``.
"""

from __future__ import annotations

try:
    import solo.methods
except ImportError as error:  # pragma: no cover - exercised only without solo-learn
    raise ImportError(
        "advcl_plugin.solo needs solo-learn: install it from its source (see docs/guides/solo-learn.md)"
    ) from error

from omegaconf import OmegaConf

from advcl_plugin.core.config import PAPER
from advcl_plugin.solo.advcl import AdvCL
from advcl_plugin.solo.adversarial import BarlowTwinsAdv, BYOLAdv, MoCoV2PlusAdv, SimCLRAdv, SimSiamAdv, VICRegAdv
from advcl_plugin.solo.compat import apply_lightning_compat

#: methods this package adds to solo-learn
METHODS = {
    "advcl": AdvCL,
    "simclr_adv": SimCLRAdv,
    "byol_adv": BYOLAdv,
    "mocov2plus_adv": MoCoV2PlusAdv,
    "vicreg_adv": VICRegAdv,
    "simsiam_adv": SimSiamAdv,
    "barlow_twins_adv": BarlowTwinsAdv,
}


def register() -> None:
    """Add :data:`METHODS` to ``solo.methods.METHODS`` (idempotent) and the ``${advcl_paper:<field>}``
    resolver, which gives recipes the paper's value of an AdvCLConfig field (e.g. ``ks``)."""
    solo.methods.METHODS.update(METHODS)
    if not OmegaConf.has_resolver("advcl_paper"):
        OmegaConf.register_new_resolver("advcl_paper", lambda name: _paper_value(name))


def _paper_value(name: str) -> object:
    value = PAPER.to_dict()[name]
    return list(value) if isinstance(value, tuple) else value


register()

__all__ = [
    "METHODS",
    "AdvCL",
    "BYOLAdv",
    "BarlowTwinsAdv",
    "MoCoV2PlusAdv",
    "SimCLRAdv",
    "SimSiamAdv",
    "VICRegAdv",
    "apply_lightning_compat",
    "register",
]
