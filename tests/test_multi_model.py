"""Two models in one service, in process: routing by name on both APIs, 404 for other names, the
`/health` models section, per-model metrics, and the shared device scheduler (passes never overlap, a
quiet model is not starved by a saturated one), on pure-trio fakes and the virtual clock.

`alpha` (the default) answers 8-dimensional vectors and `beta` 4-dimensional ones of another function
of the text, so a response computed by the wrong model cannot pass for the right one.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
import trio
from quart.typing import TestClientProtocol as Client

from tests.fakes import FAKE_COST, FakeEmbedder, text_vector
from trio_infer.config import Settings
from trio_infer.core.batching import Batcher, BatchLimits
from trio_infer.core.jobs import Vector
from trio_infer.core.lifecycle import Lifecycle
from trio_infer.core.metrics import Metrics
from trio_infer.core.scheduler import DeviceScheduler
from trio_infer.core.served_model import ServedModel
from trio_infer.core.service import EmbeddingService
from trio_infer.http.app import create_app

SETTINGS = Settings(request_timeout=5.0, graceful_timeout=2.0, watchdog_timeout=1.0)
FULL_NAMES = {"alpha": "org/alpha-model", "beta": "org/beta-model"}


def beta_vector(text: str) -> Vector:
    return text_vector("beta:" + text, dimension=4)


class BetaEmbedder(FakeEmbedder):
    """A second fake: same costs and records, its own vectors and dimension."""

    name = "beta"
    dimension = 4

    async def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        await super().embed(texts, token_ids)
        return [beta_vector(text) for text in texts]


def make_two_models(
    alpha: FakeEmbedder, beta: FakeEmbedder, settings: Settings = SETTINGS, *, max_batch_size: int = 32
) -> EmbeddingService:
    """`alpha` (the default) and `beta` on one device: one scheduler shared by both batchers."""
    metrics = Metrics()
    scheduler = DeviceScheduler("cpu")
    models = []
    for name, embedder in (("alpha", alpha), ("beta", beta)):
        limits = BatchLimits(
            max_batch_size=max_batch_size,
            max_batch_tokens=4096,
            batch_timeout=0.0,
            batches_ahead=settings.num_batching_workers,
            max_queue_size=settings.max_queue_size,
        )
        batcher = Batcher(embedder, metrics.for_model(name), limits, embedder.cost, scheduler)
        models.append(ServedModel(name, FULL_NAMES[name], batcher, settings.watchdog_timeout))
    lifecycle = Lifecycle(graceful_timeout=settings.graceful_timeout)
    return EmbeddingService(settings, models, lifecycle, metrics)


@pytest.fixture
def alpha() -> FakeEmbedder:
    embedder = FakeEmbedder()
    embedder.name = "alpha"
    return embedder


@pytest.fixture
def beta() -> BetaEmbedder:
    return BetaEmbedder()


@pytest.fixture
async def service(
    alpha: FakeEmbedder, beta: BetaEmbedder, nursery: trio.Nursery
) -> AsyncIterator[EmbeddingService]:
    service = make_two_models(alpha, beta)
    for model in service.models:
        await nursery.start(model.batcher.run)
    service.lifecycle.mark_ready()
    yield service
    for model in service.models:
        model.batcher.close()


@pytest.fixture
async def client(service: EmbeddingService) -> AsyncIterator[Client]:
    app = create_app(service)
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def post(client: Client, path: str, body: Any) -> tuple[int, Any]:
    response = await client.post(path, json=body)
    return response.status_code, await response.get_json()


def model_labels(service: EmbeddingService) -> set[str]:
    """Every value the `model` label takes in the service's registry."""
    return {
        sample.labels["model"]
        for family in service.metrics.registry.collect()
        for sample in family.samples
        if "model" in sample.labels
    }


# ------------------------------------------------------------------------------------------ routing


async def test_embed_without_a_model_uses_the_default(client: Client, alpha: FakeEmbedder) -> None:
    status, body = await post(client, "/embed", {"input_text": "hello there"})
    assert status == 200, body
    assert body["model"] == "alpha"
    assert body["embedding"] == pytest.approx(text_vector("hello there").tolist(), abs=1e-6)
    assert alpha.texts_computed == ["hello there"]


