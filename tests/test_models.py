"""Unit tests of the pure models: addresses, domains, password hashes, unknown keys."""

import pytest
from pydantic import ValidationError

from reconciler.models import AgentConfig, DomainFile, address_problem, domain_problem


@pytest.mark.parametrize(
    "address",
    ["john@example.org", "o'brien@example.com", "a.b+c@sub.example.net", "x_y-z@example.org", "{tag}@example.org"],
)
def test_valid_addresses(address: str) -> None:
    """RFC 5321 dot-string local parts, including a quote, are accepted."""
    assert address_problem(address) is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("john", "no @"),
        ("@example.org", "empty local part"),
        ("jo hn@example.org", "whitespace"),
        ("john\n@example.org", "control character"),
        ("john\x00@example.org", "control character"),
        ('"john"@example.org', "invalid local part"),
        ("john..doe@example.org", "invalid local part"),
        (".john@example.org", "invalid local part"),
        ("john@example", "two labels"),
        ("john@-example.org", "invalid domain label"),
        ("john@Example.org", "lower case"),
        ("a" * 65 + "@example.org", "64"),
        ("john@exa,mple.org", "invalid domain label"),
        ("john@example.org\u2028", "control character"),
    ],
)
def test_invalid_addresses(address: str, reason: str) -> None:
    """Malformed addresses are refused with a reason naming what is wrong."""
    problem = address_problem(address)
    assert problem is not None
    assert reason in problem


def test_catch_all_only_where_allowed() -> None:
    """A catch-all "@domain" is an alias source, never a mailbox."""
    assert address_problem("@example.org", allow_catch_all=True) is None
    assert address_problem("@example.org") is not None


def test_domain_rules() -> None:
    """Domains are lower-case LDH names with two labels or more."""
    assert domain_problem("example.org") is None
    assert domain_problem("xn--bcher-kva.example") is None
    assert domain_problem("localhost") is not None
    assert domain_problem("ex_ample.org") is not None


def test_plaintext_password_refused() -> None:
    """A password without a hash scheme prefix, or with a plaintext scheme, is refused."""
    base = {"domain": "example.org", "mailboxes": [{"address": "a@example.org", "password": "secret"}]}
    with pytest.raises(ValidationError, match="plaintext"):
        DomainFile.model_validate(base)
    base["mailboxes"][0]["password"] = "{PLAIN}secret"  # type: ignore[index]
    with pytest.raises(ValidationError, match="plaintext"):
        DomainFile.model_validate(base)
    base["mailboxes"][0]["password"] = "{BLF-CRYPT}$2y$05$abcdefghijklmnopqrstuv"  # type: ignore[index]
    assert DomainFile.model_validate(base).mailboxes[0].address == "a@example.org"


def test_strict_types_and_unknown_keys() -> None:
    """Numbers are not coerced to strings and unknown keys are errors naming the key."""
    with pytest.raises(ValidationError, match="string"):
        DomainFile.model_validate({"domain": "example.org", "mailboxes": [{"address": 1, "password": "{X}y"}]})
    with pytest.raises(ValidationError, match="quota"):
        DomainFile.model_validate({"domain": "example.org", "quota": 5})


def test_config_unknown_key_named() -> None:
    """An unknown configuration key is reported with its full location."""
    with pytest.raises(ValidationError) as info:
        AgentConfig.model_validate({"mysql": {"pasword_file": "/x"}})
    assert info.value.errors()[0]["loc"] == ("mysql", "pasword_file")


def test_config_defaults_match_spec() -> None:
    """Defaults are those SPEC section 3 fixes."""
    cfg = AgentConfig()
    assert cfg.postfix.config_dir == "/etc/postfix"
    assert cfg.api.listen == "127.0.0.1:9480"
    assert cfg.policy.max_delete_fraction == 0.25
    assert cfg.source.signatures == "off"
