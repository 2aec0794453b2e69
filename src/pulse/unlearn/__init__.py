"""Unlearning: pure loss functions (losses.py), the method registry (methods.py) and the training loop (loop.py).

The stable public API for writing a method (documented in methods.py): `Method`, `Outputs`, `method_loss` and the
loss helpers in `losses` — `from pulse.unlearn import Method, Outputs, losses`.
"""
from . import losses
from .methods import IDK_ANSWERS, METHODS, Method, Outputs, get_method, method_loss

__all__ = ["IDK_ANSWERS", "METHODS", "Method", "Outputs", "get_method", "losses", "method_loss"]
