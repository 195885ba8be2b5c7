"""advcl-plugin: AdvCL (Fan et al., NeurIPS 2021) for PyTorch, solo-learn and lightly.

The public API of the framework-agnostic core (:mod:`advcl_plugin.core`, the method) and of the evaluation
room (:mod:`advcl_plugin.evaluation`: protocols, robust accuracy, TRADES) is re-exported here; integrations
live in ``advcl_plugin.solo`` and ``advcl_plugin.lightly``, the ``advcl`` lab in ``advcl_plugin.app``.
"""

from importlib.metadata import PackageNotFoundError, version

from advcl_plugin.core import *  # noqa: F403
from advcl_plugin.core import __all__ as _core_all
from advcl_plugin.evaluation import *  # noqa: F403
from advcl_plugin.evaluation import __all__ as _evaluation_all

try:
    __version__ = version("advcl-plugin")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [*_core_all, *_evaluation_all, "__version__"]
