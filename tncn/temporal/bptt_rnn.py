"""Learner ``rnn``: an Elman RNN (tanh) on PyTorch's ``nn.RNN`` kernel, trained by full or truncated
BPTT (``tncn.temporal.bptt_learner``)."""
from tncn.temporal.bptt_learner import DEFAULTS, learner_builder

__all__ = ["DEFAULTS", "build"]
build = learner_builder("rnn")
