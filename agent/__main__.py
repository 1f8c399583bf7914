"""``python -m agent``: the same as the ``reconcile-agent`` script."""

import sys

from agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
