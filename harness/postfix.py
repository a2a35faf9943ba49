"""A private Postfix instance on loopback for tests, benchmarks and the local sandbox.

Callers: ``tests/conftest.py`` (a fresh instance per test), ``tests/`` and ``bench/`` helpers,
``harness.repo`` (``sandbox_parameters``, ``cool_down``) and ``harness.cli``.

``create_postfix_instance`` writes a minimal ``main.cf``/``master.cf`` with its own queue and data
directories, logging to a file through ``postlogd`` (no syslog needed); every Postfix command gets
``-c config_dir``. Outbound delivery is disabled: a test instance never sends mail off the host.
Postfix's master must run as root, so must the callers (CI and the sandbox do).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import smtplib
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from harness.common import (
    MAX_SOCKET_PATH,
    SandboxError,
    find_tool,
    free_port,
    port_open,
    run,
    run_tty_stderr,
    tail,
    wait_until,
)
from reconciler.verify import smtp_greeting

SANDBOX_HOSTNAME: Final = "sandbox.test"


def cool_down(*paths: Path) -> None:
    """Backdate the mtime of freshly written Postfix files by 10 s.

    Postfix rereads a main.cf modified within the last second or two in 0.3 s steps until it
    "cools down" (dict_load_file_xt), so every postfix/postconf call right after an edit stalls
    for up to 2 s. Nothing in the harness looks at these mtimes.
    """
    past = time.time() - 10
    for path in paths:
        if path.exists():
            os.utime(path, (past, past))



# Debian's master.cf without chroot (a private queue directory has no etc/ copies to chroot into)
# and with postlogd, which writes maillog_file. "{smtp}" is replaced by the smtpd listener.
_MASTER_CF: Final = """\
# Private Postfix instance written by harness.postfix (tests and sandbox only).
# service type  private unpriv  chroot  wakeup  maxproc command + args
{smtp} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Outbound mail goes to a closed loopback port and waits in the queue (deferred): a private
# instance never sends mail off this host. Not "error:", which smtpd would already apply at RCPT time.
_NOWHERE: Final = "[127.0.0.1]:9"


def sandbox_parameters(
    queue_dir: Path, data_dir: Path, *, maillog: Path, syslog_name: str, mail_spool: Path | None = None
) -> dict[str, str]:
    """The main.cf settings that make any configuration a private, loopback-only instance."""
    return {
        "queue_directory": str(queue_dir),
        "data_directory": str(data_dir),
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "maillog_file": str(maillog),
        # Postfix refuses a maillog_file outside these prefixes (default "/var, /dev/stdout").
        "maillog_file_prefixes": str(maillog.parent),
        "syslog_name": syslog_name,
        "mail_spool_directory": str(mail_spool or maillog.parent / "mail"),
        "default_transport": f"smtp:{_NOWHERE}",
        "relay_transport": f"relay:{_NOWHERE}",
    }


