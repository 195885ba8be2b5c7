"""solo-learn recipes (Hydra), usable with --config-path pkg://advcl_plugin.recipes.solo."""
