"""AdvCL recipes (YAML), shipped inside the package as ``advcl_plugin.recipes``."""
