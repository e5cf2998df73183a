"""The inline executor: the whole graph in the driver process, one task step at a time (for debugging)."""
