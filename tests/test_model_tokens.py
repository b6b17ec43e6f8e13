"""The bundled model's side of TEI's API: its tokenizer routes' tokens and offsets, its pooling, and
its vectors before the Normalize module that the batcher applies per request."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trio_infer.config import Settings
from trio_infer.core.vectors import finish

pytestmark = pytest.mark.slow

TEXTS = ["Café au lait, naïve façade.", "Trio [SEP] is   spaced\tout", "日本語のテキスト"]


@pytest.fixture(scope="module")
def model() -> Any:
    from trio_infer.models.sentence_transformer import SentenceTransformerModel

    return SentenceTransformerModel(Settings(backend="torch", device="cpu"))


@pytest.mark.parametrize("special", [True, False])
def test_tokens_are_the_tokenizers_own_with_byte_offsets(model: Any, special: bool) -> None:
    tokenizer = model.st_model.tokenizer
    for text, tokens in zip(TEXTS, model.tokenize_detailed(TEXTS, special), strict=True):
        assert [t.id for t in tokens] == tokenizer(text, add_special_tokens=special)["input_ids"]
        data = text.encode()
        for token in tokens:
            if token.special:
                assert token.start is None and token.stop is None
                assert token.text in tokenizer.all_special_tokens
            else:
                assert token.start is not None and token.stop is not None
                assert data[token.start : token.stop].decode() == token.text
        assert sum(t.special for t in tokens) == (2 if special else 0)


def test_tokens_are_not_truncated(model: Any) -> None:
    (tokens,) = model.tokenize_detailed(["word " * 400], True)
    assert len(tokens) == 402 > model.max_tokens


def test_decode_is_the_tokenizers(model: Any) -> None:
    ids = [model.st_model.tokenizer(text)["input_ids"] for text in TEXTS]
    for skip in (True, False):
        assert model.decode(ids, skip) == [
            model.st_model.tokenizer.decode(row, skip_special_tokens=skip) for row in ids
        ]
    assert model.decode([[10**8]], True) == [""]  # an id the vocabulary lacks decodes to nothing


def test_vectors_are_before_the_normalize_module_which_the_batcher_applies(model: Any) -> None:
    from sentence_transformers import SentenceTransformer

    assert model.normalizes and model.pooling == "mean"
    raw = np.stack(model.embed(TEXTS, model.tokenize(TEXTS)))
    pooled = SentenceTransformer(modules=list(model.st_model)[:-1], device="cpu").encode(TEXTS)
    np.testing.assert_allclose(raw, pooled, atol=2e-5)
    delivered = np.stack([finish(vector, normalize=True) for vector in raw])
    np.testing.assert_allclose(delivered, model.st_model.encode(TEXTS), atol=2e-5)
