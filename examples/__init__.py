"""Example pipelines (run them with ``weir worker examples.<module>:pipeline``)."""
