"""The real service (uvicorn on a free port) over httpx: happy paths, bad requests, limits,
concurrent clients."""

from __future__ import annotations

import copy
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import polars as pl
import pytest

from seqtwins.embed import export_embeddings
from seqtwins.serve.app import create_app
from seqtwins.serve.limits import Limits
from tests.serve.conftest import live_server


@pytest.fixture(scope="module")
def url(loaded):
    with live_server(create_app(loaded)) as base:
        yield base


@pytest.fixture(scope="module")
def small_url(loaded):
    """The same model behind small limits."""
    limits = Limits(max_body_bytes=2000, max_batch=4, max_sequence_length=20, max_k=10)
    with live_server(create_app(loaded, limits)) as base:
        yield base


def history_ids(loaded, user: int) -> list[str]:
    """User ``user``'s history as original item ids (oldest first)."""
    ids = loaded.ds.items["item_id"].to_list()  # row i = item_idx i + 1
    return [ids[i - 1] for i in loaded.ds.sequences.history(user)]


def check_error(r: httpx.Response, status: int, text: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert text in body["error"], body
    assert "Traceback" not in r.text
    return body


def test_health_and_info(url, loaded, tiny_run):
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    info = httpx.get(f"{url}/info").json()
    assert info["data_hash"] == loaded.ds.content_hash
    assert (info["dim"], info["objective"], info["items"], info["users"]) == (16, "barlow", 40, 240)
    assert info["run"] == tiny_run[1].name and info["checkpoint"] == "best"
    assert "data" not in info and str(tiny_run[1].parent) not in json.dumps(info)  # no paths
    assert info["index"]["kind"] == "flat"
    assert info["limits"]["max_batch"] == Limits().max_batch


def test_embed_equals_seqtwins_embed(url, loaded, tiny_run, tmp_path):
    """A dataset user's history through /embed = that user's row of `seqtwins embed`."""
    data, run = tiny_run
    export_embeddings(run, data, tmp_path / "emb.parquet")
    offline = np.stack(pl.read_parquet(tmp_path / "emb.parquet")["embedding"].to_numpy())
    users = [0, 5, 17, 200]
    r = httpx.post(f"{url}/embed", json={"sequences": [history_ids(loaded, u) for u in users]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == 16 and body["skipped"] == [] and body["unknown_items"] == [[]] * 4
    np.testing.assert_allclose(np.array(body["embeddings"]), offline[users], atol=1e-5)
    for u in users:  # the stored rows: exactly what `seqtwins embed` wrote
        got = httpx.get(f"{url}/users/user{u}/embedding").json()
        assert got["user"] == f"user{u}" and got["split"] == loaded.splits[u]
        assert np.array_equal(np.float32(got["embedding"]), offline[u])


def test_unknown_items_reported_per_row_and_skipped(url):
    seqs = [["it1", "nope", "it2", 7], ["it1", "it2"], ["x", "y"], []]
    body = httpx.post(f"{url}/embed", json={"sequences": seqs}).json()
    assert body["unknown_items"] == [["nope", 7], [], ["x", "y"], []]
    assert body["skipped"] == [2, 3]
    assert body["embeddings"][2] is None and body["embeddings"][3] is None
    np.testing.assert_allclose(body["embeddings"][0], body["embeddings"][1], atol=1e-6)
    assert httpx.post(f"{url}/embed", json={"sequences": []}).json()["embeddings"] == []


def test_integer_item_ids_are_matched_as_text(url, loaded):
    """Against numeric item ids (the dataset's "it7" renamed "7"), a client's 7 and "7"
    are the same item, and the same item as "it7" in the original."""
    numeric = copy.copy(loaded)
    numeric.items = {k.removeprefix("it"): v for k, v in loaded.items.items()}
    seqs = [["it7", "it3"], ["it7", "it3", 123456]]
    original = httpx.post(f"{url}/embed", json={"sequences": seqs}).json()
    with live_server(create_app(numeric)) as base:
        body = httpx.post(f"{base}/embed", json={"sequences": [[7, 3], ["7", "3"], [7, "3"]]})
        unknown = httpx.post(f"{base}/embed", json={"sequences": [[123456, 7]]}).json()
    body = body.json()
    assert body["unknown_items"] == [[], [], []] and body["skipped"] == []
    for vector in body["embeddings"]:
        np.testing.assert_allclose(vector, original["embeddings"][0], atol=1e-6)
    assert original["unknown_items"] == [[], [123456]] and unknown["unknown_items"] == [[123456]]


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "the body is empty"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"sequences": [["\xff\xfe"]]}', "not valid JSON"),
        (b'{"sequences": [[NaN]]}', "not valid JSON"),  # not JSON, though Python reads it
        (b'{"sequences": [[1e400]]}', "not valid JSON"),
        (b'{"sequences": [["\\ud800"]]}', "not valid JSON"),  # a lone surrogate
    ],
)
def test_malformed_json_is_400(url, content, text):
    r = httpx.post(f"{url}/embed", content=content, headers={"content-type": "application/json"})
    check_error(r, 400, text)


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        ([["it1"]], "must be a JSON object, not an array"),
        ({"sequence": [["it1"]]}, "unknown field 'sequence'"),
        ({}, "missing field 'sequences'"),
        ({"sequences": "it1 it2"}, "'sequences' must be an array of arrays, not a string"),
        ({"sequences": ["it1"]}, "sequences[0] must be an array of item ids, not a string"),
        ({"sequences": [["it1", 2.5]]}, "sequences[0][1] must be an item id"),
        ({"sequences": [["it1"], [True]]}, "sequences[1][0] must be an item id"),
        ({"sequences": [[{"id": 1}]]}, "not an object"),
        ({"sequences": [[None]]}, "not null"),
        # past 64 bits a JSON integer is read as a number: not an id, never an overflow
        (
            {"sequences": [[2**70]]},
            "sequences[0][0] must be an item id (string or integer), "
            "not an integer past 64 bits (send such ids as strings)",
        ),
    ],
)
def test_wrong_types_are_422(url, payload, text):
    check_error(httpx.post(f"{url}/embed", json=payload), 422, text)


