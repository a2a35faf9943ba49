"""Postfix reconciler: a GitOps agent that makes a Postfix host match a git revision.

The package is a pipeline (see README, "Architecture"): source -> desired -> validate ->
observed -> plan -> apply/verify -> agent/cli. Lower stages never import upper ones.
"""

__version__ = "0.1.0"
