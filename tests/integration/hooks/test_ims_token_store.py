"""The IMS token store (``tf_ims_token``): tokens shared by tasks and runs, encrypted.

The crypto and the expiry margin are pinned in tests/unit/hooks/test_ims_token_store.py; these
run the hook against the real emulator process, with the store of the test (SQLite, or
PostgreSQL when TRIGGERFLOW_TEST_PG_URL is set). ``clear_token_cache()`` between hook instances
simulates a new task process: only the store can then avoid a new token request, and the emulator
counts every request it receives."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import requests
from sqlalchemy import create_engine, insert, select, update

from include.triggerflow.adobe.ims_token import decrypt_token, encrypt_token, token_cache_key
from include.triggerflow.hooks.ims import AdobeImsHook, ImsAuthError, ImsToken, clear_token_cache
from include.triggerflow.store.schema import ims_token

SECRET = "p8e-0123456789abcdefABCDEF-secret"


def token_requests(emu) -> int:
    return emu.client.stats()["token_requests"]


def stored_rows(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(ims_token))]


def new_process_hook(engine, conn_id: str = "adobe_ims") -> AdobeImsHook:
    """A hook as a fresh task process would build it: nothing in the process cache."""
    clear_token_cache()
    return AdobeImsHook(conn_id, token_store=engine)


# -- pure: the row key, the key derivation, the ciphertext -------------------------------------------------
# -- pure: the expiry margin -------------------------------------------------------------------------------
# -- with the emulator ------------------------------------------------------------------------------------
def test_token_is_reused_across_processes_through_the_store(emu, adobe_conns, store_engine) -> None:
    hooks = [new_process_hook(store_engine) for _ in range(4)]
    tokens = []
    for hook in hooks:
        clear_token_cache()  # every instance is a new task process
        tokens.append(hook.get_token())
    assert len(set(tokens)) == 1
    assert token_requests(emu) == 1
    assert [h.token_requests for h in hooks] == [1, 0, 0, 0]
    resp = requests.get(emu.client.journal_url, headers=emu.client.journal_headers(tokens[0]), timeout=10)
    assert resp.status_code == 204


def test_without_a_store_a_new_process_mints_again(emu, adobe_conns) -> None:
    first = AdobeImsHook().get_token()
    clear_token_cache()
    assert AdobeImsHook().get_token() != first
    assert token_requests(emu) == 2


def test_stored_row_is_keyed_and_encrypted(emu, adobe_conns, store_engine) -> None:
    hook = AdobeImsHook(token_store=store_engine)
    before = time.time()
    token = hook.fetch_token()
    rows = stored_rows(store_engine)
    assert len(rows) == 1
    row = rows[0]
    assert row["cache_key"] == hook.cache_key == token_cache_key(
        emu.base_url, emu.client.client_id, "openid,AdobeID", "oauth"
    )
    assert token.access_token not in row["ciphertext"]
    assert emu.client.client_id not in row["ciphertext"] and emu.client.client_secret not in row["ciphertext"]
    assert decrypt_token(row["ciphertext"], "some-other-secret", row["cache_key"]) is None
    back = decrypt_token(row["ciphertext"], emu.client.client_secret, row["cache_key"])
    assert back is not None and back.access_token == token.access_token
    # the emulator's tokens last 86399 s; the columns say so (SQLite returns naive UTC)
    expires_at = row["expires_at"].replace(tzinfo=row["expires_at"].tzinfo or UTC).timestamp()
    minted_at = row["minted_at"].replace(tzinfo=row["minted_at"].tzinfo or UTC).timestamp()
    assert before - 1 <= minted_at <= time.time() + 1
    assert expires_at - minted_at == pytest.approx(86_399, abs=2)


def test_force_refresh_mints_and_replaces_the_stored_token(emu, adobe_conns, store_engine) -> None:
    old = new_process_hook(store_engine).get_token()
    new = AdobeImsHook(token_store=store_engine).get_token(force_refresh=True)
    assert new != old
    assert token_requests(emu) == 2
    assert new_process_hook(store_engine).get_token() == new
    assert token_requests(emu) == 2
    rows = stored_rows(store_engine)
    assert len(rows) == 1
    assert decrypt_token(rows[0]["ciphertext"], emu.client.client_secret, rows[0]["cache_key"]).access_token == new


def test_invalidate_removes_the_process_and_the_stored_token(emu, adobe_conns, store_engine) -> None:
    hook = AdobeImsHook(token_store=store_engine)
    old = hook.get_token()
    hook.invalidate()
    assert stored_rows(store_engine) == []
    new = hook.get_token()
    assert new != old
    assert token_requests(emu) == 2
    assert len(stored_rows(store_engine)) == 1


def test_row_that_does_not_decrypt_is_ignored_and_replaced(emu, adobe_conns, store_engine) -> None:
    # As if the client secret had been rotated since the row was written.
    hook = AdobeImsHook(token_store=store_engine)
    stale = ImsToken(access_token="minted-under-the-old-secret", expires_at=time.time() + 80_000, minted_at=time.time())
    now = datetime.now(UTC)
    with store_engine.begin() as conn:
        conn.execute(insert(ims_token).values(
            cache_key=hook.cache_key,
            ciphertext=encrypt_token(stale, "the-old-client-secret", hook.cache_key),
            expires_at=now, minted_at=now,
        ))
    token = hook.get_token()
    assert token != "minted-under-the-old-secret"
    assert token_requests(emu) == 1
    row = stored_rows(store_engine)[0]
    assert decrypt_token(row["ciphertext"], emu.client.client_secret, row["cache_key"]).access_token == token


def test_a_hook_without_the_secret_cannot_use_the_stored_token(emu, adobe_conns, store_engine) -> None:
    token = AdobeImsHook(token_store=store_engine).get_token()
    adobe_conns(client_secret="guessed-secret")
    # neither through the store (new process) ...
    with pytest.raises(ImsAuthError, match="401 invalid_client"):
        new_process_hook(store_engine).get_token()
    # ... nor through the process cache of a process that holds the real one
    adobe_conns()
    assert AdobeImsHook(token_store=store_engine).get_token() == token
    adobe_conns(client_secret="guessed-secret")
    with pytest.raises(ImsAuthError, match="401 invalid_client"):
        AdobeImsHook(token_store=store_engine).get_token()
    assert token_requests(emu) == 3
    row = stored_rows(store_engine)[0]  # the failed attempts did not touch the row
    assert decrypt_token(row["ciphertext"], emu.client.client_secret, row["cache_key"]).access_token == token


def test_stored_token_inside_the_margin_is_not_reused(emu, adobe_conns, store_engine) -> None:
    hook = AdobeImsHook(token_store=store_engine)
    hook.get_token()
    # Rewrite the row as a day-long token with 4 minutes left (inside the 5-minute margin).
    now = time.time()
    nearly = ImsToken(access_token="nearly-expired-token", expires_at=now + 240, minted_at=now + 240 - 86_399)
    with store_engine.begin() as conn:
        conn.execute(update(ims_token).values(ciphertext=encrypt_token(nearly, emu.client.client_secret, hook.cache_key)))
    token = new_process_hook(store_engine).get_token()
    assert token != "nearly-expired-token"
    assert token_requests(emu) == 2
    # ... while one with 6 minutes left still is
    still = ImsToken(access_token="still-valid-token", expires_at=now + 360, minted_at=now + 360 - 86_399)
    with store_engine.begin() as conn:
        conn.execute(update(ims_token).values(ciphertext=encrypt_token(still, emu.client.client_secret, hook.cache_key)))
    assert new_process_hook(store_engine).get_token() == "still-valid-token"
    assert token_requests(emu) == 2


def test_tokens_of_different_scopes_get_different_rows(emu, adobe_conns, store_engine, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_OTHER_IMS", json.dumps({
        "conn_type": "http", "host": emu.base_url, "login": emu.client.client_id,
        "password": emu.client.client_secret, "extra": {"org_id": emu.client.org_id, "scopes": "openid"},
    }))
    first = AdobeImsHook(token_store=store_engine).get_token()
    other = new_process_hook(store_engine, "other_ims").get_token()
    assert other != first
    assert len(stored_rows(store_engine)) == 2
    assert new_process_hook(store_engine).get_token() == first
    assert new_process_hook(store_engine, "other_ims").get_token() == other
    assert token_requests(emu) == 2


def logged(capsys, caplog) -> str:
    """Everything logged so far: Airflow's hook loggers write to stdout/stderr, libraries to logging."""
    out, err = capsys.readouterr()
    return "\n".join([out, err, caplog.text])


