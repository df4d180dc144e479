"""Learning rules for the feedforward ``tncn.mlp.MLP``, by name: ``make(name, net, **opts)``.

- ``bp``: back-propagation by autograd (``backprop.py``);
- ``fa``: random feedback alignment, Lillicrap et al. 2016 (``fa.py``);
- ``dfa``: direct feedback alignment, Nøkland 2016 (``dfa.py``);
- ``lra-e``: error-driven local representation alignment, Ororbia & Mali, AAAI 2019,
  arXiv 1805.11703 (``lra_e.py``).

Every learner is an ``nn.Module`` holding the network and its own matrices; ``step(x, y)`` writes
the update of every parameter into ``param.grad`` and returns the loss, and any ``torch.optim``
optimizer over ``learner.parameters()`` applies it (DESIGN.md §3).
"""
from __future__ import annotations

import inspect

from tncn.layers import lookup
from tncn.learners.backprop import Backprop, backprop_grads
from tncn.learners.base import Learner
from tncn.learners.dfa import DirectFeedbackAlignment
from tncn.learners.fa import FeedbackAlignment
from tncn.learners.lra_e import LRAE
from tncn.options import read

LEARNERS: dict[str, type[Learner]] = {cls.name: cls for cls in (Backprop, FeedbackAlignment, DirectFeedbackAlignment, LRAE)}


def takes_seed(name: str) -> bool:
    """Whether the rule ``name`` draws random matrices (its constructor takes ``seed``)."""
    return "seed" in inspect.signature(lookup(LEARNERS, name, "learning rule")).parameters


def make(name: str, net, seed: int = 0, **opts) -> Learner:
    """The learner ``name`` for ``net``, its declared options read and checked (an ``OptionError``
    names the rule, the option and the allowed values); ``seed`` seeds its random matrices."""
    cls = lookup(LEARNERS, name, "learning rule")
    options = read(cls.OPTIONS, opts, f"rule {name}")
    return cls(net, **options, **({"seed": seed} if takes_seed(name) else {}))


__all__ = ["LEARNERS", "Learner", "make", "takes_seed", "backprop_grads",
           "Backprop", "FeedbackAlignment", "DirectFeedbackAlignment", "LRAE"]
