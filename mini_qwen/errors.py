"""One error type for problems a user can fix, and a wrapper that prints it cleanly.

Anything we can diagnose (a missing column, a config that cannot work, a bad path)
is raised as `MiniQwenError` with a message that names the file / row / field and
the fix. `run_main` turns it into one line on stderr and exit code 2 instead of a
traceback from deep inside a library.
"""

import sys


class MiniQwenError(Exception):
    """A problem with the user's input or configuration; the message says how to fix it."""


def run_main(main, argv=None):
    try:
        return main(argv)
    except MiniQwenError as err:
        print(f"\nerror: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