@pytest.mark.parametrize("name", ["beta", "org/beta-model", "beta-model"])
async def test_embed_routes_by_name(
    client: Client, alpha: FakeEmbedder, beta: BetaEmbedder, name: str
) -> None:
    status, body = await post(client, "/embed", {"input_text": "hello there", "model": name})
    assert status == 200, body
    assert body["model"] == "beta"  # the configured name of the model that answered
    assert body["embedding"] == pytest.approx(beta_vector("hello there").tolist(), abs=1e-6)
    assert beta.texts_computed == ["hello there"]
    assert alpha.texts_computed == []


@pytest.mark.parametrize(
    ("name", "answered_by"),
    [
        ("alpha", "alpha"),
        ("org/alpha-model", "alpha"),
        ("alpha-model", "alpha"),
        ("beta", "beta"),
        ("org/beta-model", "beta"),
        ("beta-model", "beta"),
    ],
)
async def test_v1_embeddings_route_by_alias_full_or_short_name(
    client: Client, alpha: FakeEmbedder, beta: BetaEmbedder, name: str, answered_by: str
) -> None:
    texts = ["first text", "second one here"]
    status, body = await post(
        client, "/v1/embeddings", {"model": name, "input": texts, "encoding_format": "float"}
    )
    assert status == 200, body
    assert body["model"] == answered_by
    expected = [text_vector(t) if answered_by == "alpha" else beta_vector(t) for t in texts]
    for item, vector in zip(body["data"], expected, strict=True):
        assert item["embedding"] == pytest.approx(vector.tolist(), abs=1e-6)
    ran, idle = (alpha, beta) if answered_by == "alpha" else (beta, alpha)
    assert sorted(ran.texts_computed) == sorted(texts)
    assert idle.texts_computed == []


async def test_dimensions_are_checked_against_the_named_model(client: Client) -> None:
    """`beta` has 4 dimensions: 8 is fine for `alpha` and refused for `beta`."""
    ok, body = await post(client, "/v1/embeddings", {"model": "alpha", "input": "x y", "dimensions": 8})
    assert ok == 200, body
    status, body = await post(client, "/v1/embeddings", {"model": "beta", "input": "x y", "dimensions": 8})
    assert status == 400, body
    assert body["error"]["param"] == "dimensions"


async def test_unknown_model_is_404_on_embed(
    client: Client, service: EmbeddingService, alpha: FakeEmbedder, beta: BetaEmbedder
) -> None:
    status, body = await post(client, "/embed", {"input_text": "x", "model": "gamma"})
    assert status == 404, body
    assert set(body) == {"error", "detail"}
    assert body["error"] == "model_not_found"
    assert "'gamma'" in body["detail"]
    assert "'alpha'" in body["detail"] and "'beta'" in body["detail"]
    assert alpha.batches == [] and beta.batches == []


@pytest.mark.parametrize("name", ["gamma", "text-embedding-3-small", "org/alpha", "ALPHA", ""])
async def test_unknown_model_is_404_on_v1_in_openai_shape(
    client: Client, alpha: FakeEmbedder, beta: BetaEmbedder, name: str
) -> None:
    status, body = await post(client, "/v1/embeddings", {"model": name, "input": ["x"]})
    assert status == 404, body
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert error["type"] == "invalid_request_error"
    assert repr(name) in error["message"]
    assert alpha.batches == [] and beta.batches == []


async def test_v1_models_lists_both_default_first(client: Client) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == ["alpha", "beta"]
    assert all(model["object"] == "model" and model["owned_by"] == "trio-infer" for model in body["data"])


@pytest.mark.parametrize("name", ["beta", "org/beta-model", "beta-model"])
async def test_v1_model_retrieve_by_any_of_its_names(client: Client, name: str) -> None:
    response = await client.get(f"/v1/models/{name}")
    assert response.status_code == 200
    assert (await response.get_json())["id"] == "beta"


async def test_v1_model_retrieve_unknown_is_404(client: Client) -> None:
    response = await client.get("/v1/models/gamma")
    assert response.status_code == 404
    error = (await response.get_json())["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")


# ------------------------------------------------------------------------------------------- health


