"""Several models in one real server process (`--model` twice), over real sockets.

The bundled all-MiniLM-L6-v2 (as `mini`, the default) and the debug model (as `dbg`) answer different
vectors for the same text, so each response shows which model computed it; each is compared with a
server that serves that model alone. One server per configuration, shared by the module's tests (the
bundled model takes 10-15 s to load and calibrate on an idle machine, much longer on a loaded one).

The drain test signals the server subprocess, not this process, so unlike tests/test_serve_drain.py
(which runs `serve.main` in process and so sends SIGTERM to its own interpreter) it needs no child
pytest of its own.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest
import trio

from tests.serverproc import Response, ServerProcess, get, metrics, post_json, wait_until

pytestmark = pytest.mark.e2e

MINI = "sentence-transformers/all-MiniLM-L6-v2"
# Loading torch and calibrating the bundled model can take minutes on the loaded 2-core machine.
START_LIMIT = 300.0
LIMIT = 120.0  # a bound on any one wait, far above what it needs
# MODEL_NAME is set to `debug` by ServerProcess; `--model` and MODEL_NAME together are refused, and an
# empty variable means "not set".
NO_MODEL_NAME = {"MODEL_NAME": ""}
PATIENT = ["--request-timeout", "600"]
TEXTS = [
    "Hi",
    "trio makes structured concurrency practical",
    "An embedding server turns text into vectors that capture meaning. " * 3,
]


def _start(args: list[str], env: dict[str, str]) -> Iterator[ServerProcess]:
    server = ServerProcess(args=args, env=env).start(timeout=START_LIMIT)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def both() -> Iterator[ServerProcess]:
    yield from _start(["--model", f"mini={MINI}", "--model", "dbg=debug", *PATIENT], NO_MODEL_NAME)


@pytest.fixture(scope="module")
def mini_alone() -> Iterator[ServerProcess]:
    yield from _start(PATIENT, NO_MODEL_NAME)


@pytest.fixture(scope="module")
def debug_alone() -> Iterator[ServerProcess]:
    yield from _start(PATIENT, {})


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


async def embed(server: ServerProcess, text: str, model: str | None = None) -> tuple[str, np.ndarray]:
    """(the answering model's name, the vector) from `/embed`."""
    body: dict[str, Any] = {"input_text": text}
    if model is not None:
        body["model"] = model
    response = await post_json(server.port, "/embed", body, limit=LIMIT)
    assert response.status == 200, response.body
    answer = response.json()
    return answer["model"], np.array(answer["embedding"], dtype=np.float32)


async def v1_embed(server: ServerProcess, texts: list[str], model: str) -> tuple[str, list[np.ndarray]]:
    body = {"model": model, "input": texts, "encoding_format": "float"}
    response = await post_json(server.port, "/v1/embeddings", body, limit=LIMIT)
    assert response.status == 200, response.body
    answer = response.json()
    return answer["model"], [np.array(item["embedding"], dtype=np.float32) for item in answer["data"]]


def model_labels(samples: dict[str, float]) -> set[str]:
    return {match for key in samples for match in re.findall(r'model="([^"]*)"', key)}


# --------------------------------------------------------------------------------- (a) own vectors


async def test_each_model_answers_its_own_vectors_as_when_served_alone(
    both: ServerProcess, mini_alone: ServerProcess, debug_alone: ServerProcess
) -> None:
    alone: dict[tuple[str, str], np.ndarray] = {}
    together: dict[tuple[str, str], tuple[str, np.ndarray]] = {}

    async def from_both(text: str, model: str | None, key: str) -> None:
        together[key, text] = await embed(both, text, model)

    for text in TEXTS:
        name, alone["mini", text] = await embed(mini_alone, text)
        assert name == MINI
        name, alone["dbg", text] = await embed(debug_alone, text)
        assert name == "debug"
    # Concurrently on both models of the two-model server, so their passes share the device.
    async with trio.open_nursery() as nursery:
        for text in TEXTS:
            nursery.start_soon(from_both, text, None, "mini")  # no model: the default, the first given
            nursery.start_soon(from_both, text, "dbg", "dbg")

    for text in TEXTS:
        mini_name, mini_vector = together["mini", text]
        dbg_name, dbg_vector = together["dbg", text]
        assert (mini_name, dbg_name) == ("mini", "dbg")
        assert mini_vector.shape == dbg_vector.shape == (384,)
        assert cosine(mini_vector, alone["mini", text]) > 0.9999, text
        np.testing.assert_allclose(mini_vector, alone["mini", text], atol=1e-4)
        np.testing.assert_array_equal(dbg_vector, alone["dbg", text])  # a hash: bit for bit
        assert abs(cosine(mini_vector, dbg_vector)) < 0.5, text  # two different models


@pytest.mark.parametrize(
    ("name", "answered_by"),
    [("mini", "mini"), (MINI, "mini"), ("all-MiniLM-L6-v2", "mini"), ("dbg", "dbg"), ("debug", "dbg")],
)
async def test_v1_routes_by_alias_full_or_short_name(
    both: ServerProcess, debug_alone: ServerProcess, name: str, answered_by: str
) -> None:
    model, vectors = await v1_embed(both, TEXTS[:2], name)
    assert model == answered_by
    for text, vector in zip(TEXTS[:2], vectors, strict=True):
        _, via_embed = await embed(both, text, answered_by)
        np.testing.assert_allclose(vector, via_embed, atol=1e-4)
        if answered_by == "dbg":
            np.testing.assert_array_equal(vector, (await embed(debug_alone, text))[1])


async def test_health_lists_both_models_and_the_log_names_each_load(both: ServerProcess) -> None:
    response = await get(both.port, "/health")
    assert response.status == 200
    health = response.json()
    assert health["status"] == "healthy"
    assert health["model"] == "mini"
    assert set(health["models"]) == {"mini", "dbg"}
    assert health["models"]["dbg"]["backend"] == "debug"
    assert health["models"]["mini"]["backend"] == "torch"
    log = both.log()
    assert re.search(rf"model mini loaded \({re.escape(MINI)}\): \+\d+ MiB resident memory", log), log
    assert re.search(r"model dbg loaded \(debug\): \+\d+ MiB resident memory", log), log


# ------------------------------------------------------------------------------- (b) unknown: 404


async def test_unknown_model_is_404_on_both_apis_over_the_wire(both: ServerProcess) -> None:
    response = await post_json(both.port, "/embed", {"input_text": "x", "model": "nope"}, limit=LIMIT)
    assert response.status == 404, response.body
    body = response.json()
    assert body["error"] == "model_not_found"
    assert "'nope'" in body["detail"] and "'mini'" in body["detail"] and "'dbg'" in body["detail"]

    response = await post_json(both.port, "/v1/embeddings", {"model": "nope", "input": ["x"]}, limit=LIMIT)
    assert response.status == 404, response.body
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "model_not_found",
        "model",
        "invalid_request_error",
    )

    response = await get(both.port, "/v1/models/nope")
    assert response.status == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_the_openai_client_sees_both_models_and_a_404_for_others(
    both: ServerProcess, debug_alone: ServerProcess
) -> None:
    client = openai.OpenAI(base_url=f"{both.base_url}/v1", api_key="unused", timeout=LIMIT, max_retries=0)
    assert [model.id for model in client.models.list().data] == ["mini", "dbg"]
    assert client.models.retrieve("debug").id == "dbg"
    assert client.models.retrieve(MINI).id == "mini"

    result = client.embeddings.create(model="dbg", input=["one text", "another"])  # base64 on the wire
    assert result.model == "dbg"
    alone = openai.OpenAI(base_url=f"{debug_alone.base_url}/v1", api_key="unused", timeout=LIMIT)
    expected = alone.embeddings.create(model="debug", input=["one text", "another"])
    for got, want in zip(result.data, expected.data, strict=True):
        np.testing.assert_array_equal(np.array(got.embedding), np.array(want.embedding))

    with pytest.raises(openai.NotFoundError) as raised:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert raised.value.code == "model_not_found"
    assert raised.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("text-embedding-3-small")


