"""A private three-node MariaDB Galera cluster on loopback, for fleet tests and benchmarks.

Callers: ``tests/conftest.py`` (one session-scoped cluster shared by the fleet tests),
``tests/fleethost.py`` and ``bench/fleet.py``.

Each node is a ``harness.mariadb.MariaDB`` of its own (datadir, port, socket, option file), so that
``start``, ``stop``, ``kill`` and ``connect`` work per node. Galera needs what the issue measured
on Debian 12: ``wsrep_provider=/usr/lib/galera/libgalera_smm.so``, ``binlog_format=ROW``,
``innodb_autoinc_lock_mode=2``, one ``base_port`` per node (its IST port is ``base_port + 1``), an
own ``wsrep_sst_receive_address``, and the rsync state transfer, which fails as root: the nodes
run as ``mysql`` and their directories are owned by it. The first node bootstraps the cluster
(``gcomm://`` alone, as MariaDB's ``galera_3nodes.cnf`` does), the others join it by state transfer;
afterwards every option file lists all three nodes, so that a killed node rejoins on ``start``.
Short failure-detection timeouts make a killed node leave the cluster within a few seconds.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pymysql

from harness.common import SandboxError, find_tool, free_port, run
from harness.mariadb import AGENT_USER, LOOKUP_USER, MariaDB, bootstrap, new_password

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
CLUSTER_NAME = "reconciler-test"
# Failure detection within ~3 s (defaults are 5 s / 15 s); install_timeout <= inactive_timeout.
_EVS = "evs.suspect_timeout=PT2S;evs.inactive_timeout=PT3S;evs.install_timeout=PT3S;evs.keepalive_period=PT0.5S"


@dataclass(frozen=True)
class GaleraCluster:
    """Three (or ``len(nodes)``) Galera nodes sharing the ``mailserver`` database."""

    base: Path
    nodes: tuple[MariaDB, ...]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def root_connect(self, index: int = 0) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        return self.nodes[index].root_connect()

    def live_nodes(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.is_running() and n.answers()]

    def wait_synced(self, timeout: float = 60.0) -> None:
        """Wait until every running node reports ``Synced`` in a cluster of all running nodes."""
        deadline = time.monotonic() + timeout
        while True:
            live = self.live_nodes()
            if live and all(_node_synced(self.nodes[i], len(live)) for i in live):
                return
            if time.monotonic() > deadline:
                raise SandboxError(f"Galera nodes {live} not synced within {timeout:.0f} s")
            time.sleep(0.2)

    def restart(self, index: int, timeout: float = 90.0) -> None:
        """Start a stopped or killed node again; it rejoins by state transfer (IST or SST)."""
        self.nodes[index].start(timeout=timeout)
        self.wait_synced(timeout)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


def _node_synced(node: MariaDB, size: int) -> bool:
    try:
        conn = node.root_connect()
    except pymysql.err.MySQLError:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW STATUS WHERE Variable_name IN ('wsrep_local_state_comment', 'wsrep_cluster_size')")
            status = {str(k): str(v) for k, v in cur.fetchall()}
    except pymysql.err.MySQLError:
        return False
    finally:
        conn.close()
    return status.get("wsrep_local_state_comment") == "Synced" and status.get("wsrep_cluster_size") == str(size)


def _free_ports(count: int, taken: set[int]) -> list[int]:
    out: list[int] = []
    while len(out) < count:
        port = free_port()
        if port in taken or port + 1 in taken or port > 65000:
            continue
        taken.update({port, port + 1})
        out.append(port)
    return out


def _options(node_dir: Path, port: int, gport: int, sst_port: int, cluster: str, index: int) -> str:
    lines = [
        "[mariadbd]",
        f"datadir={node_dir / 'data'}",
        f"socket={node_dir / 'mysqld.sock'}",
        f"port={port}",
        "bind-address=127.0.0.1",
        f"pid-file={node_dir / 'mariadbd.pid'}",
        f"log-error={node_dir / 'error.log'}",
        "user=mysql",
        "skip-name-resolve",
        "character-set-server=utf8mb4",
        "collation-server=utf8mb4_general_ci",
        "innodb-buffer-pool-size=32M",
        "innodb-log-file-size=16M",
        "innodb-flush-log-at-trx-commit=2",
        "max-connections=200",
        "binlog_format=ROW",
        "default-storage-engine=InnoDB",
        "innodb_autoinc_lock_mode=2",
        "wsrep_on=ON",
        f"wsrep_provider={PROVIDER}",
        f"wsrep_cluster_name={CLUSTER_NAME}",
        f"wsrep_cluster_address={cluster}",
        f'wsrep_provider_options="base_port={gport};gcache.size=32M;{_EVS}"',
        "wsrep_node_address=127.0.0.1",
        f"wsrep_node_name=node{index + 1}",
        f"wsrep_node_incoming_address=127.0.0.1:{port}",
        "wsrep_sst_method=rsync",
        f"wsrep_sst_receive_address=127.0.0.1:{sst_port}",
    ]
    return "\n".join(lines) + "\n"


def start_galera(base: Path | None = None, size: int = 3, *, timeout: float = 90.0) -> GaleraCluster:
    """Initialise and start a ``size``-node cluster under ``base`` (default: a new /tmp directory).

    The directory must be reachable by the ``mysql`` user (pytest's tmp_path is not): the default
    is a fresh ``/tmp/reconciler-galera-*`` (mode 0711). Users and the database are those of
    ``harness.mariadb.start_mariadb``, created on the first node and replicated to the others.
    """
    if not Path(PROVIDER).is_file():
        raise SandboxError(f"{PROVIDER} not found: install Debian's galera-4 package")
    find_tool("rsync")  # the state transfer: Debian's rsync package
    if base is None:
        base = Path(tempfile.mkdtemp(prefix="reconciler-galera-"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o711)
    mysql = pwd.getpwnam("mysql")
    taken: set[int] = set()
    ports = _free_ports(size, taken)
    gports = _free_ports(size, taken)
    sst_ports = _free_ports(size, taken)
    everyone = "gcomm://" + ",".join(f"127.0.0.1:{g}" for g in gports)
    passwords = {"root": new_password(), AGENT_USER: new_password(), LOOKUP_USER: new_password()}
    nodes: list[MariaDB] = []
    for i in range(size):
        node_dir = base / f"node{i + 1}"
        (node_dir / "data").mkdir(parents=True, exist_ok=True)
        for path in (node_dir, node_dir / "data"):
            os.chown(path, mysql.pw_uid, mysql.pw_gid)
        node_dir.chmod(0o755)
        log = node_dir / "error.log"
        log.touch(mode=0o600)
        os.chown(log, mysql.pw_uid, mysql.pw_gid)
        node = MariaDB(base=node_dir, port=ports[i], passwords=passwords)
        cluster = "gcomm://" if i == 0 else everyone
        node.defaults_file.write_text(_options(node_dir, ports[i], gports[i], sst_ports[i], cluster, i))
        node.save()
        nodes.append(node)
    cluster_obj = GaleraCluster(base, tuple(nodes))
    first = nodes[0]
    run(
        [
            find_tool("mariadb-install-db"),
            f"--defaults-file={first.defaults_file}",
            "--user=mysql",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ],
        timeout=timeout,
    )
    try:
        first.start(timeout=timeout)
        bootstrap(first)
        # From now on a restart of the first node joins the others instead of founding a new cluster.
        first.defaults_file.write_text(_options(first.base, ports[0], gports[0], sst_ports[0], everyone, 0))
        for node in nodes[1:]:
            node.start(timeout=timeout)
        cluster_obj.wait_synced(timeout)
    except Exception:
        cluster_obj.stop()
        raise
    return cluster_obj


def remove(cluster: GaleraCluster) -> None:
    """Stop the cluster and delete its directory."""
    cluster.stop()
    shutil.rmtree(cluster.base, ignore_errors=True)