async def test_health_reports_the_default_at_the_top_and_every_model(client: Client) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["status"] == "healthy"
    assert body["model"] == "alpha"
    for field in ("device", "backend", "precision", "queue_size", "inflight_batches", "max_batch_tokens"):
        assert field in body, field
    assert "reason" not in body
    assert set(body["models"]) == {"alpha", "beta"}
    for health in body["models"].values():
        assert health["status"] == "healthy"
        assert health["max_batch_tokens"] == 4096
        assert "reason" not in health


async def test_one_unhealthy_model_makes_the_service_unhealthy_naming_it(
    client: Client, service: EmbeddingService, beta: BetaEmbedder, autojump_clock: trio.abc.Clock
) -> None:
    beta.gate = trio.Event()  # beta's forward pass hangs
    async with trio.open_nursery() as nursery:
        nursery.start_soon(post, client, "/embed", {"input_text": "hangs", "model": "beta"})
        await beta.started.wait()
        assert (await client.get("/health")).status_code == 200
        await trio.sleep(SETTINGS.watchdog_timeout + 0.5)  # virtual time: past the watchdog limit
        response = await client.get("/health")
        assert response.status_code == 503
        body = await response.get_json()
        assert body["status"] == "unhealthy"
        assert body["reason"].startswith("model beta: ")
        assert "watchdog" in body["reason"]
        assert body["models"]["beta"]["status"] == "unhealthy"
        assert body["models"]["beta"]["inflight_batches"] == 1
        assert body["models"]["alpha"]["status"] == "healthy"
        assert body["model"] == "alpha"  # the top level still describes the default model
        assert (await client.get("/ready")).status_code == 503
        beta.gate.set()
    response = await client.get("/health")
    assert response.status_code == 200
    assert (await response.get_json())["status"] == "healthy"


async def test_an_unhealthy_default_model_gives_its_own_reason(
    client: Client, service: EmbeddingService
) -> None:
    service.default.batcher.running = False  # as when its batcher has stopped
    response = await client.get("/health")
    assert response.status_code == 503
    body = await response.get_json()
    assert body["status"] == "unhealthy"
    assert body["reason"] == "the batcher is not running"  # the default's reason, as before
    assert body["models"]["alpha"]["status"] == "unhealthy"
    assert body["models"]["beta"]["status"] == "healthy"
    # The other model still serves.
    status, answer = await post(client, "/embed", {"input_text": "still here", "model": "beta"})
    assert (status, answer["model"]) == (200, "beta")
    service.default.batcher.running = True


# ------------------------------------------------------------------------------------------ metrics


async def test_metrics_per_model_and_only_configured_names_as_labels(
    client: Client, service: EmbeddingService
) -> None:
    assert model_labels(service) == {"alpha", "beta"}  # every series exists from the start
    for i in range(3):
        assert (await post(client, "/embed", {"input_text": f"a {i}"}))[0] == 200
    for i in range(2):
        assert (await post(client, "/embed", {"input_text": f"b {i}", "model": "beta"}))[0] == 200
    assert (await post(client, "/v1/embeddings", {"model": "org/beta-model", "input": ["c", "d"]}))[0] == 200
    for name in ("gamma", "x" * 200, 'evil"} 1\nbatcher_requests_total{model="pwned'):
        assert (await post(client, "/embed", {"input_text": "x", "model": name}))[0] == 404
        assert (await post(client, "/v1/embeddings", {"model": name, "input": "x"}))[0] == 404

    def value(family: str, **labels: str) -> float | None:
        return service.metrics.registry.get_sample_value(family, {"priority": "interactive", **labels})

    assert value("batcher_requests_total", model="alpha", status="success") == 3
    assert value("batcher_requests_total", model="beta", status="success") == 4
    assert value("batcher_requests_total", model="alpha", status="error") == 0
    assert value("batcher_request_latency_seconds_count", model="beta") == 4
    assert (
        service.metrics.registry.get_sample_value("trio_infer_model_info", {"model": "beta", "device": "cpu"})
        == 1
    )
    assert model_labels(service) == {"alpha", "beta"}

    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert 'batcher_requests_total{model="alpha",priority="interactive",status="success"} 3.0' in text
    assert 'batcher_requests_total{model="beta",priority="interactive",status="success"} 4.0' in text
    assert "gamma" not in text and "pwned" not in text


# ------------------------------------------------------------------------ one device, taken in turns


