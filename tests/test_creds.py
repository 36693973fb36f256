"""Credentials: hashing, verification, the Authorization parser, the checker's cache."""

from __future__ import annotations

import base64
import re

import pytest

from logplexd.store import open_store
from logplexd.web.credentials import (
    ANY_CHANNEL,
    FULL_API,
    BasicAuth,
    BasicPassword,
    BasicToken,
    BearerToken,
    CredentialChecker,
    InvalidAuthorization,
    RawKey,
    create_credential,
    generate_credential_id,
    generate_password,
    hash_password,
    key_matches,
    parse_authorization,
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


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # The raw key form: what follows "Basic " as is, when it is not base64 of user:pass.
        ("Basic abc", RawKey(text="abc")),
        ("basic   abc  ", RawKey(text="abc")),
        ("BASIC abc", RawKey(text="abc")),
        ("  bAsIc abc", RawKey(text="abc")),
        ("Basic my key", RawKey(text="my key")),  # inner spaces are the key's
        ("Basic !!!notbase64", RawKey(text="!!!notbase64")),
        ("Basic ***", RawKey(text="***")),
        ("Basic abcde", RawKey(text="abcde")),  # bad padding
        ("Basic " + b64(b"nocolon"), RawKey(text=b64(b"nocolon"))),
        ("Basic " + b64(b"\xff:\xfe"), RawKey(text=b64(b"\xff:\xfe"))),  # not UTF-8
        ("Basic k\xe9y", RawKey(text="k\xe9y")),  # not ASCII (headers are latin-1)
        # Basic id:password; the first colon splits, the password may be empty.
        (
            "Basic " + b64(b"id:pa:ss"),
            BasicPassword(text=b64(b"id:pa:ss"), user="id", password="pa:ss"),
        ),
        ("basic  " + b64(b"id:") + " ", BasicPassword(text=b64(b"id:"), user="id", password="")),
        (
            "Basic " + b64("é:ü".encode()),
            BasicPassword(text=b64("é:ü".encode()), user="é", password="ü"),
        ),
        # Basic :token, as the Heroku CLI and Platform API clients send.
        ("Basic " + b64(b":t0k"), BasicToken(text=b64(b":t0k"), token="t0k")),
        ("Basic " + b64(b":"), BasicToken(text=b64(b":"), token="")),
        # Bearer.
        ("Bearer t0k", BearerToken("t0k")),
        ("bearer   t0k  ", BearerToken("t0k")),
        ("BEARER " + b64(b":x"), BearerToken(b64(b":x"))),  # never decoded
    ],
)
def test_parse_authorization_forms(header, expected):
    assert parse_authorization(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "Basic",
        "Basic ",
        "Basic    ",
        "Bearer",
        "Bearer  ",
        "Digest abc",
        "Basic\tabc",  # only a space ends the scheme
        "s3cr3t",  # a bare secret is no form
        "Token abc",
    ],
)
def test_parse_authorization_invalid(header):
    parsed = parse_authorization(header)
    assert isinstance(parsed, InvalidAuthorization)
    assert not isinstance(parsed, BasicAuth)


def test_parse_authorization_keeps_secrets_out_of_reprs():
    for header in [
        "Basic s3cr3t",
        "Basic " + b64(b"id:s3cr3t"),
        "Basic " + b64(b":s3cr3t"),
        "Bearer s3cr3t",
        "s3cr3t",
        "Unknown s3cr3t",
        "Basic\ts3cr3t",
    ]:
        parsed = parse_authorization(header)
        assert "s3cr3t" not in repr(parsed)
        assert b64(b"id:s3cr3t") not in repr(parsed) and b64(b":s3cr3t") not in repr(parsed)
    assert "user='id'" in repr(parse_authorization("Basic " + b64(b"id:s3cr3t")))  # not secret


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
