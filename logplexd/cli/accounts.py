"""``logplexd accounts create|list|delete``: Platform API accounts.

An account is what ``{email}:{api-token}`` (or ``:{api-token}``) authenticates as on the
Platform API routes. The token is printed once by ``create``; only its hash is kept, in the
store, beside the channels and apps:

- with a store URL (``--store-url``, or ``store_url`` from the configuration or the
  environment, as ``serve`` reads it) in that Redis or Redis Cluster, so the account works
  on every node at once;
- otherwise through the daemon running on the data dir, if one is (its accounts socket,
  ``store.serve_accounts_socket``): it writes its own store, whichever that is, and the
  account works at once;
- otherwise in the data dir's embedded store, opened here (an earlier version's
  ``platform.lpj`` is imported first, as the daemon does on start).

Every way answers once the change is durable.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

import trio

from ..config import Settings, env_var, flag_name, load_settings, setting_help
from ..store import (
    ACCOUNTS_SOCKET,
    RedisStore,
    StoreError,
    StoreLocked,
    answer_accounts_request,
    call_accounts_socket,
    migrate_platform_journal,
    open_store,
)
from ._command import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, GROUP_HELP, command

GROUP_HELP[("accounts",)] = "manage Platform API accounts (email and API token)"

EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
# How long to wait for Redis before giving up.
CONNECT_WAIT = 10.0


class _Refused(Exception):
    """Nothing was done; the message says why."""


def _store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None, help="TOML configuration file")
    parser.add_argument(
        "--data-dir",
        dest="data_dir",
        metavar="DIR",
        default=None,
        help="data directory (default: from the configuration, as `serve` uses it)",
    )
    text, metavar, _ = setting_help("store_url")
    parser.add_argument(
        flag_name("store_url"),
        dest="store_url",
        metavar=metavar,
        default=None,
        help=f"{text} (env {env_var('store_url')}; default: as `serve` uses it)",
    )


def _email_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("email", metavar="EMAIL")
    _store_args(parser)


def _settings(args: argparse.Namespace) -> Settings:
    flags = {"data_dir": args.data_dir, "store_url": args.store_url}
    return load_settings(flags, config_file=args.config)


async def _through_redis(url: str, request: dict[str, Any]) -> dict[str, Any]:
    store = RedisStore(url, node_id=f"accounts-cli-{os.getpid()}")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.maintain)
            if store.failure is not None:
                with trio.move_on_after(CONNECT_WAIT):
                    await store.connected.wait()
            failure = store.failure
            if failure is not None:
                nursery.cancel_scope.cancel()
                raise _Refused(f"cannot reach the store: {failure}")
            reply = await answer_accounts_request(store, request)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    return reply


async def _in_data_dir(directory: str, request: dict[str, Any]) -> dict[str, Any]:
    try:
        store = open_store(directory)
    except StoreLocked:
        raise _Refused(
            f"the data dir {directory!r} is in use by a logplexd that does not answer on"
            f" {ACCOUNTS_SOCKET}; try again once it runs, or stop it"
        ) from None
    try:
        await migrate_platform_journal(store, directory)
        return await answer_accounts_request(store, request)
    finally:
        store.close()


def _run(args: argparse.Namespace, request: dict[str, Any], *, create: bool) -> dict[str, Any]:
    """Carry ``request`` out on the store (see the module's docstring); its answer."""
    settings = _settings(args)
    if settings.store_url:
        return trio.run(_through_redis, settings.store_url, request)
    directory = str(settings.data_dir)
    reply = call_accounts_socket(directory, request)
    if reply is not None:
        return reply
    if not create and not os.path.isdir(directory):
        # Listing or deleting must not quietly create an empty data dir at a mistyped path.
        raise _Refused(f"no data dir at {directory!r}")
    return trio.run(_in_data_dir, directory, request)


def _ask(args: argparse.Namespace, request: dict[str, Any], *, create: bool = False) -> Any:
    """The answer, or an exit status after one line on stderr."""
    try:
        reply = _run(args, request, create=create)
    except _Refused as exc:
        print(f"logplexd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, StoreError) as exc:
        print(f"logplexd: cannot reach the accounts: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not reply.get("ok"):
        print(f"logplexd: {reply.get('message') or reply.get('error')}", file=sys.stderr)
        return EXIT_FAILURE
    return reply


@command(
    "accounts",
    "create",
    help="create a Platform API account and print its API token (shown only once)",
    configure=_email_args,
)
def _accounts_create(args: argparse.Namespace) -> int:
    email = args.email.strip()
    if not EMAIL.fullmatch(email):
        print(f"logplexd: not an email address: {email!r}", file=sys.stderr)
        return EXIT_CONFIG
    reply = _ask(args, {"op": "create", "email": email}, create=True)
    if isinstance(reply, int):
        return reply
    print(f"id: {reply['id']}")
    print(f"email: {email}")
    print(f"api token: {reply['token']}")
    print("The token is shown only this once; logplexd keeps only its hash.", file=sys.stderr)
    return EXIT_OK


@command("accounts", "list", help="list Platform API accounts", configure=_store_args)
def _accounts_list(args: argparse.Namespace) -> int:
    reply = _ask(args, {"op": "list"})
    if isinstance(reply, int):
        return reply
    for account in reply["accounts"]:
        print(f"{account['id']} {account['email']} {account['created_at']}")
    return EXIT_OK


@command("accounts", "delete", help="delete a Platform API account", configure=_email_args)
def _accounts_delete(args: argparse.Namespace) -> int:
    email = args.email.strip()
    reply = _ask(args, {"op": "delete", "email": email})
    if isinstance(reply, int):
        return reply
    if not reply["deleted"]:
        print(f"logplexd: no account with email {email}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
