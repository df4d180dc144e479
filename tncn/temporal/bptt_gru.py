"""Learner ``gru``: a GRU (Cho et al. 2014) on PyTorch's ``nn.GRU`` kernel, trained by full or
truncated BPTT (``tncn.temporal.bptt_learner``)."""
from tncn.temporal.bptt_learner import DEFAULTS, learner_builder

__all__ = ["DEFAULTS", "build"]
build = learner_builder("gru")
