"""The agent's view of how an attempt ended: ``reconciler.outcome``, where outcomes are decided.

Kept so that agent modules import the classifier from beside them; there is only one classifier.
"""

from __future__ import annotations

from reconciler.outcome import MAX_PROBLEMS, Outcome, classify, fault_of

__all__ = ["MAX_PROBLEMS", "Outcome", "classify", "fault_of"]
