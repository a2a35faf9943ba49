"""``reconciler run``: the long-running agent with its API server, until SIGTERM or SIGINT.

Called through ``reconciler.cli.main``; builds the ``reconciler.agent.loop.Agent``, hands it to the
API as its view, and runs the agent's loop in the main thread.
"""

from __future__ import annotations

import argparse
import os

import structlog

from reconciler.cli.config import EXIT_OK, read_config

log = structlog.get_logger("reconciler.cli")


def cmd_run(args: argparse.Namespace) -> int:
    """The long-running agent: watch, reconcile, serve the API; exit 0 after SIGTERM or SIGINT."""
    import signal

    from reconciler.agent.loop import Agent
    from reconciler.api.app import create_app, wrap
    from reconciler.api.auth import read_credential
    from reconciler.api.server import ApiServer, bind
    from reconciler.apply import Faults

    cfg = read_config(args.config)
    token = read_credential(cfg.api.token_file, "[api].token_file")
    webhook_secret = read_credential(cfg.api.webhook_secret_file, "[api].webhook_secret_file")
    sock = bind(cfg.api.listen, has_token=token is not None)
    agent = Agent(cfg, dry_run=args.dry_run, faults=Faults.from_env(os.environ))
    app = create_app(agent, token=token, webhook_secret=webhook_secret, branch=cfg.source.branch)
    server = ApiServer(wrap(app), sock)

    def on_signal(signum: int, _frame: object) -> None:
        # Only a flag (no logging: the handler may interrupt a write to stderr): an apply in
        # progress runs to its end (or rolls back), then the loop returns.
        agent.stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    log.info("api.listening", listen=cfg.api.listen, token=token is not None, webhook_secret=webhook_secret is not None)
    try:
        agent.run()
    finally:
        server.stop()
    return EXIT_OK
