"""Learner ``elman``: the Elman RNN built from the shared ``tncn.layers.Dense`` layers (any
differentiable activation), trained by full or truncated BPTT (``tncn.temporal.bptt_learner``);
the same network the local rules of ``tncn.temporal.bptt_alignment`` apply to."""
from tncn.temporal.bptt_learner import ELMAN_DEFAULTS as DEFAULTS, learner_builder

__all__ = ["DEFAULTS", "build"]
build = learner_builder("elman")
