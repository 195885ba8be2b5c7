"""The ``advcl`` lab: recipes, pretraining with Lightning, finetuning, evaluation, reports, studies.

An optional layer on top of the core and the lightly adapter (``pip install "advcl-plugin[app]"``):
``config`` (OmegaConf structured recipes), ``artifacts`` (every saved file), ``lightning`` (the
training module, checkpoint I/O, Trainer arguments), ``data``, ``schedule``, ``stages/`` (one
module per command), ``study`` (studies and the demo), ``report`` and ``cli``.
"""

from advcl_plugin._optional import require

for _module in ("pytorch_lightning", "omegaconf", "yaml", "lightly"):
    require(_module, "app")
