"""Run a command on a machine kept busy: ``python scripts/busy.py [--hogs 2] -- make test``.

Starts ``--hogs`` CPU-bound processes (pure Python loops, one core each), runs the command, stops them, and exits
with the command's code. This is how the test suite is shown to hold on a loaded laptop or CI runner: no test may
depend on how fast anything runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import time


def _spin() -> None:
    """Burn one core until killed."""
    n = 0
    while True:
        n = (n * 1103515245 + 12345) % 2147483648


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", type=int, default=2, help="CPU-bound processes to run beside the command")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    t0 = time.monotonic()
    try:
        code = subprocess.call(command)
    finally:
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            hog.join()
    print(f"busy.py: {' '.join(command)} exited {code} after {time.monotonic() - t0:.0f} s "  # noqa: T201
          f"beside {args.hogs} CPU hogs", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
