"""The commands that run or prepare the daemon on this machine: ``serve`` (the default),
``config check`` and ``creds create|list|revoke`` (stored credentials, daemon stopped)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from functools import partial
from typing import Any

import trio

from ..config import (
    CONFIG_ENV,
    SETTING_NAMES,
    default_of,
    ensure_auth_key,
    env_var,
    flag_name,
    load_settings,
    render_effective,
    setting_help,
)
from ..store import Store, StoreError, StoreLocked, open_store
from ..web import FULL_API, PERMISSIONS, create_credential
from ._command import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, GROUP_HELP, command

GROUP_HELP[("config",)] = "inspect and validate configuration"
GROUP_HELP[("creds",)] = "create, list and revoke API credentials in the data dir"

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
        if default == ():
            shown = "none"
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


# --- creds create|list|revoke ----------------------------------------------------------------


def _creds_settings_args(parser: argparse.ArgumentParser) -> None:
    # Settings are loaded as for serve (file, environment, flags), but only the data dir
    # matters here, so only it gets a flag: the listener flags would just clutter the usage.
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML configuration file (env {CONFIG_ENV})",
    )
    text, metavar, _ = setting_help("data_dir")
    parser.add_argument(
        flag_name("data_dir"),
        dest="data_dir",
        metavar=metavar,
        default=argparse.SUPPRESS,
        help=f"{text} (env {env_var('data_dir')}, default {default_of('data_dir')})",
    )


def _creds_create_args(parser: argparse.ArgumentParser) -> None:
    _creds_settings_args(parser)
    parser.add_argument("--name", required=True, help="what the credential is for (shown by list)")
    parser.add_argument(
        "--permission",
        dest="permissions",
        action="append",
        choices=PERMISSIONS,
        default=None,
        help=f"grant a permission; repeat for several (default {FULL_API})",
    )


def _creds_revoke_args(parser: argparse.ArgumentParser) -> None:
    _creds_settings_args(parser)
    parser.add_argument("id", metavar="ID", help="the credential id, as `creds list` shows it")


def _creds_list_args(parser: argparse.ArgumentParser) -> None:
    _creds_settings_args(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON array instead")


def _open_creds_store(args: argparse.Namespace, *, create: bool) -> Store | None:
    """The data dir's store, or None after one line on stderr.

    The daemon holds the data dir's lock while it runs, so an offline edit cannot race its
    journal; a locked dir is reported as such rather than as a generic store error.
    """
    settings = load_settings(_flag_values(args), config_file=args.config)
    data_dir = settings.data_dir
    if not create and not data_dir.is_dir():
        # Listing or revoking must not quietly create an empty store at a mistyped path.
        print(f"logplexd: no data dir at {str(data_dir)!r}", file=sys.stderr)
        return None
    try:
        return open_store(str(data_dir))
    except StoreLocked:
        print(
            f"logplexd: the data dir {str(data_dir)!r} is in use by a running logplexd;"
            " stop it first",
            file=sys.stderr,
        )
    except (StoreError, OSError) as exc:
        print(f"logplexd: cannot open the data dir {str(data_dir)!r}: {exc}", file=sys.stderr)
    return None


def _valid_credential_name(name: str) -> bool:
    # `creds list` prints one line per credential: control characters would break it.
    return bool(name.strip()) and name.isprintable() and len(name) <= 256


@command(
    "creds",
    "create",
    help="create a credential and print ID:PASSWORD (the only time the password is shown)",
    configure=_creds_create_args,
)
def _creds_create(args: argparse.Namespace) -> int:
    if not _valid_credential_name(args.name):
        print(
            "logplexd: --name must be 1 to 256 printable characters, not only spaces",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    store = _open_creds_store(args, create=True)
    if store is None:
        return EXIT_FAILURE
    try:
        credential, password = trio.run(
            partial(
                create_credential,
                store,
                name=args.name,
                permissions=args.permissions or (FULL_API,),
            )
        )
    except (StoreError, OSError) as exc:
        print(f"logplexd: cannot store the credential: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        store.close()
    # The password is not stored in clear anywhere: this line is the only copy.
    print(f"{credential.id}:{password}")
    return EXIT_OK


@command(
    "creds", "list", help="list credentials: id, name, permissions", configure=_creds_list_args
)
def _creds_list(args: argparse.Namespace) -> int:
    store = _open_creds_store(args, create=False)
    if store is None:
        return EXIT_FAILURE
    try:
        # Only these three fields leave the store: never the password hash.
        rows = [(c.id, c.name, list(c.permissions)) for c in store.credentials()]
    finally:
        store.close()
    if args.json:
        entries = [{"id": i, "name": n, "permissions": p} for i, n, p in rows]
        print(json.dumps(entries, indent=2))
        return EXIT_OK
    if rows:
        name_width = max(4, *(len(name) for _, name, _ in rows))
        print(f"{'ID':<32}  {'NAME':<{name_width}}  PERMISSIONS")
        for cred_id, name, perms in rows:
            print(f"{cred_id:<32}  {name:<{name_width}}  {','.join(perms) or '-'}".rstrip())
    return EXIT_OK


@command("creds", "revoke", help="revoke a credential at once", configure=_creds_revoke_args)
def _creds_revoke(args: argparse.Namespace) -> int:
    store = _open_creds_store(args, create=False)
    if store is None:
        return EXIT_FAILURE
    try:
        revoked = trio.run(store.revoke_credential, args.id)
    except (StoreError, OSError) as exc:
        print(f"logplexd: cannot revoke the credential: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        store.close()
    if not revoked:
        print(f"logplexd: no credential with id {args.id!r}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"revoked {args.id}", file=sys.stderr)
    return EXIT_OK
