"""Learner ``lstm``: an LSTM (Hochreiter & Schmidhuber 1997, with forget gate) on PyTorch's
``nn.LSTM`` kernel, trained by full or truncated BPTT (``tncn.temporal.bptt_learner``)."""
from tncn.temporal.bptt_learner import DEFAULTS, learner_builder

__all__ = ["DEFAULTS", "build"]
build = learner_builder("lstm")
