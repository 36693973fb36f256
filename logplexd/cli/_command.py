"""The ``logplexd`` command line: the command registry and ``main``.

``logplexd [OPTIONS]`` and ``logplexd serve [OPTIONS]`` run the daemon in the foreground.
Other commands are registered with the :func:`command` decorator; a multi-word path such as
``("creds", "create")`` creates the ``creds`` group on first use, so adding
``logplexd creds create|list|revoke`` is one decorated function per subcommand::

    @command("creds", "create", help="create a credential", configure=_creds_create_args)
    def _creds_create(args: argparse.Namespace) -> int: ...

Exit status: 0 success, 1 runtime failure (e.g. the compiled module is missing),
2 configuration or usage error (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .. import __version__
from ..config import ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    help: str
    run: Handler
    configure: Configure | None = None


COMMANDS: list[Command] = []
# Help for command groups, filled in by the modules that register their commands.
GROUP_HELP: dict[tuple[str, ...], str] = {}
DEFAULT_COMMAND = "serve"


def command(
    *path: str, help: str, configure: Configure | None = None
) -> Callable[[Handler], Handler]:
    """Register ``logplexd PATH...``; the handler returns the exit status."""

    def register(run: Handler) -> Handler:
        COMMANDS.append(Command(tuple(path), help, run, configure))
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logplexd",
        description="A Logplex-compatible log router. Without a command, runs `serve`.",
    )
    parser.add_argument("--version", action="version", version=f"logplexd {__version__}")
    groups: dict[tuple[str, ...], argparse._SubParsersAction[argparse.ArgumentParser]] = {
        (): parser.add_subparsers(title="commands", metavar="COMMAND")
    }
    for cmd in COMMANDS:
        for depth in range(1, len(cmd.path)):
            prefix = cmd.path[:depth]
            if prefix not in groups:
                help_text = GROUP_HELP.get(prefix, "")
                group = groups[prefix[:-1]].add_parser(
                    prefix[-1], help=help_text, description=help_text
                )
                group.set_defaults(_group_parser=group)
                groups[prefix] = group.add_subparsers(title="commands", metavar="COMMAND")
        sub = groups[cmd.path[:-1]].add_parser(cmd.path[-1], help=cmd.help, description=cmd.help)
        if cmd.configure is not None:
            cmd.configure(sub)
        sub.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Bare `logplexd` and `logplexd --api-addr ...` mean `serve`, like Logplex's single mode.
    if not args_list or (
        args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, DEFAULT_COMMAND)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse reports usage errors (status 2) and --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    run: Handler | None = getattr(args, "_run", None)
    if run is None:  # a group such as `logplexd config` without its subcommand
        group: argparse.ArgumentParser = getattr(args, "_group_parser", parser)
        group.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        return run(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
