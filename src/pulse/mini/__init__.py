"""The embedded mini world: generated people, portraits and mini-MMBench (world.py, portraits.py), the tiny LLaVA
that learns them on CPU, and its training."""
