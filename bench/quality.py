"""python -m bench.quality: what each backend (and int8) costs in quality against torch fp32.

Mean and min cosine to torch's vectors on the bench corpus, and the overlap of the top 10 corpus texts
for a set of queries (the same seeded generator, other seed, short texts), as a markdown table.
"""

from __future__ import annotations

import sys

import numpy as np

from bench import corpus
from bench.inprocess import BackendEncoder

VARIANTS = (("torch", "none"), ("openvino", "none"), ("onnx", "none"), ("onnx", "int8"), ("openvino", "int8"))
TOP = 10


def queries(count: int = 50) -> list[str]:
    return [t for t in corpus.make_corpus(size=400, seed=7) if len(t.split()) <= 12][:count]


def _vectors(encoder: BackendEncoder, texts: list[str]) -> np.ndarray:
    order = sorted(range(len(texts)), key=lambda i: len(encoder.tokenizer(texts[i])["input_ids"]))
    out = np.zeros((len(texts), encoder.model.dimension), dtype=np.float64)
    for first in range(0, len(order), 32):
        chunk = order[first : first + 32]
        out[chunk] = np.stack(encoder.encode([texts[i] for i in chunk]))
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def main(argv: list[str]) -> int:
    """`argv`: optional `backend:quantize` names to measure (default: all); torch is always the reference."""
    wanted = {tuple(a.split(":", 1)) for a in argv}
    variants = [v for v in VARIANTS if v == ("torch", "none") or not wanted or v in wanted]
    texts, asks = corpus.make_corpus(), queries()
    rows = []
    reference: tuple[np.ndarray, np.ndarray] | None = None
    for backend, quantize in variants:
        encoder = BackendEncoder(backend, quantize)
        docs, qs = _vectors(encoder, texts), _vectors(encoder, asks)
        if reference is None:
            reference = (docs, qs)
        ref_docs, ref_qs = reference
        similar = (docs * ref_docs).sum(1)
        top = np.argsort(-(qs @ docs.T), axis=1)[:, :TOP]
        ref_top = np.argsort(-(ref_qs @ ref_docs.T), axis=1)[:, :TOP]
        overlap = np.mean([len(set(a) & set(b)) / TOP for a, b in zip(top, ref_top, strict=True)])
        rows.append(
            f"| {backend} {quantize} | {encoder.precision} | {similar.mean():.5f} | {similar.min():.5f} "
            f"| {overlap:.3f} |"
        )
        print(rows[-1], flush=True)
        del encoder
    print(f"\n{len(texts)} corpus texts, {len(asks)} queries, top {TOP}\n")
    print("| backend quantize | precision | mean cosine to torch fp32 | min cosine | top-10 overlap |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
