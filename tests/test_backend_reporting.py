"""/health and the metrics name the backend and precision the model runs with."""

from __future__ import annotations

from tests.fakes import FakeEmbedder, make_service
from trio_infer.models.debug import DebugEmbedder


class OpenVinoLikeEmbedder(FakeEmbedder):
    backend = "openvino"
    precision = "bfloat16"


def test_health_and_metrics_report_backend_and_precision() -> None:
    service = make_service(OpenVinoLikeEmbedder())
    health = service.health()
    assert (health["backend"], health["precision"]) == ("openvino", "bfloat16")
    registry = service.metrics.registry
    labels = {"model": "fake-model", "backend": "openvino", "precision": "bfloat16"}
    assert registry.get_sample_value("trio_infer_backend_info", labels) == 1.0
    assert (
        registry.get_sample_value(
            "trio_infer_backend_info", {"model": "fake-model", "backend": "torch", "precision": "float32"}
        )
        is None
    )


def test_debug_model_reports_itself() -> None:
    embedder = DebugEmbedder()
    assert (embedder.backend, embedder.precision) == ("debug", "none")
