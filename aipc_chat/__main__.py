"""``python -m aipc_chat``: the same as the ``aipc-chat`` command."""

from __future__ import annotations

import sys

from aipc_chat.cli import main

if __name__ == "__main__":
    sys.exit(main())
