"""``logplexd accounts create|list|delete``: Platform API accounts.

An account is what ``{email}:{api-token}`` (or ``:{api-token}``) authenticates as on the
Platform API routes. The token is printed once by ``create``; only its hash is kept, in
``<data_dir>/platform.lpj``. These commands work while the daemon runs: it picks up a new
account the first time its token is presented.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import trio

from ..config import load_settings
from ..store import StoreError, open_platform_records
from ._command import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, GROUP_HELP, command

GROUP_HELP[("accounts",)] = "manage Platform API accounts (email and API token)"

EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


def _data_dir_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None, help="TOML configuration file")
    parser.add_argument(
        "--data-dir",
        dest="data_dir",
        metavar="DIR",
        default=None,
        help="data directory (default: from the configuration, as `serve` uses it)",
    )


def _email_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("email", metavar="EMAIL")
    _data_dir_args(parser)


def _data_dir(args: argparse.Namespace) -> str:
    settings = load_settings({"data_dir": args.data_dir}, config_file=args.config)
    return str(settings.data_dir)


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
    directory = _data_dir(args)

    async def create() -> tuple[str, str]:
        records = open_platform_records(directory)
        try:
            account, token = await records.create_account(email)
        finally:
            records.close()
        return account.id, token

    try:
        account_id, token = trio.run(create)
    except ValueError:
        print(f"logplexd: an account with email {email} exists", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, StoreError) as exc:
        print(f"logplexd: cannot write accounts in {directory}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"id: {account_id}")
    print(f"email: {email}")
    print(f"api token: {token}")
    print("The token is shown only this once; logplexd keeps only its hash.", file=sys.stderr)
    return EXIT_OK


def _existing_data_dir(args: argparse.Namespace) -> str | None:
    directory = _data_dir(args)
    if not os.path.isdir(directory):
        # Listing or deleting must not quietly create an empty data dir at a mistyped path.
        print(f"logplexd: no data dir at {directory!r}", file=sys.stderr)
        return None
    return directory


@command("accounts", "list", help="list Platform API accounts", configure=_data_dir_args)
def _accounts_list(args: argparse.Namespace) -> int:
    directory = _existing_data_dir(args)
    if directory is None:
        return EXIT_FAILURE
    try:
        records = open_platform_records(directory)
    except (OSError, StoreError) as exc:
        print(f"logplexd: cannot read accounts: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for account in sorted(records.accounts(), key=lambda a: a.email):
        print(f"{account.id} {account.email} {account.created_at}")
    records.close()
    return EXIT_OK


@command("accounts", "delete", help="delete a Platform API account", configure=_email_args)
def _accounts_delete(args: argparse.Namespace) -> int:
    directory = _existing_data_dir(args)
    if directory is None:
        return EXIT_FAILURE

    async def delete() -> bool:
        records = open_platform_records(directory)
        try:
            return await records.delete_account(args.email.strip())
        finally:
            records.close()

    try:
        deleted = trio.run(delete)
    except (OSError, StoreError) as exc:
        print(f"logplexd: cannot write accounts in {directory}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not deleted:
        print(f"logplexd: no account with email {args.email}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
