"""Fan-out worker (container task): ``python -m rtstream_fanout``."""
