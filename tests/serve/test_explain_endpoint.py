"""``GET /users/{id}/explain`` on the real service (uvicorn on a free port) over httpx: the
answer of ``seqtwins explain --json``, the explainer built once and reused, errors as JSON."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from seqtwins.errors import SeqtwinsError
from seqtwins.explain import SCHEMA, explain_user
from seqtwins.serve.app import create_app
from seqtwins.serve.limits import Limits
from tests.helpers import tiny_run as make_tiny_run
from tests.serve.conftest import live_server
from tests.serve.test_app import check_error, history_ids

USER = "user7"


@pytest.fixture(scope="module")
def url(loaded):
    with live_server(create_app(loaded, Limits(max_k=20))) as base:
        yield base


@pytest.fixture(scope="module")
def dual_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset, run): the tiny dataset and one epoch of ``dual`` (an item tower)."""
    return make_tiny_run(tmp_path_factory.mktemp("serve-dual"), epochs=1, objective="dual")


@pytest.fixture(scope="module")
def dual_url(dual_run):
    from seqtwins.serve.model import LoadedModel

    data, run = dual_run
    with live_server(create_app(LoadedModel.load(run, data))) as base:
        yield base


def assert_close(got: Any, want: Any, path: str = "") -> None:
    """Equal JSON, floats to 1e-5 (the server's torch threads may order sums differently)."""
    if isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), path
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), path
        for key in want:
            assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


def cli_answer(run: Path, data: Path, user: str, **kwargs: Any) -> dict[str, Any]:
    """What `seqtwins explain --json` prints (explain_user's JSON), without its timing."""
    doc = json.loads(explain_user(run, data, user, **kwargs).to_json())
    doc.pop("seconds")
    return doc


def get(url: str, user: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{url}/users/{user}/explain", params=params, timeout=120)


def test_explain_is_seqtwins_explain_json(url, tiny_run):
    data, run = tiny_run
    r = get(url, USER, task="segment", k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["schema"] == SCHEMA and isinstance(body.pop("seconds"), float)
    # names, never the server's paths
    assert body["run"] == run.name and body["dataset"] == data.name
    assert str(run.parent) not in r.text and str(data.parent) not in r.text
    want = cli_answer(run, data, USER, task="segment", k=3)
    want["run"], want["dataset"] = run.name, data.name
    assert_close(body, want)
    assert body["items"] is None  # barlow: no item vectors
    # a second user, default k, no task: explain_user's answer too
    body = get(url, "user12").json()
    body.pop("seconds")
    want = cli_answer(run, data, "user12")
    want["run"], want["dataset"] = run.name, data.name
    assert_close(body, want)
    assert "task" not in body["targets"] and len(body["neighbours"]) == 10


def test_explainer_is_built_once_and_reused(url, loaded):
    """The second answer equals the first; the explainer and the task's probe are kept."""
    first = get(url, USER, task="segment", k=4).json()
    explainer = loaded.explainer()
    probe = explainer.probe("segment")
    second = get(url, USER, task="segment", k=4).json()
    assert loaded.explainer() is explainer and explainer.probe("segment") is probe
    first.pop("seconds"), second.pop("seconds")
    assert second == first
    assert explainer.encoder is not loaded.encoder  # Captum's hooks never touch /embed's


def test_items_of_a_run_with_an_item_tower(dual_url, dual_run):
    data, run = dual_run
    body = get(dual_url, USER, k=5).json()
    body.pop("seconds")
    want = cli_answer(run, data, USER, k=5)
    want["run"], want["dataset"] = run.name, data.name
    assert_close(body, want)
    assert len(body["items"]) == 5 and set(body["items"][0]) == {"rank", "item_id", "category",
                                                                 "score", "in_history"}  # fmt: skip
    assert get(dual_url, USER, k=5, items="false").json()["items"] is None
    assert len(get(dual_url, USER, k=5, items="true").json()["items"]) == 5


def test_concurrent_explain_and_embed(url, loaded):
    """Explanations in flight (Captum hooks the explainer's encoder) leave /embed's rows
    exact, and concurrent explanations of one user agree."""
    users = [0, 5, 17, 200]
    expected = loaded.user_vectors[users]

    def embed(_: int) -> np.ndarray:
        seqs = [history_ids(loaded, u) for u in users]
        r = httpx.post(f"{url}/embed", json={"sequences": seqs}, timeout=120)
        assert r.status_code == 200, r.text
        return np.array(r.json()["embeddings"], dtype=np.float32)

    def explain(_: int) -> dict[str, Any]:
        r = get(url, USER, task="segment", k=3)
        assert r.status_code == 200, r.text
        body = r.json()
        body.pop("seconds")
        return body

    with ThreadPoolExecutor(8) as pool:
        explained = [pool.submit(explain, i) for i in range(4)]
        embedded = [pool.submit(embed, i) for i in range(12)]
        answers = [f.result() for f in explained]
        vectors = [f.result() for f in embedded]
    for v in vectors:
        np.testing.assert_allclose(v, expected, atol=1e-5)
    assert all(a == answers[0] for a in answers[1:])


@pytest.mark.parametrize(
    ("user", "params", "status", "text"),
    [
        ("nobody", {}, 404, "user 'nobody' is not in the dataset"),
        (USER, {"task": "nope"}, 422, "unknown task 'nope'; this dataset's tasks are: "),
        (USER, {"items": "true"}, 422, "has no item vectors"),
        (USER, {"k": 0}, 422, "'k' must be a positive integer"),
        (USER, {"k": "ten"}, 422, "query.k"),
        (USER, {"items": "maybe"}, 422, "query.items"),
    ],
)
def test_bad_requests_are_json_4xx(url, user, params, text, status):
    check_error(get(url, user, **params), status, text)


def test_k_over_the_limit_names_it(url):
    body = check_error(get(url, USER, k=21), 422, "over the limit max_k=20")
    assert body["limit"] == "max_k" and body["value"] == 20


def test_captum_missing_is_501(url, monkeypatch):
    def missing() -> None:
        raise SeqtwinsError(
            'explanations need Captum, which is not installed; pip install "seqtwins[explain]"'
        )

    monkeypatch.setattr("seqtwins.explain.attribution.captum", missing)
    check_error(get(url, USER), 501, "explanations need Captum")
