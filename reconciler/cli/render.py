"""The text of ``reconciler status`` and ``reconciler status --fleet``; called by ``reconciler.cli.status``.

Pure: a ``Status`` or ``Fleet`` document in, the lines printed out (revisions shortened to 12).
"""

from __future__ import annotations

from reconciler.status import Fleet, Status


def _short(rev: str | None) -> str:
    return (rev or "none")[:12]


def status_text(status: Status, origin: str) -> str:
    """One agent's status; ``origin`` says where it was read (the agent, or the state dir)."""
    lines = [f"state: {status.state.value}" + (" (dry run)" if status.dry_run else "") + f"  [{origin}]"]
    lines.append(f"source: {status.source} ({status.branch})")
    lines.append(f"head: {_short(status.head_revision)}   applied: {_short(status.applied_revision)}")
    hc = status.head_commit
    if hc is not None and hc.subject is not None:
        when = f", {hc.time.isoformat(timespec='seconds')}" if hc.time else ""
        lines.append(f"head commit: {hc.subject} ({hc.author or 'unknown author'}{when})")
    if status.pending_changes:
        lines.append(f"pending changes: {status.pending_changes}")
    if status.waiting_for:
        lines.append(f"waiting for: {', '.join(status.waiting_for)} ({status.waiting_reason or ''})")
    if status.next_retry_at:
        lines.append(f"next retry: {status.next_retry_at.isoformat(timespec='seconds')}")
    if status.drift:
        lines.append(f"drift ({len(status.drift)}):")
        lines.extend(f"  {d.kind} {d.action} {d.target}" for d in status.drift)
    lines.extend(_attempts_lines(status))
    return "\n".join(lines) + "\n"


def _attempts_lines(status: Status) -> list[str]:
    """The last attempt (with its error) and the ten newest of the history."""
    lines = []
    a = status.last_attempt
    if a is not None:
        step = f" at step {a.failed_step}" if a.failed_step else ""
        lines.append(
            f"last attempt: {a.result.value}{step} {_short(a.revision)} {a.subject or ''} "
            f"({a.finished_at.isoformat(timespec='seconds')}, {a.duration:.2f} s)"
        )
        if a.error:
            lines.append(f"  error: {a.error}")
    if status.history:
        lines.append("history:")
        for h in status.history[:10]:
            lines.append(
                f"  {h.finished_at.isoformat(timespec='seconds')} {h.result.value:<9} {_short(h.revision)} "
                f"{h.trigger:<11} {h.subject or ''}"
            )
    return lines


def fleet_text(fleet: Fleet, head: str | None) -> str:
    """Every host of the fleet, one a line, against the branch ``head``."""
    lines = [f"fleet: {len(fleet.hosts)} host(s), head {_short(head)}"]
    lines.append(f"  {'host':<16} {'wave':>4}  {'applied':<12}  {'state':<12} {'last seen':<20} error")
    for h in fleet.hosts:
        seen = h.last_seen.strftime("%Y-%m-%dT%H:%M:%SZ")
        state = h.state + (" (stale)" if h.stale else "")
        error = h.error or ""
        if h.waiting_for and not error:
            error = "waiting for " + ", ".join(h.waiting_for)
        lines.append(f"  {h.name:<16} {h.wave:>4}  {_short(h.applied_revision):<12}  {state:<12} {seen:<20} {error}")
    return "\n".join(lines) + "\n"