async def test_passes_of_the_two_models_never_overlap(
    service: EmbeddingService, alpha: FakeEmbedder, beta: BetaEmbedder, autojump_clock: trio.abc.Clock
) -> None:
    answered: list[str] = []

    async def client(model: ServedModel, index: int) -> None:
        for round_ in range(6):
            await trio.sleep(0.007 * ((index + round_) % 4))
            text = f"{model.name} {index} {round_} " + "word " * (index % 5)
            jobs = await service.embed([text], model=model)
            assert jobs[0].vector is not None
            answered.append(text)

    async with trio.open_nursery() as nursery:
        for model in service.models:
            for index in range(12):
                nursery.start_soon(client, model, index)

    assert len(answered) == 2 * 12 * 6
    passes = sorted(
        [(start, end, "alpha") for start, end in alpha.pass_times]
        + [(start, end, "beta") for start, end in beta.pass_times]
    )
    assert {owner for *_, owner in passes} == {"alpha", "beta"}
    for (_, end, _), (start, _, _) in itertools.pairwise(passes):
        assert start >= end
    # The models took turns: the device passed from one to the other many times.
    switches = sum(a[2] != b[2] for a, b in itertools.pairwise(passes))
    assert switches >= 4


async def test_a_saturated_model_does_not_starve_a_quiet_one(
    alpha: FakeEmbedder, beta: BetaEmbedder, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """alpha: many closed-loop clients keep its queue full for the whole run. beta: one client with
    think time. Each beta request waits at most for the alpha passes holding texts older than it
    (one running, one planned), then its own pass; and its wait does not grow over the run.

    With two models the device is handed over at the end of each pass to the one waiting (a
    scheduler that let the model whose pass just ended take the device again, as a plain flag and
    wake-up would, starves beta: its requests time out); the oldest-first order among several
    waiters is tested in test_scheduler.py."""
    max_batch_size = 16
    settings = replace(SETTINGS, request_timeout=30.0)
    service = make_two_models(alpha, beta, settings, max_batch_size=max_batch_size)
    for model in service.models:
        await nursery.start(model.batcher.run)
    alpha_model, beta_model = service.models
    alpha_text = "a saturating text of six words"  # 8 tokens
    beta_text = "quiet"  # 3 tokens
    alpha_pass = FAKE_COST.batch_cost(max_batch_size, len(alpha_text.split()) + 2)
    beta_pass = FAKE_COST.batch_cost(1, len(beta_text.split()) + 2)

    done = trio.Event()
    alpha_sent = 0
    alpha_answered = 0
    beta_waits: list[float] = []

    async def alpha_client(index: int) -> None:
        nonlocal alpha_sent, alpha_answered
        while not done.is_set():
            alpha_sent += 1
            jobs = await service.embed([f"{alpha_text} {index}"], model=alpha_model)
            assert jobs[0].vector is not None and len(jobs[0].vector) == 8
            alpha_answered += 1

    async def beta_client() -> None:
        await trio.sleep(1.0)  # alpha is saturated by then
        for i in range(60):
            start = trio.current_time()
            jobs = await service.embed([f"{beta_text} {i}"], model=beta_model)
            beta_waits.append(trio.current_time() - start)
            assert jobs[0].vector is not None and len(jobs[0].vector) == 4
            await trio.sleep(0.137 + 0.011 * (i % 7))  # think time, off the passes' rhythm
        done.set()

    async with trio.open_nursery() as load:
        for index in range(3 * max_batch_size):
            load.start_soon(alpha_client, index)
        load.start_soon(beta_client)

    for model in service.models:
        model.batcher.close()
    # alpha was saturated: its passes ran full while beta was served.
    assert max(len(batch) for batch in alpha.batches) == max_batch_size
    assert len(alpha.batches) > 60
    # Every request of both models was answered.
    assert len(beta_waits) == 60
    assert alpha_answered == alpha_sent
    # Bounded: the alpha pass running when beta's text arrives, one more holding texts older than it
    # (prepared before it arrived), then beta's own pass.
    bound = 2 * alpha_pass + beta_pass
    assert max(beta_waits) <= bound + 1e-6, (max(beta_waits), bound)
    # And not growing: the last third waits no longer, on average, than the first (within a pass).
    third = len(beta_waits) // 3
    first, last = beta_waits[:third], beta_waits[-third:]
    assert statistics.mean(last) <= statistics.mean(first) + alpha_pass, (first, last)
