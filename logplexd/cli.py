"""The ``logplexd`` command.

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
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__
from .config import (
    CONFIG_ENV,
    SETTING_NAMES,
    ConfigError,
    default_of,
    ensure_auth_key,
    env_var,
    flag_name,
    load_settings,
    render_effective,
    setting_help,
)

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
GROUP_HELP: dict[tuple[str, ...], str] = {("config",): "inspect and validate configuration"}
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


# --- serve -----------------------------------------------------------------------------------


def _settings_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML configuration file (env {CONFIG_ENV})",
    )
    for name in SETTING_NAMES:
        text, metavar, has_flag = setting_help(name)
        if not has_flag:
            continue
        default = default_of(name)
        shown = "http://<api-addr>" if name == "public_url" else default
        tail = f"env {env_var(name)}" + ("" if default is None else f", default {shown}")
        # SUPPRESS keeps absent flags out of the namespace, so they cannot shadow the env.
        parser.add_argument(
            flag_name(name),
            dest=name,
            metavar=metavar,
            default=argparse.SUPPRESS,
            help=f"{text} ({tail})",
        )


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    given = vars(args)
    return {name: given[name] for name in SETTING_NAMES if name in given}


def _import_native() -> None:
    # Its own function so tests can simulate a broken install without one.
    importlib.import_module("logplexd.native")


@command("serve", help="run the daemon in the foreground (the default)", configure=_settings_args)
def _serve(args: argparse.Namespace) -> int:
    # Configuration first: a typo is reported as such even on a broken install, and nothing
    # below (native module, daemon, data dir) is touched with a bad configuration.
    settings = load_settings(_flag_values(args), config_file=args.config)
    try:
        _import_native()
    except ImportError as exc:  # NativeUnavailable is an ImportError with a complete message
        message = str(exc)
        if not message.startswith("logplexd:"):
            message = f"logplexd: cannot load the compiled module logplexd.native: {message}"
        print(message, file=sys.stderr)
        return EXIT_FAILURE
    settings = ensure_auth_key(settings)
    daemon: Any = importlib.import_module("logplexd.daemon")
    status = daemon.run(settings)
    return int(status) if status is not None else EXIT_OK


# --- config check ----------------------------------------------------------------------------


def _config_check_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        default=None,
        help=f"TOML file to check (default: ${CONFIG_ENV}, else defaults and environment only)",
    )


@command(
    "config",
    "check",
    help="validate a configuration file merged with the environment and print the result",
    configure=_config_check_args,
)
def _config_check(args: argparse.Namespace) -> int:
    settings = load_settings(config_file=args.file, config_source="config check FILE")
    sys.stdout.write(render_effective(settings))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
