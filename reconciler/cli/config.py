"""The CLI's exit codes and its reading of the agent configuration; used by every command module.

Exit codes of SPEC section 4: 0 success, 1 invalid/changes/failed, 2 could not run. The
configuration is ``--config``, else ``$RECONCILER_CONFIG``, else /etc/reconciler/config.toml;
every failure to read it is a ``ConfigError`` naming the file and the key (exit 2 via ``main``).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from reconciler.errors import ReconcilerError
from reconciler.models import AgentConfig, load_config

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
DEFAULT_CONFIG = "/etc/reconciler/config.toml"


class ConfigError(ReconcilerError):
    """The agent configuration is missing or invalid."""


def config_path(arg: str | None) -> Path:
    """``--config``, else ``$RECONCILER_CONFIG``, else /etc/reconciler/config.toml."""
    return Path(arg or os.environ.get("RECONCILER_CONFIG") or DEFAULT_CONFIG)


def config_given(arg: str | None) -> bool:
    """Whether a configuration was named (``--config``, ``$RECONCILER_CONFIG``) or exists at the default path."""
    return bool(arg or os.environ.get("RECONCILER_CONFIG") or Path(DEFAULT_CONFIG).exists())


def read_config(arg: str | None) -> AgentConfig:
    """Load the agent configuration, turning every failure into a ``ConfigError`` naming the key."""
    path = config_path(arg)
    try:
        return load_config(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: " + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"{path}: {details}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