def test_limits_name_themselves(small_url):
    r = httpx.post(f"{small_url}/embed", json={"sequences": [["it1"]] * 5})
    assert check_error(r, 422, "max_batch=4")["limit"] == "max_batch"
    r = httpx.post(f"{small_url}/embed", json={"sequences": [["it1"] * 21]})
    body = check_error(r, 422, "sequences[0]")
    assert (body["limit"], body["value"]) == ("max_sequence_length", 20)
    r = httpx.post(f"{small_url}/neighbors", json={"user": "user1", "k": 11})
    assert check_error(r, 422, "max_k=10")["limit"] == "max_k"


def test_huge_payloads_are_413(small_url):
    huge = json.dumps({"sequences": [["it1"] * 10] * 100}).encode()
    body = check_error(httpx.post(f"{small_url}/embed", content=huge), 413, "max_body_bytes")
    assert body["value"] == 2000

    def chunks():  # no Content-Length: the server counts what arrives
        yield b'{"sequences": [['
        for _ in range(500):
            yield b'"it1", '
        yield b'"it1"]]}'

    check_error(httpx.post(f"{small_url}/embed", content=chunks()), 413, "(so far)")
    assert httpx.get(f"{small_url}/health").status_code == 200


def test_unknown_user_route_and_method_are_json_4xx(url):
    check_error(httpx.get(f"{url}/users/nobody/embedding"), 404, "'nobody' is not in the dataset")
    check_error(httpx.get(f"{url}/nowhere"), 404, "Not Found")
    check_error(httpx.get(f"{url}/embed"), 405, "Method Not Allowed")
    check_error(httpx.post(f"{url}/neighbors", json={"user": "nobody"}), 404, "not in the dataset")


def test_neighbors_of_a_user_match_brute_force(url, loaded):
    body = httpx.post(f"{url}/neighbors", json={"user": "user3", "k": 7}).json()
    x = loaded.user_vectors / np.linalg.norm(loaded.user_vectors, axis=1, keepdims=True)
    scores = x @ x[3]
    scores[3] = -np.inf  # itself excluded
    want = np.argsort(-scores, kind="stable")[:7]
    got = [n["user"] for n in body["neighbors"]]
    assert body["index"] == "flat" and len(got) == 7 and "user3" not in got
    np.testing.assert_allclose([n["score"] for n in body["neighbors"]], scores[want], atol=1e-5)
    # ties at the k-th score may be broken either way: every user strictly above it must
    # be there, and nobody below it
    kth, rows = scores[want[-1]], [int(u.removeprefix("user")) for u in got]
    assert set(np.flatnonzero(scores > kth + 1e-5).tolist()) <= set(rows)
    assert all(scores[r] >= kth - 1e-5 for r in rows)


