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

LEARNERS: dict[str, type] = {
    "bp": Backprop,
    "fa": FeedbackAlignment,
    "dfa": DirectFeedbackAlignment,
    "lra-e": LRAE,
}


def options(name: str) -> list[str]:
    """The keyword options the rule ``name`` takes (besides the network)."""
    params = inspect.signature(lookup(LEARNERS, name, "learning rule").__init__).parameters
    return [p for p in params if p not in ("self", "net")]


def make(name: str, net, **opts) -> Learner:
    """The learner ``name`` for ``net``; a ValueError lists the known rules or the rule's options."""
    cls = lookup(LEARNERS, name, "learning rule")
    allowed = options(name)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ValueError(
            f"rule {name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(allowed) if allowed else 'none'}"
        )
    return cls(net, **opts)


__all__ = ["LEARNERS", "Learner", "make", "options", "backprop_grads",
           "Backprop", "FeedbackAlignment", "DirectFeedbackAlignment", "LRAE"]
