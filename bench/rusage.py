"""Run a command; write its wall time and peak RSS to a file. bench/run's measuring launcher.

    python -S bench/rusage.py REPORT_PATH ARGV...

Why not wait4() on a child of bench/run itself: a child created by fork or vfork starts out with
its parent's memory counted in its high-water RSS, and exec keeps that maximum in ru_maxrss. A
command spawned by a 225 MB bench process then reports at least 225 MB, whatever it used.
This launcher is small (``python -S``, about 7 MB), so the RSS it reports is the command's own
(the maximum over the command and the children it waited for), with a floor of about 7 MB.

Writes ``<ru_maxrss in KiB> <seconds from fork to reap>`` to REPORT_PATH and exits with the
command's status (128 + N when it was killed by signal N). SIGTERM, SIGINT and SIGHUP are
forwarded to the command, so stopping the launcher stops the command the way a signal to it would.
"""

import os
import signal
import sys
import time


def main() -> int:
    report, argv = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)  # noqa: S606 - an argument list, as bench/run passes it
        finally:
            os._exit(127)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    with open(report, "w", encoding="ascii") as fh:  # noqa: PTH123 - no pathlib under python -S, kept minimal
        fh.write(f"{usage.ru_maxrss} {seconds:.6f}\n")
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