def write_minimal_config(
    config_dir: Path,
    queue_dir: Path,
    data_dir: Path,
    port: int,
    *,
    maillog: Path,
    syslog_name: str,
    myhostname: str = SANDBOX_HOSTNAME,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Write a minimal main.cf and master.cf: smtpd on 127.0.0.1:``port``, mail for localhost only.

    Local mail lands in ``mail/`` beside the maillog; other mail stays deferred in the queue.

    ``mynetworks`` is 127.0.0.1/32 only, so a client connecting from 127.0.0.2 is an untrusted
    stranger (relaying is refused) while 127.0.0.1 is trusted. ``extra`` adds or overrides main.cf
    parameters.
    """
    params = {
        "compatibility_level": "3.6",
        **sandbox_parameters(queue_dir, data_dir, maillog=maillog, syslog_name=syslog_name),
        "myhostname": myhostname,
        "mydomain": myhostname.partition(".")[2] or myhostname,
        "myorigin": "$myhostname",
        "mydestination": "localhost",
        "mynetworks": "127.0.0.1/32",
        # Debian's default "hash:/etc/aliases, nis:mail.aliases" logs an error per lookup here.
        "alias_maps": "",
        "alias_database": "",
        "biff": "no",
        "smtpd_banner": "$myhostname ESMTP",
        **(extra or {}),
    }
    config_dir.mkdir(parents=True, exist_ok=True)
    main_cf = "# Private Postfix instance written by harness.postfix (tests and sandbox only).\n"
    main_cf += "".join(f"{name} = {value}\n" for name, value in params.items())
    (config_dir / "main.cf").write_text(main_cf, encoding="utf-8")
    (config_dir / "master.cf").write_text(_MASTER_CF.format(smtp=f"127.0.0.1:{port}"), encoding="utf-8")
    cool_down(config_dir / "main.cf", config_dir / "master.cf")


@dataclass(frozen=True)
class PostfixInstance:
    """A private Postfix instance: its own config, queue and data directories and a loopback port.

    Every command runs as ``postfix -c config_dir``; ``postfix status`` decides whether it runs.
    """

    base: Path
    config_dir: Path
    queue_dir: Path
    data_dir: Path
    smtp_port: int
    maillog: Path
    syslog_name: str

    def postfix(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``postfix -c config_dir ARGS``; its diagnostics are in the result's stderr (see run_tty_stderr)."""
        argv = [find_tool("postfix"), "-c", str(self.config_dir), *args]
        proc = run_tty_stderr(argv, timeout=timeout)
        if check and proc.returncode != 0:
            output = (proc.stdout + proc.stderr).strip()
            raise SandboxError(f"{' '.join(argv)} exited with status {proc.returncode}: {output}")
        return proc

    def postconf(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``postconf -c config_dir ARGS`` and return its standard output.

        After an edit (``-e``, ``-X``, ``-M``...) the files are cooled down (see ``cool_down``) so
        that the next Postfix command does not stall.
        """
        out = run([find_tool("postconf"), "-c", str(self.config_dir), *args], timeout=timeout).stdout
        cool_down(self.config_dir / "main.cf", self.config_dir / "master.cf")
        return out

    def postmap(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``postmap -c config_dir ARGS`` and return its standard output."""
        return run([find_tool("postmap"), "-c", str(self.config_dir), *args], timeout=timeout).stdout

    def check(self) -> None:
        """``postfix check``: raises when Postfix finds the configuration or the directories broken."""
        self.postfix("check")

    def is_running(self) -> bool:
        """Whether the master process runs (``postfix status`` exits 0)."""
        return self.postfix("status", check=False).returncode == 0

    def start(self) -> None:
        """``postfix start``; returns once the master has bound its listeners. No-op when running."""
        if self.is_running():
            return
        proc = self.postfix("start", check=False)
        if proc.returncode != 0:
            raise SandboxError(
                f"postfix -c {self.config_dir} start failed ({proc.returncode}): "
                f"{(proc.stdout + proc.stderr).strip()}\n{self.maillog}:\n{tail(self.maillog)}"
            )

    def stop(self, timeout: float = 30.0) -> None:
        """``postfix stop`` and wait until the listener is closed; no-op when not running."""
        if self.is_running():
            self.postfix("stop", check=False)
        if not wait_until(lambda: not self.is_running(), timeout, interval=0.1):
            self.postfix("abort", check=False)
            raise SandboxError(f"Postfix in {self.config_dir} did not stop within {timeout:.0f} s")
        wait_until(lambda: not port_open(self.smtp_port), 5.0)

    def reload(self) -> None:
        """``postfix reload``: the running master rereads main.cf and master.cf."""
        self.postfix("reload")

    def greeting(self, timeout: float = 10.0) -> str | None:
        """The first line of the SMTP greeting (``reconciler.verify.smtp_greeting``), None if none came."""
        return smtp_greeting("127.0.0.1", self.smtp_port, timeout)

    def rcpt_to(
        self,
        mail_from: str,
        rcpt: str,
        *,
        client_address: str = "127.0.0.1",
        helo: str = "client.sandbox.test",
        timeout: float = 30.0,
    ) -> tuple[int, str]:
        """The SMTP server's answer to ``RCPT TO:<rcpt>`` (EHLO, MAIL FROM, RCPT TO, RSET, QUIT).

        ``client_address`` is the loopback source address to connect from: 127.0.0.1 is in the
        minimal config's ``mynetworks``, 127.0.0.2 is not and so sees what a stranger sees. When
        MAIL FROM is refused, that answer is returned instead.
        """
        with smtplib.SMTP(timeout=timeout, source_address=(client_address, 0)) as smtp:
            smtp.connect("127.0.0.1", self.smtp_port)
            smtp.ehlo(helo)
            code, text = smtp.mail(mail_from)
            if code < 400:
                code, text = smtp.rcpt(rcpt)
            smtp.rset()
            return code, text.decode("utf-8", errors="replace")

    def maillog_text(self) -> str:
        """Everything this instance logged so far ("" before its first log line)."""
        try:
            return self.maillog.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def save(self) -> None:
        """Record the instance in ``postfix.json`` under ``base`` so a later process can reattach."""
        state = {
            "config_dir": str(self.config_dir),
            "queue_dir": str(self.queue_dir),
            "data_dir": str(self.data_dir),
            "smtp_port": self.smtp_port,
            "maillog": str(self.maillog),
            "syslog_name": self.syslog_name,
        }
        (self.base / "postfix.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, base: Path) -> PostfixInstance:
        """The instance that ``create_postfix_instance`` created under ``base``."""
        state = json.loads((base / "postfix.json").read_text(encoding="utf-8"))
        return cls(
            base=base.resolve(),
            config_dir=Path(state["config_dir"]),
            queue_dir=Path(state["queue_dir"]),
            data_dir=Path(state["data_dir"]),
            smtp_port=int(state["smtp_port"]),
            maillog=Path(state["maillog"]),
            syslog_name=str(state["syslog_name"]),
        )


def create_postfix_instance(
    base: Path, smtp_port: int | None = None, *, extra: Mapping[str, str] | None = None
) -> PostfixInstance:
    """Create (not start) a private Postfix instance under ``base`` with a minimal configuration.

    Layout: ``etc/`` (config_directory), ``spool/`` (queue_directory), ``data/`` (data_directory,
    owned by ``postfix`` as Postfix requires) and the log file ``maillog``.
    """
    if os.geteuid() != 0:
        raise SandboxError("a Postfix instance needs root: its master process runs as root")
    base.mkdir(parents=True, exist_ok=True)
    base = base.resolve()
    port = smtp_port if smtp_port is not None else free_port()
    instance = PostfixInstance(
        base=base,
        config_dir=base / "etc",
        queue_dir=base / "spool",
        data_dir=base / "data",
        smtp_port=port,
        maillog=base / "maillog",
        syslog_name=f"postfix-sandbox-{port}",
    )
    # Postfix commands reach postlogd at the absolute $queue_directory/public/postlog; past the
    # kernel's 108-byte socket path limit every command exits 1 without a word (it cannot log).
    if len(str(instance.queue_dir / "public" / "postlog")) > MAX_SOCKET_PATH - 10:
        raise SandboxError(f"{base} is too long for Postfix's socket paths; use a shorter directory")
    # The master opens data_directory/master.lock as the postfix user, and other daemons open
    # files by absolute path, so every directory above base must be searchable by that user.
    base.chmod(0o755)
    _check_reachable_by_postfix(base)
    instance.queue_dir.mkdir(mode=0o755, exist_ok=True)
    instance.data_dir.mkdir(mode=0o700, exist_ok=True)
    mail_spool = base / "mail"
    mail_spool.mkdir(exist_ok=True)
    mail_spool.chmod(0o1777)  # local(8) creates each mailbox file as its recipient
    _chown_to_postfix(instance.data_dir)
    write_minimal_config(
        instance.config_dir,
        instance.queue_dir,
        instance.data_dir,
        port,
        maillog=instance.maillog,
        syslog_name=instance.syslog_name,
        extra=extra,
    )
    instance.save()
    # "postfix check" creates the queue's subdirectories with the owners and modes Postfix wants.
    instance.check()
    return instance


def _check_reachable_by_postfix(path: Path) -> None:
    """Raise unless the ``postfix`` user may search every directory from / down to ``path``."""
    try:
        user = pwd.getpwnam("postfix")
    except KeyError:
        raise SandboxError("no 'postfix' user: install Debian's postfix package") from None
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if "postfix" in g.gr_mem}
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            raise SandboxError(
                f"the postfix user cannot enter {directory} (mode {st.st_mode & 0o7777:o}): put the "
                "Postfix instance under a world-searchable directory (pytest's tmp_path is not)"
            )


def _chown_to_postfix(path: Path) -> None:
    try:
        uid = pwd.getpwnam("postfix").pw_uid
        gid = grp.getgrnam("postfix").gr_gid
    except KeyError:
        raise SandboxError("no 'postfix' user: install Debian's postfix package") from None
    os.chown(path, uid, gid)
