"""tncn: temporal neural coding networks and local learning rules in PyTorch.

The Parallel Temporal Neural Coding Network (``tncn.PTNCN``; Ororbia et al., IEEE TNNLS 2020) learns
recurrent models without back-propagation through time; the feedforward ``tncn.MLP`` trains under
the rules of ``tncn.learners`` (bp, fa, dfa, lra-e); both are built from ``tncn.layers``.
"""
from tncn.layers import ACTIVATIONS, Dense, Feedback, get_activation, init_weight
from tncn.temporal.ptncn import PTNCN
from tncn.mlp import MLP
from tncn import learners

__all__ = ["PTNCN", "MLP", "learners", "Dense", "Feedback", "ACTIVATIONS", "get_activation", "init_weight"]
__version__ = "0.1.0"
