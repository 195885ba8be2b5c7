"""Doctest collection: skip the solo-learn integration's modules when solo-learn is not installed."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("solo") else ["advcl_plugin/solo/*"]
