"""solo-learn 1.0.6 under current Lightning and torchmetrics.

solo-learn 1.0.6 pins ``lightning==2.1.2`` and ``torchmetrics<0.12``.  With the current releases
(which this package's ``solo`` extra installs) three things of solo-learn's own break, for its
built-in methods as for ours; :func:`apply_lightning_compat` patches them at run time (solo-learn's
files are not modified) and the ``advcl-solo`` launcher calls it.  Recipes written like this
package's (``devices: [0]`` on GPUs, ``devices: "1"`` on a CPU, ``strategy`` set, k-NN off) run
without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["apply_lightning_compat"]


def _wrap_parse_cfg(module: Any) -> None:
    original = module.parse_cfg
    if getattr(original, "_advcl_wrapped", False):
        return

    def parse_cfg(cfg: Any) -> Any:
        devices = cfg.get("devices", 1)
        # solo-learn computes len(cfg.devices); Lightning on CPU accepts only an integer count
        count = devices if isinstance(devices, int) else (len(devices) if not isinstance(devices, str) else 1)
        cfg.devices = list(range(count))
        cfg = original(cfg)
        cfg.devices = devices
        if cfg.get("strategy") in (None, "none"):
            cfg.strategy = "auto"  # Lightning 2.x has no strategy=None
        return cfg

    parse_cfg._advcl_wrapped = True  # type: ignore[attr-defined]
    module.parse_cfg = parse_cfg


def apply_lightning_compat() -> None:
    """Adapt solo-learn 1.0.6 (written for Lightning 2.1 / torchmetrics < 0.12) to current releases.
    Idempotent; changes nothing of solo-learn's results.

    * ``devices`` may be an integer count: solo-learn's ``parse_cfg`` takes ``len(cfg.devices)`` to
      scale the learning rate (``TypeError`` on an integer), while Lightning's CPU accelerator
      refuses a list.  ``parse_cfg`` now sees a list of that length and Lightning the value given.
    * A missing ``strategy`` becomes ``"auto"`` (solo-learn defaults to ``None``, which Lightning 2.x
      refuses).
    * solo-learn's online k-NN (``knn_eval.enabled``) passes ``compute_on_step`` to torchmetrics'
      ``Metric``, which torchmetrics 1.x removed (``ValueError`` when the method is built); the
      argument is dropped (it only chose the default that torchmetrics 1.x always uses).
    """
    import inspect

    import solo.args.linear
    import solo.args.pretrain
    import solo.utils.knn
    from torchmetrics.metric import Metric

    _wrap_parse_cfg(solo.args.pretrain)
    _wrap_parse_cfg(solo.args.linear)
    knn = solo.utils.knn.WeightedKNNClassifier
    if "compute_on_step" not in inspect.signature(Metric.__init__).parameters and not getattr(knn, "_advcl", False):
        original_init = knn.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            metric_init = Metric.__init__

            def tolerant(metric: Any, *a: Any, compute_on_step: Any = None, **kw: Any) -> None:
                metric_init(metric, *a, **kw)

            Metric.__init__ = tolerant  # type: ignore[method-assign, assignment]
            try:
                original_init(self, *args, **kwargs)
            finally:
                Metric.__init__ = metric_init  # type: ignore[method-assign]

        knn.__init__ = init  # type: ignore[method-assign]
        knn._advcl = True  # type: ignore[attr-defined]
