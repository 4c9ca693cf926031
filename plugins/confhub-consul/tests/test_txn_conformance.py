"""The ``/v1/txn`` verbs the writer's transactions use, against the test server (and a real
``consul agent -dev`` when one is on PATH): consul-api.md section 2.10, checklist 43-46.

``delete`` adds no result, ``check-not-exists`` and ``check-index`` fail the whole
transaction with Consul's words, every failing op is listed, and nothing is applied.
"""

from __future__ import annotations

import base64
from typing import Any

from conftest import Target


def _op(verb: str, key: str, value: bytes | None = None, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"Verb": verb, "Key": key, **extra}
    if value is not None:
        op["Value"] = base64.b64encode(value).decode()
    return {"KV": op}


def test_a_write_txn_with_deletes_and_checks(target: Target, K: str) -> None:
    """[2.10] set + delete + check-not-exists + cas in one txn: 200, results only for the
    writes that store an entry (a delete adds none), one ModifyIndex for the writes."""
    target.put(f"{K}/a", b"1")
    target.put(f"{K}/b", b"2")
    b = target.entry(f"{K}/b")
    assert b is not None
    ops = [
        _op("set", f"{K}/c", b"3"),
        _op("delete", f"{K}/a"),
        _op("check-not-exists", f"{K}/zz"),
        _op("cas", f"{K}/b", b"22", Index=b["ModifyIndex"]),
        _op("delete", f"{K}/never-there"),
    ]
    resp = target.http("PUT", "/v1/txn", json_body=ops)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["Errors"] is None
    assert [r["KV"]["Key"] for r in body["Results"]] == [f"{K}/c", f"{K}/b"]
    assert body["Results"][0]["KV"]["ModifyIndex"] == body["Results"][1]["KV"]["ModifyIndex"]
    assert "X-Consul-Index" not in resp.headers  # a write txn carries no index header
    assert target.entry(f"{K}/a") is None


def test_every_failing_check_is_listed_and_nothing_applies(target: Target, K: str) -> None:
    """[2.10, #44] check-not-exists on an existing key and a stale cas: 409 listing both
    ops by OpIndex in Consul's words; the set before them is not applied."""
    target.put(f"{K}/a", b"1")
    a = target.entry(f"{K}/a")
    assert a is not None
    ops = [
        _op("set", f"{K}/new", b"x"),
        _op("check-not-exists", f"{K}/a"),
        _op("cas", f"{K}/a", b"2", Index=a["ModifyIndex"] + 50),
    ]
    resp = target.http("PUT", "/v1/txn", json_body=ops)
    assert resp.status_code == 409
    assert resp.json() == {
        "Results": None,
        "Errors": [
            {"OpIndex": 1, "What": f'key "{K}/a" exists'},
            {"OpIndex": 2, "What": f'failed to set key "{K}/a", index is stale'},
        ],
    }
    assert target.entry(f"{K}/new") is None


def test_cas_zero_and_check_index_on_a_missing_key(target: Target, K: str) -> None:
    """[2.10] cas with Index 0 creates only a missing key; check-index on a missing key
    fails with "doesn't exist"; delete-cas on a missing key succeeds (section 2.6)."""
    created = target.http("PUT", "/v1/txn", json_body=[_op("cas", f"{K}/n", b"1", Index=0)])
    assert created.status_code == 200, created.text
    again = target.http("PUT", "/v1/txn", json_body=[_op("cas", f"{K}/n", b"2", Index=0)])
    assert again.status_code == 409
    assert again.json()["Errors"] == [
        {"OpIndex": 0, "What": f'failed to set key "{K}/n", index is stale'}
    ]
    missing = target.http("PUT", "/v1/txn", json_body=[_op("check-index", f"{K}/zz", Index=3)])
    assert missing.status_code == 409
    assert missing.json()["Errors"] == [
        {"OpIndex": 0, "What": f'failed to check index, key "{K}/zz" doesn\'t exist'}
    ]
    gone = target.http("PUT", "/v1/txn", json_body=[_op("delete-cas", f"{K}/zz", Index=7)])
    assert gone.status_code == 200, gone.text
