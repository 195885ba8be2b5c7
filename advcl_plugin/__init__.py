"""advcl-plugin: AdvCL (Fan et al., NeurIPS 2021) for PyTorch, solo-learn and lightly.

The public API of the framework-agnostic core is re-exported here; integrations live in
``advcl_plugin.solo`` and ``advcl_plugin.lightly``.
"""

from advcl_plugin.core import *  # noqa: F403
from advcl_plugin.core import __all__ as _core_all

__version__ = "0.1.0"

__all__ = [*_core_all, "__version__"]
