"""Credentials: hashing, verification, Basic parsing, the checker's cache."""

from __future__ import annotations

import base64
import re

import pytest

from logplexd.store import open_store
from logplexd.web.credentials import (
    ANY_CHANNEL,
    FULL_API,
    CredentialChecker,
    create_credential,
    decode_basic,
    generate_credential_id,
    generate_password,
    hash_password,
    key_matches,
    parse_basic,
    validate_permissions,
    verify_password,
)


def test_hash_and_verify():
    encoded = hash_password("correct horse", n=2**8)
    assert encoded.startswith("scrypt$256$8$1$")
    assert "correct horse" not in encoded
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horsE", encoded)
    assert hash_password("same", n=2**8) != hash_password("same", n=2**8)  # salted


@pytest.mark.parametrize(
    "encoded", ["", "plain", "bcrypt$1$2$3$4$5", "scrypt$x$8$1$AA==$AA==", "scrypt$256$8$1$!!$AA=="]
)
def test_verify_rejects_malformed_hashes(encoded):
    assert not verify_password("x", encoded)


def test_generated_ids_and_passwords():
    assert re.fullmatch("[0-9A-F]{32}", generate_credential_id())
    assert re.fullmatch("[0-9a-f]{64}", generate_password())
    assert generate_password() != generate_password()


def test_permissions():
    assert validate_permissions([FULL_API, FULL_API, ANY_CHANNEL]) == (FULL_API, ANY_CHANNEL)
    with pytest.raises(ValueError, match="root"):
        validate_permissions(["root"])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("Bearer x", None),
        ("Basic abc", "abc"),
        ("basic   abc  ", "abc"),
        ("BASIC abc", "abc"),
    ],
)
def test_parse_basic(header, expected):
    assert parse_basic(header) == expected


def test_decode_basic():
    assert decode_basic(base64.b64encode(b"id:pa:ss").decode()) == ("id", "pa:ss")
    assert decode_basic(base64.b64encode(b"nocolon").decode()) is None
    assert decode_basic("***") is None
    assert decode_basic(base64.b64encode(b"\xff:\xfe").decode()) is None


def test_key_matches():
    assert key_matches("k3y", "k3y")
    assert not key_matches("k3y", "k3y2")
    assert not key_matches("", "")  # an unset key never matches


async def test_create_and_check(tmp_path):
    store = open_store(str(tmp_path))
    credential, password = await create_credential(store, name="ops", permissions=[FULL_API])
    assert store.credential(credential.id) == credential
    assert password not in credential.password_hash
    checker = CredentialChecker(store)
    assert await checker.check(credential.id, password) == credential
    assert await checker.check(credential.id, password) == credential  # from the cache
    assert await checker.check(credential.id, "wrong") is None
    assert await checker.check("unknown", password) is None
    await store.revoke_credential(credential.id)
    assert await checker.check(credential.id, password) is None
    store.close()
    with pytest.raises(ValueError):
        await create_credential(open_store(str(tmp_path / "other")), permissions=["nope"])


async def test_cache_is_bounded(tmp_path):
    store = open_store(str(tmp_path))
    checker = CredentialChecker(store, cache_size=2)
    for i in range(4):
        credential, password = await create_credential(store, password=f"pw{i}")
        assert await checker.check(credential.id, password) is not None
    assert len(checker._verified) == 2
    store.close()