def test_unusable_store_warns_and_falls_back_to_ims(emu, adobe_conns, tmp_path, capsys, caplog) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'no-schema.db'}")  # no tf_ims_token table
    caplog.set_level(logging.DEBUG)
    try:
        token = AdobeImsHook(token_store=engine).get_token()
        clear_token_cache()
        assert AdobeImsHook(token_store=engine).get_token() != token
    finally:
        engine.dispose()
    assert token_requests(emu) == 2
    text = logged(capsys, caplog)
    warnings = [line for line in text.splitlines() if "IMS token store" in line]
    assert any("could not read the stored token" in w and "OperationalError" in w for w in warnings), text
    assert any("could not store the new token" in w for w in warnings), text
    assert all("warn" in w.lower() for w in warnings)
    assert token not in text


def test_minted_and_loaded_tokens_are_masked_and_never_logged(
    emu, adobe_conns, store_engine, monkeypatch, capsys, caplog
) -> None:
    import airflow.sdk.log

    masked: list[str] = []
    monkeypatch.setattr(airflow.sdk.log, "mask_secret", lambda secret, *a, **k: masked.append(secret))
    caplog.set_level(logging.DEBUG)
    token = AdobeImsHook(token_store=store_engine).get_token()
    assert masked.count(token) == 1  # minted
    new_process_hook(store_engine).get_token()
    assert masked.count(token) == 2  # loaded from the store
    assert token_requests(emu) == 1
    text = logged(capsys, caplog)
    assert "IMS token minted" in text and "reused from the token store" in text
    for secret in (token, emu.client.client_secret):
        assert secret not in text