def test_neighbors_of_fresh_items(url, loaded):
    items = history_ids(loaded, 3)
    body = httpx.post(f"{url}/neighbors", json={"items": [*items, "zzz"], "k": 5}).json()
    assert body["unknown_items"] == ["zzz"]
    assert body["neighbors"][0]["user"] == "user3"  # its own history: itself first
    assert body["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    check_error(httpx.post(f"{url}/neighbors", json={"items": ["zzz"]}), 422, "no item known")
    check_error(httpx.post(f"{url}/neighbors", json={"k": 3}), 422, "exactly one of")
    check_error(httpx.post(f"{url}/neighbors", json={"user": "user1", "k": 0}), 422, "'k'")
    check_error(httpx.post(f"{url}/neighbors", json={"user": "user1", "k": "5"}), 422, "'k'")


def test_concurrent_clients_get_their_own_rows(url, loaded):
    """16 clients at once: each answer is the one its own sequences get alone."""
    seqs = [history_ids(loaded, u) for u in range(48)]
    alone = np.array(httpx.post(f"{url}/embed", json={"sequences": seqs}).json()["embeddings"])
    before = httpx.get(f"{url}/info").json()["batching"]

    def client(c: int) -> list[tuple[int, list[float]]]:
        out = []
        with httpx.Client(base_url=url) as http:
            for r in range(6):
                rows = [(c * 3 + r) % 48, (c * 5 + r * 7) % 48]
                body = http.post("/embed", json={"sequences": [seqs[i] for i in rows]}).json()
                out += list(zip(rows, body["embeddings"], strict=True))
        return out

    with ThreadPoolExecutor(16) as pool:
        results = [x for part in pool.map(client, range(16)) for x in part]
    assert len(results) == 16 * 6 * 2
    for row, vector in results:
        np.testing.assert_allclose(vector, alone[row], atol=1e-5)
    after = httpx.get(f"{url}/info").json()["batching"]
    assert after["requests"] - before["requests"] == 16 * 6


def test_requests_that_wait_together_share_an_encoder_call(loaded, monkeypatch):
    """While one request is in the encoder (held here until 15 others are queued), the
    requests sent meanwhile must go to the encoder together, not one call each."""
    real = loaded.embed
    held = threading.Event()

    def slow(rows):
        if not held.is_set():
            held.set()
            deadline = time.monotonic() + 30
            while app.state.batcher.queued < 15 and time.monotonic() < deadline:
                time.sleep(0.01)
        return real(rows)

    monkeypatch.setattr(loaded, "embed", slow)  # the app binds model.embed when it is built
    app = create_app(loaded)
    seqs = [history_ids(loaded, u) for u in range(16)]
    with live_server(app) as base:

        def client(u: int) -> list[float]:
            if u > 0:  # the others once request 0 is in the encoder
                assert held.wait(30)
            r = httpx.post(f"{base}/embed", json={"sequences": [seqs[u]]}, timeout=60)
            return r.json()["embeddings"]

        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(client, range(16)))
        stats = httpx.get(f"{base}/info").json()["batching"]
    assert stats["requests"] == 16 and len(got) == 16 and stats["queued"] == 0
    assert (stats["encoder_calls"], stats["largest_call"]) == (2, 15)  # 1 held, then 15 at once


def test_a_failing_encoder_is_a_500_without_traceback(loaded, monkeypatch):
    def boom(rows):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(loaded, "embed", boom)  # the app binds model.embed when it is built
    with live_server(create_app(loaded)) as url:
        r = httpx.post(f"{url}/embed", json={"sequences": [["it1"]]})
        check_error(r, 500, "internal server error")
        assert "secret" not in r.text
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/users/user1/embedding").status_code == 200
