"""Test and demo tooling beside the product: private MariaDB, Postfix and Galera, and sandboxed repos.

Not shipped in the wheel (pyproject includes ``reconciler*`` only) and never imported by
``reconciler`` (an import-linter contract forbids it). Used by tests/, bench/ and deploy/sandbox.sh
from the repository root: ``common`` (processes, ports), ``mariadb``, ``postfix`` (private
instances), ``repo`` (sandboxing a desired-state repository), ``galera`` (a three-node cluster) and
``cli`` (``python -m harness up|down|status``).
"""
