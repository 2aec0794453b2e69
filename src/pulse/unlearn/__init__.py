"""Unlearning: pure loss functions (losses.py), the method registry (methods.py) and the training loop."""
