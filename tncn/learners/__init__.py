"""Learning rules for the feedforward ``tncn.mlp.MLP``, by name: ``make(name, net, **opts)``.

- ``bp``: back-propagation by autograd (``backprop.py``);
- ``fa``: random feedback alignment, Lillicrap et al. 2016 (``fa.py``);
- ``dfa``: direct feedback alignment, Nøkland 2016 (``dfa.py``);
- ``lra-e``: error-driven local representation alignment, Ororbia & Mali, AAAI 2019,
  arXiv 1805.11703 (``lra_e.py``);
- ``lra``: local representation alignment with fixed random feedback and the Cauchy local loss,
  Ororbia, Mali, Kifer & Giles, arXiv 1803.01834 (``lra.py``);
- ``dtp``: difference target propagation, Lee, Zhang, Fischer & Bengio 2015 (``dtp.py``);
- ``dtp-sigma``: DTP with an adaptive noise schedule, our reading of Ororbia & Mali's DTP-σ (``dtp.py``);
- ``rbm``: restricted Boltzmann machines trained by contrastive divergence on every hidden layer,
  Hinton 2002, with a readout on top (``rbm.py``);
- ``ep``: equilibrium propagation, Scellier & Bengio 2017, with persistent particles and the
  random-sign or symmetric nudge (``ep.py``);
- ``chl``: contrastive Hebbian learning, Movellan 1991, on the same settling network (``ep.py``).

Every learner is an ``nn.Module`` holding the network and its own matrices; ``step(x, y)`` writes
the update of every parameter into ``param.grad`` and returns the loss, and any ``torch.optim``
optimizer over ``learner.parameters()`` applies it (``tncn.learners.base``).
"""
from __future__ import annotations

import inspect

from tncn.layers import lookup
from tncn.learners.backprop import Backprop, backprop_grads
from tncn.learners.base import Learner
from tncn.learners.dfa import DirectFeedbackAlignment
from tncn.learners.ep import ContrastiveHebbian, EquilibriumPropagation
from tncn.learners.dtp import DifferenceTargetPropagation, DTPSigma
from tncn.learners.fa import FeedbackAlignment
from tncn.learners.lra import LRA
from tncn.learners.lra_e import LRAE
from tncn.learners.rbm import RBM
from tncn.options import read

LEARNERS: dict[str, type[Learner]] = {
    cls.name: cls for cls in (Backprop, FeedbackAlignment, DirectFeedbackAlignment, LRAE, LRA,
                            DifferenceTargetPropagation, DTPSigma, RBM, EquilibriumPropagation, ContrastiveHebbian)
}


def make(name: str, net, seed: int = 0, **opts) -> Learner:
    """The learner ``name`` for ``net``, its declared options read and checked (an ``OptionError``
    names the rule, the option and the allowed values); ``seed`` seeds its random matrices, for
    the rules that draw some (their constructor takes ``seed``)."""
    cls = lookup(LEARNERS, name, "learning rule")
    options = read(cls.OPTIONS, opts, f"rule {name}")
    if "seed" in inspect.signature(cls).parameters:
        options["seed"] = seed
    return cls(net, **options)


__all__ = ["LEARNERS", "Learner", "make", "backprop_grads",
           "Backprop", "FeedbackAlignment", "DirectFeedbackAlignment", "LRAE", "LRA",
           "DifferenceTargetPropagation", "DTPSigma", "RBM",
           "EquilibriumPropagation", "ContrastiveHebbian"]
