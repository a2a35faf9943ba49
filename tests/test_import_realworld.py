"""`reconciler import` of configurations as well-known mail setups write them, on real Postfix and MariaDB.

Each host is a private Postfix instance (not started: import and diff only read its files, with
Postfix's own tools) whose main.cf, master.cf and table files reproduce a documented setup, with
``/etc/postfix`` and ``/etc/aliases`` moved into the instance and the harness's sandbox parameters
(queue, data directory, loopback) set with ``postconf -e``; the session's private MariaDB holds the
three mail tables of SPEC section 2 with the guide's rows. Each import must exit 0, ``diff`` against
the result must exit 0, and no secret value may reach the repository or the output. Also: a
``unionmap:{...}`` of two files on the guide host, and a database lacking one of the three tables.
Fixtures and helpers come from tests/test_import.py (``guide_host``, ``GuideHost``, ``agent_config``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mailhost import reset_database
from test_import import GUIDE_ROWS, GuideHost, _tree, _write, agent_config, guide_host

from harness.mariadb import MariaDB
from harness.postfix import PostfixInstance, cool_down, sandbox_parameters

__all__ = ["guide_host"]  # the fixture, used below


@pytest.fixture
def bare_host(mariadb: MariaDB, postfix_instance: object, tmp_path: Path) -> GuideHost:
    """A private Postfix instance (not started) and the agent configured for it, init-db done, the guide's rows."""
    reset_database(mariadb)
    instance: PostfixInstance = postfix_instance(start=False)  # type: ignore[operator]
    outside = instance.base / "sysetc" / "aliases"
    outside.parent.mkdir()
    config, secrets = agent_config(tmp_path, mariadb, instance.config_dir, outside)
    host = GuideHost(tmp_path, mariadb, instance, outside, secrets, config, mariadb.mailuser_password)
    assert host.cli("init-db").returncode == 0
    host.sql(GUIDE_ROWS)
    return host


def _live(host: GuideHost, text: str) -> str:
    """A documented file's text with /etc/postfix, /etc/aliases and /etc/mailname moved into the private instance."""
    text = text.replace("/etc/postfix/", f"{host.postfix.config_dir}/").replace("/etc/aliases", str(host.outside))
    return text.replace("/etc/mailname", str(host.outside.parent / "mailname"))


def install(host: GuideHost, main_cf: str, master_cf: str, files: dict[str, tuple[str, int, str]]) -> None:
    """Write main.cf, master.cf and ``files`` (path relative to the config dir: text, mode, group), sandboxed."""
    live = host.postfix.config_dir
    _write(live / "main.cf", _live(host, main_cf))
    _write(live / "master.cf", _live(host, master_cf))
    for rel, (text, mode, group) in files.items():
        _write(live / rel, text, mode, group)
    p = host.postfix
    sandbox = sandbox_parameters(p.queue_dir, p.data_dir, maillog=p.maillog, syslog_name=p.syslog_name)
    p.postconf("-e", *(f"{name}={value}" for name, value in sandbox.items()))
    cool_down(live / "main.cf", live / "master.cf", *(live / rel for rel in files))


