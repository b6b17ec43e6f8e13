"""Every backend's vectors against torch's, on the bundled model, through the real export cache.

Exports are slow (seconds to a minute each on a loaded 2-core machine), so one cache directory and one
loaded torch model serve the whole module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from trio_infer.config import Settings, load_settings
from trio_infer.core.vectors import finish
from trio_infer.models.auto_backend import cosines
from trio_infer.models.backends import BackendBuilder
from trio_infer.models.calibration import calibrate
from trio_infer.models.embedder import Model
from trio_infer.models.probe_texts import probe_texts
from trio_infer.models.sentence_transformer import SentenceTransformerModel

pytestmark = pytest.mark.slow

TEXTS = [*probe_texts(24, seed=7), "naïve café 東京 🙂", "word " * 400]  # the last one is truncated


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export-cache")


@pytest.fixture(scope="module")
def base() -> SentenceTransformerModel:
    return SentenceTransformerModel(Settings(device="cpu"))


@pytest.fixture(scope="module")
def builder(base: SentenceTransformerModel, cache_dir: Path) -> BackendBuilder:
    return BackendBuilder(base, cache_dir)


@pytest.fixture(scope="module")
def reference(base: SentenceTransformerModel) -> np.ndarray:
    """What sentence-transformers' own `encode` gives, one text at a time (no padding)."""
    return np.stack([base.st_model.encode(text) for text in TEXTS])


def _vectors(model: Model, texts: list[str]) -> np.ndarray:
    ids = model.tokenize(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.dimension), dtype=np.float32)
    for first in range(0, len(order), 8):  # padded batches, as the batcher forms them
        chunk = order[first : first + 8]
        vectors = model.embed([texts[i] for i in chunk], [ids[i] for i in chunk])
        out[chunk] = np.stack([finish(vector, normalize=model.normalizes) for vector in vectors])
    return out


@pytest.fixture(
    scope="module", params=[("openvino", "none"), ("onnx", "none"), ("onnx", "int8"), ("openvino", "int8")]
)
def exported(request: pytest.FixtureRequest, builder: BackendBuilder) -> Iterator[Model]:
    backend, quantize = request.param
    yield builder.build(backend, quantize)


def test_torch_backend_matches_sentence_transformers(
    base: SentenceTransformerModel, reference: np.ndarray
) -> None:
    similar = cosines(list(_vectors(base, TEXTS)), list(reference))
    assert similar.min() > 0.9999
    assert (base.backend, base.precision) == ("torch", "float32")


def test_exported_backends_match_torch(exported: Model, reference: np.ndarray) -> None:
    vectors = _vectors(exported, TEXTS)
    similar = cosines(list(vectors), list(reference))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)  # Normalize, as the model's
    if exported.precision.startswith("int8"):
        assert similar.mean() >= 0.98, similar
    else:
        assert similar.min() >= 0.9999, similar
    assert exported.dimension == 384 and exported.device == "cpu"


def test_exported_backends_truncate_at_the_models_limit(exported: Model) -> None:
    ids = exported.tokenize(["word " * 400])[0]
    assert len(ids) == exported.max_tokens == 256


def test_calibration_works_over_an_exported_backend(builder: BackendBuilder) -> None:
    cost = calibrate(builder.build("onnx", "none"), repeats=1)
    assert cost.fixed > 0 and cost.per_token > 0


def test_second_load_reuses_the_export(
    builder: BackendBuilder, base: SentenceTransformerModel, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    builder.build("onnx", "none")
    with caplog.at_level(logging.INFO, logger="trio_infer.models.export_cache"):
        fresh = BackendBuilder(base, cache_dir)  # a restart: a new builder over the same directory
        fresh.build("onnx", "none")
    messages = [r.getMessage() for r in caplog.records]
    assert any("reusing the cached export" in m for m in messages)
    assert not any("exporting into" in m for m in messages)


def test_a_corrupted_export_is_rebuilt_with_a_warning(
    builder: BackendBuilder, cache_dir: Path, reference: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    model = builder.build("onnx", "int8")
    [entry] = [
        p
        for p in cache_dir.iterdir()
        if p.name.endswith(tuple("0123456789abcdef")) and "-onnx-int8-" in p.name
    ]
    weights = entry / "model.onnx"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        model = builder.build("onnx", "int8")
    assert any("corrupt" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert cosines(list(_vectors(model, TEXTS)), list(reference)).mean() >= 0.98


def test_auto_picks_a_backend_that_matches_torch_and_remembers(
    base: SentenceTransformerModel, builder: BackendBuilder, cache_dir: Path, reference: np.ndarray
) -> None:
    from trio_infer.models.auto_backend import choose

    chosen = choose(base, builder, "none")
    assert chosen.backend in ("torch", "openvino", "onnx")
    assert cosines(list(_vectors(chosen, TEXTS)), list(reference)).min() >= 0.9999
    [decision] = cache_dir.glob("auto-*.json")
    stamp = decision.stat().st_mtime_ns
    again = choose(base, BackendBuilder(base, cache_dir), "none")
    assert again.backend == chosen.backend
    assert decision.stat().st_mtime_ns == stamp  # decided once, not measured again


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backend", "tensorrt"], "--backend: must be one of auto, torch, openvino, onnx"),
        (["--quantize", "int4"], "--quantize: must be one of none, int8"),
        (["--dtype", "float64"], "--dtype: must be one of auto, float32, float16, bfloat16"),
        (
            ["--backend", "torch", "--quantize", "int8"],
            "--quantize int8: needs --backend openvino, onnx or auto",
        ),
        (["--backend", "onnx", "--dtype", "float16"], "--dtype float16: needs --backend torch"),
        (["--cache-dir", " "], "--cache-dir: must be a directory path"),
    ],
)
def test_invalid_backend_flags_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        load_settings(argv, env={})
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_backend_flags_and_their_environment_variables() -> None:
    settings = load_settings([], env={})
    assert (settings.backend, settings.quantize, settings.dtype) == ("auto", "none", "auto")
    assert settings.cache_dir == "~/.cache/trio-infer"
    env = {"BACKEND": "ONNX", "QUANTIZE": "int8", "TRIO_INFER_CACHE_DIR": "/tmp/c"}
    settings = load_settings([], env=env)
    assert (settings.backend, settings.quantize, settings.cache_dir) == ("onnx", "int8", "/tmp/c")
    assert load_settings(["--backend", "openvino"], env=env).backend == "openvino"
    torch_half = load_settings(["--backend", "torch", "--dtype", "bfloat16"], env={})
    assert torch_half.dtype == "bfloat16"


def test_export_command_prebuilds_and_then_reuses_the_cache(builder: BackendBuilder, cache_dir: Path) -> None:
    import os
    import subprocess
    import sys

    builder.build("onnx", "none")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MODEL_NAME": "", "DEVICE": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "trio_infer", "export", "--backend", "onnx", "--cache-dir", str(cache_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "for onnx: reusing the cached export" in output and "for onnx: exporting into" not in output
    assert "export cache ready" in output and "onnx backend in float32" in output
    # It also stores the calibration vectors int8/uint8 ranges come from, as a start would.
    assert "calibration vectors: exporting into" in output
