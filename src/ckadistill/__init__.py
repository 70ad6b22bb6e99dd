"""ckadistill: distil transformers into narrower, shallower students with Centered Kernel Alignment."""

__version__ = "0.1.0"
