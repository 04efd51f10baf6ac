"""smesh: transparent mutual TLS between pods, with the kernel doing the capture."""

__version__ = "0.1.0"
