"""The desired stage: a Snapshot parsed and checked into a ``ParsedRevision``, then rendered for ``plan``.

``build`` reads and checks every file of a revision (``text`` for managed files, ``domains`` and
``yamlfile`` for domain files, ``hosts`` for a fleet's host files) into a ``ParsedRevision`` (``types``);
``render`` turns it, with this host's secrets and the validated tables, into the one ``Desired`` that
``plan`` compares with the live host. Called by ``validate``, ``prereceive``, ``engine`` and ``adopt``.
"""

from reconciler.desired.build import PARALLEL_PARSE_BYTES, build_desired, parse_for_rows
from reconciler.desired.domains import cross_domain_problems, parse_domain_file
from reconciler.desired.hosts import host_specs, host_tree, parse_host_file
from reconciler.desired.render import (
    SECRET_FILE_GROUP,
    SECRET_FILE_MODE,
    desired_for,
    host_origins,
    lazy_domain_rows,
    model_rows,
    render_desired,
    render_file,
)
from reconciler.desired.text import secret_refs, shape_problem, text_problems
from reconciler.desired.types import (
    DOMAINS_DIR,
    HOSTS_DIR,
    MAX_DEPTH,
    MAX_FILE_SIZE,
    MAX_PROBLEMS_PER_FILE,
    POSTFIX_DIR,
    REQUIRED_POSTFIX_FILES,
    ROOTFS_DIR,
    Desired,
    DesiredFile,
    DomainData,
    FileSpec,
    HostSpec,
    ParsedDomain,
    ParsedRevision,
    repo_path,
)
from reconciler.desired.yamlfile import load_yaml

__all__ = [
    "DOMAINS_DIR",
    "HOSTS_DIR",
    "MAX_DEPTH",
    "MAX_FILE_SIZE",
    "MAX_PROBLEMS_PER_FILE",
    "PARALLEL_PARSE_BYTES",
    "POSTFIX_DIR",
    "REQUIRED_POSTFIX_FILES",
    "ROOTFS_DIR",
    "SECRET_FILE_GROUP",
    "SECRET_FILE_MODE",
    "Desired",
    "DesiredFile",
    "DomainData",
    "FileSpec",
    "HostSpec",
    "ParsedDomain",
    "ParsedRevision",
    "build_desired",
    "cross_domain_problems",
    "desired_for",
    "host_origins",
    "host_specs",
    "host_tree",
    "lazy_domain_rows",
    "load_yaml",
    "model_rows",
    "parse_domain_file",
    "parse_for_rows",
    "parse_host_file",
    "render_desired",
    "render_file",
    "repo_path",
    "secret_refs",
    "shape_problem",
    "text_problems",
]
