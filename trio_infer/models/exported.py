"""A model served from an exported transformer (OpenVINO or ONNX Runtime) with sentence-transformers'
own pooling and normalisation.

Blocking; not thread-safe (one inference request object, one tokenizer): call from one thread at a time.
Tokenization, truncation at the model's max sequence length and padding are the torch model's
(`SentenceTransformerModel`); the exported graph turns token ids into token embeddings; the modules
that follow the transformer in the model's sentence-transformers config (`modules.json`: Pooling with
its `1_Pooling/config.json`, Normalize, Dense, ...) run on those, exactly as `encode` runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.jobs import Vector
from .exporters import ONNX_FILE, OPENVINO_FILE, feeds
from .sentence_transformer import SentenceTransformerModel
from .tokens import Token

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def openvino_runner(directory: Path) -> tuple[Runner, str]:
    """Compile `model.xml` for the CPU; returns the runner and the inference precision it chose.

    OpenVINO picks the precision from the CPU: bf16 where it has AVX-512 BF16 or AMX, f32 elsewhere.
    """
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(directory / OPENVINO_FILE)), "CPU", {"PERFORMANCE_HINT": "LATENCY"}
    )
    request = compiled.create_infer_request()
    output = compiled.output(0)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    precision = hint.to_string() if hasattr(hint, "to_string") else str(hint).lower()

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        result: np.ndarray = request.infer(inputs)[output]
        return result

    return run, precision


def onnx_runner(directory: Path) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # its warnings about unused initializers are noise to operators
    session = ort.InferenceSession(str(directory / ONNX_FILE), options, providers=["CPUExecutionProvider"])

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        result: np.ndarray = session.run(None, inputs)[0]
        return result

    return run


class ExportedModel:
    """The blocking `Model` protocol over an exported transformer; see the module docstring."""

    device = "cpu"

    def __init__(self, base: SentenceTransformerModel, run: Runner, *, backend: str, precision: str) -> None:
        import torch

        self._torch = torch
        self._base = base
        self._run = run
        self._heads = base.stages[1:]  # after the transformer; the final Normalize is the caller's
        self.normalizes = base.normalizes
        self.pooling = base.pooling
        self.backend = backend
        self.precision = precision
        self.name = base.name
        self.dimension = base.dimension
        self.max_tokens = base.max_tokens
        self.prompts = base.prompts
        self.pools_prompt = base.pools_prompt

    @property
    def base(self) -> SentenceTransformerModel:
        """The torch model this one was exported from (its tokenizer, files and prompts)."""
        return self._base

    def tokenize(self, texts: Sequence[str], tails: Sequence[bool] = ()) -> list[list[int]]:
        return self._base.tokenize(texts, tails)

    def tokenize_detailed(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[Token]]:
        return self._base.tokenize_detailed(texts, add_special_tokens)

    def decode(self, ids: Sequence[Sequence[int]], skip_special_tokens: bool) -> list[str]:
        return self._base.decode(ids, skip_special_tokens)

    def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        torch = self._torch
        inputs = feeds(self._base, [list(ids) for ids in token_ids])
        tokens = self._run(inputs)
        features: dict[str, Any] = {
            "token_embeddings": torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32)),
            "attention_mask": torch.from_numpy(inputs["attention_mask"]),
        }
        with torch.inference_mode():
            for head in self._heads:
                features = head(features)
        vectors = features["sentence_embedding"].float().numpy()
        return list(vectors)
