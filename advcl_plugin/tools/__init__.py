"""Tools beside the core: the authors' reference loop (a test and benchmark oracle), the step
benchmark and the self-check. They use the core only."""
