"""The plan stage: a pure comparison of desired and observed state into an ordered, typed Plan.

``types`` holds what goes in and out, ``compute`` the comparison (``plan``), ``masking`` how live
files holding secrets are compared and shown. ``Desired`` is the desired stage's (re-exported as
plan's input). Callers import from here: the engine (``plan``),
``observed`` (``Observed``, ``LiveFile``), ``render`` and ``apply`` (the Plan and its changes).
"""

from reconciler.desired.types import Desired, FileSpec
from reconciler.plan.compute import plan
from reconciler.plan.masking import mask_live, unified
from reconciler.plan.types import (
    RESTART_PARAMETERS,
    Action,
    Change,
    FileChange,
    Kind,
    LiveFile,
    Observed,
    Plan,
    RowChange,
    ServiceChange,
    TableChange,
)

__all__ = [
    "RESTART_PARAMETERS",
    "Action",
    "Change",
    "Desired",
    "FileChange",
    "FileSpec",
    "Kind",
    "LiveFile",
    "Observed",
    "Plan",
    "RowChange",
    "ServiceChange",
    "TableChange",
    "mask_live",
    "plan",
    "unified",
]
