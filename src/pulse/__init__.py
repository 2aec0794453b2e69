"""PULSE: practical evaluation scenarios for unlearning in large multimodal models."""

__version__ = "0.1.0"
