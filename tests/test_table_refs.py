"""``reconciler.postfix.table_refs``: which table files a parameter value names, as Postfix splits it.

Pure unit tests (no Postfix, no database) of the list splitting that import (``adopt.tables``) and
validate (``validate.tables``) share: whitespace and commas outside ``{}`` separate, ``{...}``
nests, ``unionmap:``/``pipemap:`` list tables, ``inline:``/``static:``/``randmap:`` hold data,
``proxy:`` wraps, and caches Postfix writes itself are no tables. Run by pytest.
"""

from __future__ import annotations

import pytest

from reconciler.postfix import TableRef, brace_body, split_list, table_refs

A, B = "/etc/postfix/a.cf", "/etc/postfix/b.cf"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hash:/etc/postfix/x", [("hash", "/etc/postfix/x")]),
        ("hash:/etc/postfix/x,regexp:/etc/postfix/y", [("hash", "/etc/postfix/x"), ("regexp", "/etc/postfix/y")]),
        ("  proxy:mysql:/etc/postfix/a.cf ,\n\tcidr:/c  ", [("mysql", A), ("cidr", "/c")]),
        (f"unionmap:{{mysql:{A}, mysql:{B}}}", [("mysql", A), ("mysql", B)]),
        (f"unionmap:{{ mysql:{A},mysql:{B} }}", [("mysql", A), ("mysql", B)]),
        (f"pipemap:{{hash:{A}, texthash:{B}}}", [("hash", A), ("texthash", B)]),
        (f"proxy:unionmap:{{proxy:mysql:{A}, hash:{B}}}", [("mysql", A), ("hash", B)]),
        (f"unionmap:{{pipemap:{{hash:{A}, hash:{B}}}, cidr:/c}}", [("hash", A), ("hash", B), ("cidr", "/c")]),
        (f"hash:/x unionmap:{{mysql:{A}}}, hash:/y", [("hash", "/x"), ("mysql", A), ("hash", "/y")]),
        ("inline:{ key=value, {key = text with spaces} }", []),
        ("inline:{ user@example.com=hash:/etc/postfix/not-a-table }", []),
        ("static:{some text}", []),
        ("static:{hash:/etc/postfix/not-a-table}", []),
        ("randmap:{a, b}", []),
        ("randmap:{smtp:[a.example], smtp:/x}", []),
        ("regexp:{ {/^x/ REJECT hash:/nope} }", []),
        (f"unionmap:{{inline:{{a=b}}, static:{{x y}}, mysql:{A}}}", [("mysql", A)]),
        ("static:2000", []),
        ("lmtp:unix:private/dovecot-lmtp", []),
        ("unix:private/policyd-spf", []),
        ("check_policy_service unix:private/policyd-spf, check_sender_access hash:/s", [("hash", "/s")]),
        ("check_policy_service { inet:127.0.0.1:10023, timeout=10s, default_action=DUNNO }", []),
        ("inet:localhost:8891, inet:localhost:8893", []),
        ("unix:/run/opendkim/opendkim.sock", [("unix", "/run/opendkim/opendkim.sock")]),  # type filtered by callers
        ("127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128 [fe80::]/64", []),
        ("PATH=/bin:/usr/bin:/usr/local/bin ddd $daemon_directory/$process_name", []),
        ("proxy:hash:relative/path nis:mail.aliases", []),
        ("hash:/x}", [("hash", "/x}")]),  # a "}" with no "{" is an ordinary character, as for Postfix
        ("", []),
    ],
)
def test_table_refs(value: str, expected: list[tuple[str, str]]) -> None:
    assert [(r.type, r.path) for r in table_refs({"p": value})] == expected


def test_parameter_names_and_caches() -> None:
    """Each ref keeps its parameter (master.cf's service/type/name too); caches Postfix writes are skipped."""
    params = {
        "virtual_alias_maps": f"unionmap:{{mysql:{A}, mysql:{B}}}",
        "submission/inet/smtpd_sender_restrictions": "check_sender_access hash:/s",
        "smtp_tls_session_cache_database": "btree:/var/lib/postfix/smtp_scache",
        "smtpd_tls_session_cache_database": "btree:/var/lib/postfix/smtpd_scache",
        "address_verify_map": "btree:/var/lib/postfix/verify_cache",
        "postscreen_cache_map": "btree:/var/lib/postfix/postscreen_cache",
        "smtp_sasl_auth_cache_name": "btree:/var/lib/postfix/sasl_auth_cache",
        "relay/unix/smtp_tls_session_cache_database": "btree:/var/lib/postfix/relay_scache",
    }
    assert list(table_refs(params)) == [
        TableRef("mysql", A, "virtual_alias_maps"),
        TableRef("mysql", B, "virtual_alias_maps"),
        TableRef("hash", "/s", "submission/inet/smtpd_sender_restrictions"),
    ]


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("a, b c,,d", ["a", "b", "c", "d"]),
        ("x:{a, b} y", ["x:{a, b}", "y"]),
        ("{ a {b, c} }, d", ["{ a {b, c} }", "d"]),
        ("a} b", ["a}", "b"]),
        ("x:{unclosed, y", ["x:{unclosed, y"]),
    ],
)
def test_split_list(value: str, items: list[str]) -> None:
    assert split_list(value) == items


@pytest.mark.parametrize(
    ("item", "body"),
    [("{ a, b }", "a, b"), ("{a}{b}", None), ("{a", None), ("a}", None), ("{{a} b}", "{a} b"), ("{}", "")],
)
def test_brace_body(item: str, body: str | None) -> None:
    assert brace_body(item) == body
