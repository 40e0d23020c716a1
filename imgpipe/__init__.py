"""imgpipe: image many Measurement Sets with WSClean across the nodes of a cluster."""

__version__ = "0.1.0"
