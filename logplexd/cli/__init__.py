"""The ``logplexd`` command: ``main`` and the commands it knows.

Each module registers its commands with ``_command.command`` when imported: ``daemon``
(``serve``, ``config``, ``creds``), ``client`` (commands against a running daemon's API) and
``accounts`` (Platform API accounts).
"""

from . import accounts, client, daemon  # noqa: F401  (each registers its commands)
from ._command import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, build_parser, command, main

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "build_parser", "command", "main"]