def test_hook_repr_shows_neither_secrets_nor_the_store_url(emu, adobe_conns, store_engine) -> None:
    hook = AdobeImsHook(token_store=store_engine)
    token = hook.get_token()
    text = repr(hook)
    assert text.startswith("AdobeImsHook(adobe_ims_conn_id='adobe_ims'")
    assert store_engine.dialect.name in text
    for secret in (token, emu.client.client_secret, str(store_engine.url.database)):
        assert secret not in text
    assert token not in repr(hook.fetch_token())
    assert emu.client.client_secret not in repr(hook._settings())


def test_concurrent_processes_minting_at_once_leave_one_valid_row(emu, adobe_conns, store_url, store_engine) -> None:
    """Several task processes with an empty store mint at the same moment: all succeed, last writer wins."""
    script = (
        "import sys, time\n"
        "from include.triggerflow.store.engines import get_engine\n"
        "from include.triggerflow.hooks.ims import AdobeImsHook\n"
        "hook = AdobeImsHook(token_store=get_engine(sys.argv[1]))\n"
        "while time.time() < float(sys.argv[2]): time.sleep(0.005)\n"
        "print(hook.get_token(force_refresh=True))\n"
    )
    start_at = time.time() + 8  # after every interpreter has imported Airflow
    env = {**os.environ}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, store_url, str(start_at)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    tokens = [out.strip().splitlines()[-1] for out, _ in outputs]
    assert len(set(tokens)) == 3
    assert token_requests(emu) == 3
    rows = stored_rows(store_engine)
    assert len(rows) == 1
    kept = decrypt_token(rows[0]["ciphertext"], emu.client.client_secret, rows[0]["cache_key"])
    assert kept is not None and kept.access_token in tokens
    for token in tokens:  # every process's token is a valid one
        resp = requests.get(emu.client.journal_url, headers=emu.client.journal_headers(token), timeout=10)
        assert resp.status_code == 204


# -- short-lived tokens (a second emulator whose tokens last 20 s) ------------------------------------------
@pytest.fixture(scope="module")
def short_emulator(tmp_path_factory):
    from devstack.processes import start_emulator

    with start_emulator(token_ttl=20, log_path=tmp_path_factory.mktemp("short") / "emulator.log") as emu:
        yield emu


@pytest.fixture
def short_emu(short_emulator, monkeypatch):
    short_emulator.client.reset()
    clear_token_cache()
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
        "conn_type": "http", "host": short_emulator.base_url, "login": short_emulator.client.client_id,
        "password": short_emulator.client.client_secret,
        "extra": {"org_id": short_emulator.client.org_id, "scopes": "openid,AdobeID"},
    }))
    yield short_emulator
    clear_token_cache()


def test_short_lived_tokens_are_still_reused(short_emu, store_engine) -> None:
    # A fixed 5-minute margin would make a 20 s token unusable on arrival: 3 requests.
    tokens = {new_process_hook(store_engine).get_token() for _ in range(3)}
    tokens |= {AdobeImsHook(token_store=store_engine).get_token() for _ in range(2)}
    assert len(tokens) == 1
    assert token_requests(short_emu) == 1
    token = AdobeImsHook(token_store=store_engine).fetch_token()
    assert token.lifetime_s == pytest.approx(20, abs=1)
