"""Contextual-bandit policies: pure numpy / scikit-learn, no Kafka, no I/O.

Data flows one way: context -> :mod:`policies.features` -> a :class:`policies.base.Policy`
-> decision (action, exact probability, full distribution) -> learn.
"""

from policies.base import ContextBatch, Decisions, Feedback, Policy, PolicyError
from policies.registry import POLICIES, create_policy, policy_class

__all__ = [
    "POLICIES",
    "ContextBatch",
    "Decisions",
    "Feedback",
    "Policy",
    "PolicyError",
    "create_policy",
    "policy_class",
]
