"""tncn: temporal neural coding networks and local learning rules in PyTorch.

The Parallel Temporal Neural Coding Network (``tncn.PTNCN``; Ororbia et al., IEEE TNNLS 2020) learns
recurrent models without back-propagation through time; the shared layer primitives live in
``tncn.layers``.
"""
from tncn.layers import ACTIVATIONS, Dense, Feedback, get_activation, init_weight
from tncn.temporal.ptncn import PTNCN

__all__ = ["PTNCN", "Dense", "Feedback", "ACTIVATIONS", "get_activation", "init_weight"]
__version__ = "0.1.0"