# ------------------------------------------------------------------------------------- (c) metrics


async def test_metrics_carry_both_model_labels_and_no_other(both: ServerProcess) -> None:
    before = await metrics(both.port)
    assert model_labels(before) == {"mini", "dbg"}
    await embed(both, "counted for mini")
    await embed(both, "counted for dbg", "dbg")
    for name in ("nope", "other-model"):
        response = await post_json(both.port, "/embed", {"input_text": "x", "model": name}, limit=LIMIT)
        assert response.status == 404
    after = await metrics(both.port)
    for model in ("mini", "dbg"):
        key = f'batcher_requests_total{{model="{model}",priority="interactive",status="success"}}'
        assert after[key] == before[key] + 1, model
        assert after[f'trio_infer_model_info{{device="cpu",model="{model}"}}'] == 1
    assert model_labels(after) == {"mini", "dbg"}


# --------------------------------------------------------------------------------------- (d) drain


async def test_sigterm_drains_every_admitted_request_of_both_models() -> None:
    """Two debug models (`a`, `b`) share the CPU's scheduler. `a`'s `[[sleep:S]]` holder keeps the
    device while requests for both queue behind it (seen on /health's `models` section, never
    guessed with a timer); then SIGTERM: every one of them gets its 200, from its own model.
    The models come from the MODELS variable here, the other servers' from `--model`."""
    args = ["--debug-faults", "--graceful-timeout", "60", *PATIENT]
    env = {**NO_MODEL_NAME, "MODELS": "a=debug, b=debug"}
    holder = "[[sleep:6]] the pass running when the signal arrives"
    queued = {
        "a": [f"[[sleep:0.2]] queued for a {i}" for i in range(8)],
        "b": [f"queued for b {i}" for i in range(8)],
    }
    answers: dict[str, Response] = {}

    async def send(text: str, model: str) -> None:
        answers[text] = await post_json(
            server.port, "/embed", {"input_text": text, "model": model}, limit=LIMIT
        )

    async def health() -> dict[str, Any]:
        models: dict[str, Any] = (await get(server.port, "/health")).json()["models"]
        return models

    with ServerProcess(args=args, env=env) as server:
        assert server.proc is not None
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as clients:
                clients.start_soon(send, holder, "a")

                async def holder_running() -> bool:
                    return bool((await health())["a"]["inflight_batches"] == 1)

                await wait_until(holder_running, LIMIT, "the holder's pass to start")
                for model, texts in queued.items():
                    for text in texts:
                        clients.start_soon(send, text, model)

                async def all_queued() -> bool:
                    models = await health()
                    return bool(
                        models["a"]["inflight_batches"] == 1
                        and models["a"]["queue_size"] == len(queued["a"])
                        and models["b"]["queue_size"] == len(queued["b"])
                    )

                await wait_until(all_queued, LIMIT, "the requests of both models to queue behind the holder")
                server.proc.send_signal(signal.SIGTERM)
            returncode = await trio.to_thread.run_sync(server.proc.wait, LIMIT)

        assert returncode == 0, server.log()
        assert "drained; exiting" in server.log()

    expected = {holder: "a"} | {text: model for model, texts in queued.items() for text in texts}
    assert sorted(answers) == sorted(expected)
    statuses = {text: response.status for text, response in answers.items()}
    assert set(statuses.values()) == {200}, statuses
    for text, response in answers.items():
        body = response.json()
        assert body["model"] == expected[text]
        assert len(body["embedding"]) == 384


# ----------------------------------------------------------------------------------- (e) fail fast


def test_a_model_that_fails_to_load_stops_the_start_naming_it() -> None:
    server = ServerProcess(args=["--model", "ok=debug", "--model", "bad=/nonexistent"], env=NO_MODEL_NAME)
    try:
        # `start` returns only once /ready answers 200; the process must exit before that.
        with pytest.raises(RuntimeError, match="server exited with 1"):
            server.start(timeout=START_LIMIT)
        assert server.proc is not None and server.proc.returncode == 1
        log = server.log()
        failed = [line for line in log.splitlines() if "failed to load" in line]
        assert len(failed) == 1, log
        assert "model 'bad' (/nonexistent) failed to load" in failed[0]
        assert failed[0].rstrip().endswith("not starting")
        assert "CRITICAL" in failed[0].upper()
        assert "Traceback" not in log  # a configuration problem, not a crash
        assert "model ok loaded (debug)" in log  # the models load in order; the first was fine
        assert "ready on" not in log
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        server.log_path.unlink(missing_ok=True)
