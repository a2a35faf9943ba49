"""The desired stage: a Snapshot parsed and checked into a ``ParsedRevision``, then rendered for ``plan``.

``build`` reads and checks every file of a revision (``text`` for managed files, ``domains`` and
``yamlfile`` for domain files, ``hosts`` for a fleet's host files) into a ``ParsedRevision`` (``types``);
``render`` turns it, with this host's secrets and the validated tables, into the one ``Desired`` that
``plan`` compares with the live host. Called by ``validate``, ``prereceive``, ``engine`` and ``adopt``,
which import from the submodules: this package imports nothing, so that the pure ones (``types``,
``render``) load without git or the YAML workers.
"""