def import_and_diff(host: GuideHost, secrets: list[str]) -> tuple[Path, str]:
    """Import into a new DIR (exit 0), diff against it (exit 0), no secret anywhere: (DIR, everything printed)."""
    out = host.base / "imported"
    res = host.cli("import", "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    diff = host.cli("diff", config=host.config_for(out))
    assert diff.returncode == 0, diff.stdout + diff.stderr
    printed = res.stdout + res.stderr + diff.stdout + diff.stderr
    history = subprocess.run(
        ["git", "-C", str(out), "log", "-p", "--all"], capture_output=True, text=True, check=True
    ).stdout
    files = _tree(out)
    held = {p.read_text().rstrip("\n") for p in host.secrets.iterdir()} if host.secrets.exists() else set()
    for value in secrets:
        assert value not in printed and value not in history, value
        assert not [name for name, data in files.items() if value.encode() in data], value
        assert value in held, value  # it went to [secrets].dir instead
    return out, printed


# -- 1. unionmap:{...} on the guide host ------------------------------------------------------------


def test_unionmap_of_two_files_imports(guide_host: GuideHost) -> None:
    """virtual_alias_maps = unionmap:{proxy:mysql:..., texthash:...}: both files imported, no '}' path, diff empty."""
    host = guide_host
    live = host.postfix.config_dir
    _write(live / "virtual-extra", "postmaster@example.org john@example.org\n")
    main = (live / "main.cf").read_text()
    old = "virtual_alias_maps = proxy:mysql:$config_directory/sql/mysql-virtual-alias-maps.cf"
    assert old in main
    main = main.replace(
        old,
        "virtual_alias_maps = unionmap:{proxy:mysql:$config_directory/sql/mysql-virtual-alias-maps.cf,\n"
        "    texthash:$config_directory/virtual-extra}",
    )
    _write(live / "main.cf", main)
    cool_down(live / "main.cf", live / "virtual-extra")
    out, printed = import_and_diff(host, [host.mysql_password])
    files = _tree(out)
    assert "postfix/sql/mysql-virtual-alias-maps.cf" in files and "postfix/virtual-extra" in files
    assert not [name for name in files if "}" in name], sorted(files)
    assert "virtual-extra" not in printed.partition("not imported")[2].partition("\n")[0]
    # Postfix itself reads both tables of the union.
    lookup = subprocess.run(
        ["postmap", "-c", str(live), "-q", "postmaster@example.org", f"texthash:{live}/virtual-extra"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lookup.stdout.strip() == "john@example.org"


# -- 2a. PostfixAdmin: DOCUMENTS/POSTFIX_CONF.txt ----------------------------------------------------

# "Contents of the files" of POSTFIX_CONF.txt, verbatim; its password "password" becomes a distinctive
# value when the files are written, so that the test can look for it.
PFA_PASSWORD = "PfAdmin-Db-Secret-52e9d1"
PFA_DOC = """\
mysql_virtual_alias_maps.cf:
user = postfix
password = password
hosts = localhost
dbname = postfix
query = SELECT goto FROM alias WHERE address='%s' AND active = '1'
#expansion_limit = 100

mysql_virtual_alias_domain_maps.cf:
user = postfix
password = password
hosts = localhost
dbname = postfix
query = SELECT goto FROM alias,alias_domain WHERE alias_domain.alias_domain = '%d' and alias.address = CONCAT('%u', '@', alias_domain.target_domain) AND alias.active = 1

mysql_virtual_alias_domain_catchall_maps.cf:
# handles catch-all settings of target-domain
user = postfix
password = password
hosts = localhost
dbname = postfix
query  = SELECT goto FROM alias,alias_domain WHERE alias_domain.alias_domain = '%d' and alias.address = CONCAT('@', alias_domain.target_domain) AND alias.active = 1

mysql_virtual_domains_maps.cf:
user = postfix
password = password
hosts = localhost
dbname = postfix
query          = SELECT domain FROM domain WHERE domain='%s' AND active = '1'
#query          = SELECT domain FROM domain WHERE domain='%s'
#optional query to use when relaying for backup MX
#query           = SELECT domain FROM domain WHERE domain='%s' AND backupmx = '0' AND active = '1'
#expansion_limit = 100

mysql_virtual_mailbox_maps.cf:
user = postfix
password = password
hosts = localhost
dbname = postfix
query           = SELECT CONCAT(domain,'/',maildir) FROM mailbox WHERE username='%s' AND active = '1'
#expansion_limit = 100

mysql_virtual_alias_domain_mailbox_maps.cf:
user = postfix
password = password
hosts = localhost
dbname = postfix
query = SELECT CONCAT(domain,'/',maildir) FROM mailbox,alias_domain WHERE alias_domain.alias_domain = '%d' and mailbox.username = CONCAT('%u', '@', alias_domain.target_domain) AND mailbox.active = 1
"""
PFA_FILES = {
    head.partition(":\n")[0]: head.partition(":\n")[2]
    .rstrip("\n")
    .replace("password = password", f"password = {PFA_PASSWORD}")
    + "\n"
    for head in PFA_DOC.split("\n\n")
}
PFA_MAIN = """\
compatibility_level = 3.6
myhostname = mail.example.org
mydestination = localhost
virtual_mailbox_base = /var/vmail
virtual_uid_maps = static:2000
virtual_gid_maps = static:2000
virtual_transport = lmtp:unix:private/dovecot-lmtp

virtual_mailbox_domains = proxy:mysql:/etc/postfix/sql/mysql_virtual_domains_maps.cf
virtual_alias_maps =
   proxy:mysql:/etc/postfix/sql/mysql_virtual_alias_maps.cf,
   proxy:mysql:/etc/postfix/sql/mysql_virtual_alias_domain_maps.cf,
   proxy:mysql:/etc/postfix/sql/mysql_virtual_alias_domain_catchall_maps.cf
virtual_mailbox_maps =
   proxy:mysql:/etc/postfix/sql/mysql_virtual_mailbox_maps.cf,
   proxy:mysql:/etc/postfix/sql/mysql_virtual_alias_domain_mailbox_maps.cf
"""


def _master_dist() -> str:
    path = Path("/usr/share/postfix/master.cf.dist")  # what Debian's postinst copies to master.cf
    assert path.is_file(), f"{path} is missing: Debian package postfix"
    return path.read_text()


def test_postfixadmin_documented_setup(bare_host: GuideHost) -> None:
    """PostfixAdmin's POSTFIX_CONF.txt: six proxy:mysql: configs in sql/, one password; imported as opaque configs."""
    host = bare_host
    # hosts = localhost as documented: the files are imported, never queried (PostfixAdmin's tables).
    install(host, PFA_MAIN, _master_dist(), {f"sql/{n}": (t, 0o640, "postfix") for n, t in PFA_FILES.items()})
    out, _printed = import_and_diff(host, [PFA_PASSWORD])
    files = _tree(out)
    assert sorted(n for n in files if n.startswith("postfix/sql/")) == sorted(f"postfix/sql/{n}" for n in PFA_FILES)
    secret = files["postfix/sql/mysql_virtual_alias_maps.cf"].decode().split("password = ")[1].split("\n")[0]
    assert secret == "${secret:mysql_postfix_password}"  # one name for the one value of all six
    for name, text in PFA_FILES.items():
        assert files[f"postfix/sql/{name}"] == text.replace(PFA_PASSWORD, secret).encode()
    assert sorted(n for n in files if n.startswith("domains/")) == [
        "domains/example.com.yaml",
        "domains/example.net.yaml",
        "domains/example.org.yaml",
    ]


# -- 2b. docker-mailserver: target/postfix/main.cf, maps/, the relay helper's texthash SASL map -----

DMS_RELAY_SECRETS = ["dms-Relay-Pass-0b8e44", "dms:Other+Pass 7c1f"]
# docker-mailserver's main.cf (pcre: maps as regexp:, since postfix-pcre is not among our packages),
# with what its start-up scripts add: the relay's SASL and sender-dependent maps, sender_access,
# the accounts' texthash maps and the regexp aliases.
DMS_MAIN = """\
# See /usr/share/postfix/main.cf.dist for a commented, more complete version

smtpd_banner = $myhostname ESMTP
biff = no
append_dot_mydomain = no
readme_directory = no

# Basic configuration
# myhostname =
alias_maps = hash:/etc/aliases
alias_database = hash:/etc/aliases
mydestination = $myhostname, localhost.$mydomain, localhost
relayhost =
mynetworks = 127.0.0.0/8 [::1]/128 [fe80::]/64
mailbox_size_limit = 0
recipient_delimiter = +
inet_interfaces = all
inet_protocols = all

# TLS parameters
smtpd_tls_chain_files = /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtp_tls_security_level = may
smtp_tls_loglevel = 1
tls_ssl_options = NO_COMPRESSION, NO_RENEGOTIATION
tls_preempt_cipherlist = yes
smtpd_tls_protocols = !SSLv2,!SSLv3,!TLSv1,!TLSv1.1
smtp_tls_protocols = !SSLv2,!SSLv3,!TLSv1,!TLSv1.1
smtpd_tls_mandatory_ciphers = high
smtpd_tls_mandatory_protocols = !SSLv2,!SSLv3,!TLSv1,!TLSv1.1
smtpd_tls_exclude_ciphers = aNULL, SEED, CAMELLIA, RSA+AES, SHA1
smtpd_tls_dh1024_param_file = /etc/postfix/dhparams.pem
smtpd_tls_CApath = /etc/ssl/certs
smtp_tls_CApath = /etc/ssl/certs

# Settings to prevent SPAM early
smtpd_helo_required = yes
smtpd_delay_reject = yes
smtpd_helo_restrictions = permit_mynetworks, reject_invalid_helo_hostname, permit
smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated defer_unauth_destination
smtpd_recipient_restrictions = permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination, \
reject_unauth_pipelining, reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname, reject_unknown_recipient_domain
smtpd_client_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination, reject_unauth_pipelining
smtpd_sender_restrictions = check_sender_access hash:/etc/postfix/maps/sender_access, $dms_smtpd_sender_restrictions
smtpd_discard_ehlo_keywords = silent-discard, dsn
disable_vrfy_command = yes

# Custom defined parameters for DMS:
dms_smtpd_sender_restrictions = permit_sasl_authenticated, permit_mynetworks, reject_unknown_sender_domain
# Submission ports 587 and 465 support for SPOOF_PROTECTION=1
mua_sender_restrictions = reject_authenticated_sender_login_mismatch, $dms_smtpd_sender_restrictions

# Postscreen settings to drop zombies/open relays/spam early
postscreen_dnsbl_action = enforce
postscreen_dnsbl_sites =
    zen.spamhaus.org=127.0.0.[2..11]*3
    bl.mailspike.net=127.0.0.[2;14;13;12;11;10]
    b.barracudacentral.org*2
    list.dnswl.org=127.0.[0..255].0*-2
postscreen_dnsbl_threshold = 3
postscreen_dnsbl_whitelist_threshold = -1
postscreen_greet_action = enforce
postscreen_bare_newline_action = enforce

# SASL
smtpd_sasl_auth_enable = no
smtpd_sasl_path = /dev/shm/sasl-auth.sock
smtpd_sasl_type = dovecot
smtpd_sasl_security_options = noanonymous
smtpd_sasl_local_domain = $mydomain
broken_sasl_auth_clients = yes

# Postfix lookup tables for verifying valid users and managed mail domains:
virtual_mailbox_domains = /etc/postfix/vhost
virtual_mailbox_maps = texthash:/etc/postfix/vmailbox
virtual_alias_maps = texthash:/etc/postfix/virtual regexp:/etc/postfix/regexp
virtual_transport = lmtp:unix:/var/run/dovecot/lmtp

# Milters used by DKIM
milter_protocol = 6
milter_default_action = accept
smtpd_milters = inet:localhost:8891
non_smtpd_milters = $smtpd_milters

# Header checks for content inspection on receiving
header_checks = regexp:/etc/postfix/maps/header_checks.regexp

# Remove unwanted headers that reveal our privacy
smtp_header_checks = regexp:/etc/postfix/maps/sender_header_filter.regexp

compatibility_level = 2

# Relay host (scripts/helpers/relay.sh)
smtp_sasl_auth_enable = yes
smtp_sasl_security_options = noanonymous
smtp_sasl_password_maps = texthash:/etc/postfix/sasl_passwd
sender_dependent_relayhost_maps = texthash:/etc/postfix/relayhost_map
"""
DMS_MASTER_EXTRA = """
submission inet n       -       n       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=dovecot
  -o smtpd_sasl_path=private/auth
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_sasl_authenticated_header=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_sender_restrictions=$mua_sender_restrictions
  -o milter_macro_daemon_name=ORIGINATING
  -o cleanup_service_name=sender-cleanup

sender-cleanup unix n   -       n       -       0       cleanup
  -o header_checks=regexp:/etc/postfix/maps/sender_header_filter.regexp

policyd-spf  unix  -       n       n       -       0       spawn
    user=policyd-spf argv=/usr/bin/policyd-spf

smtp-amavis     unix    -       -       n       -       2       smtp
  -o smtp_data_done_timeout=1200
  -o smtp_send_xforward_command=yes
  -o disable_dns_lookups=yes
  -o max_use=20
  -o smtp_tls_security_level=none
"""
DMS_FILES = {
    "maps/sender_access": (
        "# postfix-send-access.cf\nspammer@example.net REJECT\n@junk.example REJECT\n",
        0o644,
        "root",
    ),
    "maps/header_checks.regexp": ("/^X-Spam-Flag: YES/ REJECT spam\n", 0o644, "root"),
    "maps/sender_header_filter.regexp": (
        "/^Received: from .*/ IGNORE\n/^X-Originating-IP:/ IGNORE\n/^X-Mailer:/ IGNORE\n/^User-Agent:/ IGNORE\n",
        0o644,
        "root",
    ),
    "vhost": ("example.org\nexample.com\n", 0o644, "root"),
    "vmailbox": ("john@example.org example.org/john/\njane@example.org example.org/jane/\n", 0o644, "root"),
    "virtual": ("jack@example.org john@example.org\n", 0o644, "root"),
    "regexp": ("/^sales-.*@example\\.org$/ john@example.org\n", 0o644, "root"),
    "sasl_passwd": (
        f"@example.org relay-user@example.org:{DMS_RELAY_SECRETS[0]}\n"
        f"[smtp.relay.example]:587 other-user:{DMS_RELAY_SECRETS[1]}\n",
        0o600,
        "root",
    ),
    "relayhost_map": ("@example.org [smtp.relay.example]:587\n", 0o644, "root"),
    "dhparams.pem": ("-----BEGIN DH PARAMETERS-----\n-----END DH PARAMETERS-----\n", 0o644, "root"),
}


def test_docker_mailserver_style_setup(bare_host: GuideHost) -> None:
    """docker-mailserver: maps/ (hash sender_access, regexp header checks), texthash maps, a texthash SASL map."""
    host = bare_host
    install(host, DMS_MAIN, _master_dist() + DMS_MASTER_EXTRA, DMS_FILES)
    live = host.postfix.config_dir
    subprocess.run(["postmap", "-c", str(live), f"hash:{live}/maps/sender_access"], check=True)
    _write(host.outside, "postmaster: root\n")
    subprocess.run(["postalias", "-c", str(live), f"hash:{host.outside}"], check=True)
    out, printed = import_and_diff(host, DMS_RELAY_SECRETS)
    files = _tree(out)
    for rel in DMS_FILES:
        if rel not in ("vhost", "dhparams.pem", "sasl_passwd"):  # vhost and dhparams.pem: not tables
            assert files[f"postfix/{rel}"] == DMS_FILES[rel][0].encode(), rel
    assert f"rootfs{host.outside}" in files
    sasl = files["postfix/sasl_passwd"].decode()
    assert sasl.startswith("@example.org relay-user@example.org:${secret:") and "other-user:${secret:" in sasl
    assert (live / "sasl_passwd").stat().st_mode & 0o777 == 0o640  # tightened as the agent keeps it
    # Files named by path, not as tables: said so, not called unused.
    assert "dhparams.pem (smtpd_tls_dh1024_param_file), vhost (virtual_mailbox_domains)" in printed
    assert "do not use them" not in printed


# -- 2c. Debian 12's main.cf for "Internet Site", as the postfix package's postinst writes it --------

# postinst: main.cf.debian, then main.cf.tls (the snakeoil key exists), then these postconf -e, in order.
DEBIAN_POSTCONF = [
    "smtpd_relay_restrictions=permit_mynetworks permit_sasl_authenticated defer_unauth_destination",
    "myhostname=mail.example.org",
    "alias_maps=hash:/etc/aliases",
    "alias_database=hash:/etc/aliases",
    "myorigin=/etc/mailname",
    "mydestination=$myhostname, example.org, mail.example.org, localhost.example.org, localhost",
    "relayhost=",
    "mynetworks=127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128",
    "mailbox_size_limit=0",
    "recipient_delimiter=+",
    "inet_interfaces=all",
    "inet_protocols=all",
]
# What an administrator adds next: OpenDKIM and OpenDMARC milters, postfix-policyd-spf-python.
DEBIAN_ADDITIONS = """
smtpd_milters = unix:/run/opendkim/opendkim.sock, inet:localhost:8893
non_smtpd_milters = $smtpd_milters
milter_default_action = accept
policyd-spf_time_limit = 3600
smtpd_recipient_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination,
    check_policy_service unix:private/policyd-spf
"""
DEBIAN_MASTER_EXTRA = """policyd-spf  unix  -       n       n       -       0       spawn
    user=policyd-spf argv=/usr/bin/policyd-spf
"""
DEBIAN_ALIASES = "# See man 5 aliases for format\npostmaster:    root\nroot: admin@example.org\n"


def test_debian_internet_site_setup(bare_host: GuideHost) -> None:
    """Debian 12's "Internet Site" main.cf (snakeoil TLS, hash:/etc/aliases, readme_directory = no) plus milters and policyd-spf."""
    host = bare_host
    share = Path("/usr/share/postfix")
    assert (share / "main.cf.debian").is_file(), "Debian package postfix"
    live = host.postfix.config_dir
    _write(live / "main.cf", (share / "main.cf.debian").read_text() + (share / "main.cf.tls").read_text())
    cool_down(live / "main.cf")
    host.postfix.postconf("-e", *DEBIAN_POSTCONF)  # the very edits of the postinst, by Postfix's postconf
    main = (live / "main.cf").read_text()
    assert "readme_directory = no" in main and "compatibility_level = 3.6" in main
    assert "smtpd_tls_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem" in main
    assert "alias_maps = hash:/etc/aliases\n" in main
    install(host, main + DEBIAN_ADDITIONS, _master_dist() + DEBIAN_MASTER_EXTRA, {})
    _write(host.outside, DEBIAN_ALIASES)
    _write(host.outside.parent / "mailname", "example.org\n")  # written by the postinst too
    subprocess.run(["postalias", "-c", str(live), f"hash:{host.outside}"], check=True)
    out, printed = import_and_diff(host, [])
    files = _tree(out)
    assert sorted(n for n in files if not n.startswith("domains/")) == [
        "README.md",
        "postfix/main.cf",
        "postfix/master.cf",
        f"rootfs{host.outside}",
        "schemas/domain.schema.json",
    ]
    assert files[f"rootfs{host.outside}"] == DEBIAN_ALIASES.encode()
    # Milters, the policy service and Postfix's own caches are no tables: nothing said about them.
    for word in ("opendkim", "8893", "policyd-spf", "smtp_scache", "error", "warning"):
        assert word not in printed, word


# -- 2d. An LDAP directory: Kolab's and Univention's ldap_table(5) files --------------------------

# bind_pw in two files (the same service account), a nested ``domain = ldap:...`` table as Kolab
# writes it, and a SASL EXTERNAL bind over ldapi:// with no password at all (as fripost does).
LDAP_SECRET = "Ldap-Service-Bind-9f3e27"
LDAP_MAIN = """\
myhostname = mail.example.org
mydestination = ldap:/etc/postfix/ldap/mydestination.cf
local_recipient_maps = ldap:/etc/postfix/ldap/local_recipient_maps.cf
virtual_alias_maps = proxy:ldap:/etc/postfix/ldap/virtual_alias_maps.cf
transport_maps = ldap:/etc/postfix/ldap/transport_maps.cf
proxy_read_maps = $local_recipient_maps $mydestination $virtual_alias_maps $transport_maps
alias_maps = hash:/etc/aliases
compatibility_level = 3.6
"""
LDAP_BIND = f"""\
bind_dn = uid=kolab-service,ou=Special Users,dc=mgmt,dc=com
bind_pw = {LDAP_SECRET}
"""
LDAP_FILES = {
    "ldap/mydestination.cf": (
        "server_host = localhost\nserver_port = 389\nversion = 3\nsearch_base = cn=kolab,cn=config\n"
        "scope = sub\n\n" + LDAP_BIND + "\nquery_filter = (&(associatedDomain=%s)(associatedDomain=*))\n"
        "result_attribute = associatedDomain\n",
        0o640,
        "postfix",
    ),
    "ldap/local_recipient_maps.cf": (
        "server_host = localhost\nserver_port = 389\nversion = 3\nsearch_base = dc=hosted,dc=com\nscope = sub\n\n"
        "domain = ldap:/etc/postfix/ldap/mydestination.cf\n\n" + LDAP_BIND + "\n"
        "query_filter = (&(|(mail=%s)(alias=%s))(|(objectclass=kolabinetorgperson)(objectclass=kolabgroupofuniquenames)))\n"
        "result_attribute = mail\n",
        0o640,
        "postfix",
    ),
    "ldap/virtual_alias_maps.cf": (
        "server_host      = ldapi://%2Fprivate%2Fldapi/\nversion          = 3\n"
        "search_base      = fvd=%d,ou=virtual,dc=fripost,dc=org\ndomain           = static:all\n"
        "scope            = one\nbind             = sasl\nsasl_mechs       = EXTERNAL\n"
        "query_filter     = (&(objectClass=FripostVirtualAlias)(fvl=%u))\nresult_attribute = fripostMaildrop\n",
        0o644,
        "root",
    ),
    "ldap/transport_maps.cf": (
        "# Univention: bind_pw is the machine secret\nserver_host = ldap://ucs.example.org:7389\n"
        "search_base = dc=example,dc=org\nquery_filter = (&(objectClass=univentionMailDomainname)(cn=%s))\n"
        "result_attribute = cn\nresult_format = smtp:[%s]\nscope = sub\nversion = 3\n"
        "bind_dn = cn=mail$,cn=dc,cn=computers,dc=example,dc=org\n"
        f"bind_pw = {LDAP_SECRET[::-1]}\nstart_tls = yes\n",
        0o640,
        "postfix",
    ),
}


def test_ldap_directory_setup(bare_host: GuideHost) -> None:
    """ldap: and proxy:ldap: tables: each bind_pw a secret (one name for one value), a SASL bind imported as it is."""
    host = bare_host
    install(host, LDAP_MAIN, _master_dist(), LDAP_FILES)
    _write(host.outside, "postmaster: root\n")
    subprocess.run(["postalias", "-c", str(host.postfix.config_dir), f"hash:{host.outside}"], check=True)
    out, printed = import_and_diff(host, [LDAP_SECRET, LDAP_SECRET[::-1]])
    files = _tree(out)
    assert sorted(n for n in files if n.startswith("postfix/ldap/")) == sorted(f"postfix/{n}" for n in LDAP_FILES)
    refs = {}
    for rel in ("ldap/mydestination.cf", "ldap/local_recipient_maps.cf", "ldap/transport_maps.cf"):
        text = files[f"postfix/{rel}"].decode()
        (line,) = [line for line in text.splitlines() if line.startswith("bind_pw = ")]
        assert line.startswith("bind_pw = ${secret:") and line.endswith("}"), line
        refs[rel] = line
        original = LDAP_FILES[rel][0]
        assert text == original.replace(next(x for x in original.splitlines() if x.startswith("bind_pw = ")), line)
    assert refs["ldap/mydestination.cf"] == refs["ldap/local_recipient_maps.cf"] != refs["ldap/transport_maps.cf"]
    assert files["postfix/ldap/virtual_alias_maps.cf"] == LDAP_FILES["ldap/virtual_alias_maps.cf"][0].encode()
    assert "error" not in printed and "warning" not in printed


# -- 3. A database without one of the three mail tables ----------------------------------------------


DROPS = {  # whole statements, no SQL put together from pieces
    "virtual_domains": "DROP TABLE mailserver.virtual_domains",
    "virtual_users": "DROP TABLE mailserver.virtual_users",
    "virtual_aliases": "DROP TABLE mailserver.virtual_aliases",
}


@pytest.mark.parametrize("table", sorted(DROPS))
def test_missing_mail_table_exits_2_writing_nothing(bare_host: GuideHost, table: str) -> None:
    """Without virtual_domains, virtual_users or virtual_aliases: exit 2, one line naming it, nothing written."""
    host = bare_host
    install(host, PFA_MAIN, _master_dist(), {f"sql/{n}": (t, 0o644, "postfix") for n, t in PFA_FILES.items()})
    conn = host.db.root_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET FOREIGN_KEY_CHECKS = 0")
            cur.execute(DROPS[table])
        conn.commit()
    finally:
        conn.close()
    before = host.live_fingerprint()
    out = host.base / "imported"
    res = host.cli("import", "--out", str(out))
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and table in lines[0], lines
    assert PFA_PASSWORD not in res.stdout + res.stderr
    assert not out.exists()
    assert not host.secrets.exists()
    assert not [p for p in host.base.iterdir() if p.name.startswith(".imported")]
    assert host.live_fingerprint() == before  # the world-readable configs were not tightened
