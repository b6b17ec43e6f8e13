"""The quick start's sample vector is what the bundled model really returns for its sample text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from trio_infer.core.vectors import finish

README = Path(__file__).resolve().parents[1] / "README.md"


def _sample() -> tuple[str, list[float], list[float]]:
    text = README.read_text()
    request = re.search(r"""-d '(\{"input_text": [^']+\})'""", text)
    answer = re.search(r'# \{"embedding":\[([-0-9.,]+),\.\.\.,([-0-9.,]+)\]', text)
    assert request and answer, "README's quick start has no curl sample with an embedding"
    head = [float(x) for x in answer.group(1).split(",")]
    tail = [float(x) for x in answer.group(2).split(",")]
    return json.loads(request.group(1))["input_text"], head, tail


@pytest.mark.slow
def test_the_readme_sample_vector_is_the_bundled_models() -> None:
    from trio_infer.config import Settings
    from trio_infer.models.sentence_transformer import SentenceTransformerModel

    text, head, tail = _sample()
    model = SentenceTransformerModel(Settings(backend="torch", device="cpu"))
    (raw,) = model.embed([text], model.tokenize([text]))
    vector = finish(raw, normalize=model.normalizes)  # as the batcher delivers it
    assert vector.shape == (384,)
    np.testing.assert_allclose(vector[: len(head)], head, atol=6e-5)
    np.testing.assert_allclose(vector[-len(tail) :], tail, atol=6e-5)
