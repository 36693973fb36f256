"""Platform records (accounts, apps, drain metadata) on disk, and `logplexd accounts`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from logplexd import cli
from logplexd.store import StoreCorrupt
from logplexd.store import platform_records as records_module
from logplexd.store.platform_records import JOURNAL_FILE, App, DrainMeta, open_platform_records

pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py: the CLI tests below


def app(name: str, **changes: object) -> App:
    fields: dict[str, object] = {
        "id": f"id-{name}",
        "name": name,
        "owner_id": "o",
        "owner_email": "o@example.com",
        "region_id": "r",
        "region_name": "us",
        "stack_id": "s",
        "stack_name": "cedar",
        "maintenance": False,
        "created_at": "2012-01-01T12:00:00Z",
        "updated_at": "2012-01-01T12:00:00Z",
    }
    fields.update(changes)
    return App(**fields)  # type: ignore[arg-type]


async def test_round_trip_and_two_handles(tmp_path: Path) -> None:
    first = open_platform_records(tmp_path)
    second = open_platform_records(tmp_path)
    account, token = await first.create_account("Dev@Example.com")
    assert first.account_by_token(token) == account
    assert first.account_by_email("dev@example.com") == account
    assert account.token_matches(token) and not account.token_matches(token + "x")
    assert token not in (tmp_path / JOURNAL_FILE).read_text(errors="replace")
    with pytest.raises(ValueError):
        await second.create_account("dev@example.com")  # caught up before checking
    await second.put_app(app("one"))
    await second.put_drain_meta(DrainMeta(7, "id-one", "t1", "t2"))
    assert first.app_by_name("one") is None
    await first.refresh()
    assert first.app_by_name("one") == app("one") and first.drain_meta(7) is not None
    with pytest.raises(ValueError):
        await first.put_app(app("one", id="other"), unless_name_taken=True)
    await first.delete_app("id-one", [7])
    reopened = open_platform_records(tmp_path)
    assert reopened.app("id-one") is None and reopened.drain_meta(7) is None
    assert [a.email for a in reopened.accounts()] == ["Dev@Example.com"]
    assert await reopened.delete_account("dev@example.com")
    assert not await reopened.delete_account("dev@example.com")


async def test_torn_tail_is_cut_off(tmp_path: Path) -> None:
    records = open_platform_records(tmp_path)
    await records.put_app(app("kept"))
    with open(tmp_path / JOURNAL_FILE, "ab") as file:
        file.write(b"\x00\x00\x01\x00garbage")  # a record cut short by a crash
    reopened = open_platform_records(tmp_path)
    assert reopened.app_by_name("kept") is not None
    await reopened.put_app(app("after"))
    again = open_platform_records(tmp_path)
    assert {a.name for a in again.apps()} == {"kept", "after"}


async def test_compaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records_module, "COMPACT_MIN_BYTES", 2048)
    records = open_platform_records(tmp_path)
    for n in range(200):
        await records.put_app(app("busy", maintenance=n % 2 == 1, updated_at=str(n)))
    assert os.path.getsize(tmp_path / JOURNAL_FILE) < 4096
    reopened = open_platform_records(tmp_path)
    assert reopened.app_by_name("busy") == app("busy", maintenance=True, updated_at="199")


def test_not_a_journal(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_FILE).write_bytes(b"something else entirely")
    with pytest.raises(StoreCorrupt):
        open_platform_records(tmp_path)


# -- logplexd accounts -------------------------------------------------------------------------


def test_accounts_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    assert cli.main(["accounts", "create", "dev@example.com", "--data-dir", data]) == 0
    out = capsys.readouterr().out
    match = re.fullmatch(
        r"id: (?P<id>[0-9a-f-]{36})\nemail: dev@example\.com\n"
        r"api token: (?P<token>[0-9a-f-]{36})\n",
        out,
    )
    assert match is not None
    account = open_platform_records(data).account_by_token(match["token"])
    assert account is not None and account.id == match["id"]

    assert cli.main(["accounts", "create", "dev@example.com", "--data-dir", data]) == 1
    assert "exists" in capsys.readouterr().err
    assert cli.main(["accounts", "create", "not-an-email", "--data-dir", data]) == 2
    capsys.readouterr()

    assert cli.main(["accounts", "list", "--data-dir", data]) == 0
    listed = capsys.readouterr().out
    assert listed.split()[:2] == [match["id"], "dev@example.com"]
    assert match["token"] not in listed

    assert cli.main(["accounts", "delete", "dev@example.com", "--data-dir", data]) == 0
    assert cli.main(["accounts", "delete", "dev@example.com", "--data-dir", data]) == 1
    assert cli.main(["accounts", "list", "--data-dir", str(tmp_path / "missing")]) == 1
    assert not (tmp_path / "missing").exists()


def test_accounts_cli_uses_configured_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOGPLEXD_DATA_DIR", str(tmp_path / "from-env"))
    assert cli.main(["accounts", "create", "env@example.com"]) == 0
    assert (tmp_path / "from-env" / JOURNAL_FILE).exists()
