"""python -m bench.compact: what each compact vector format keeps, with the bundled model.

Data: the bench corpus (`bench.corpus.make_corpus(2000)`, deterministic): its first 200 texts are the
queries, the other 1,800 the documents. Every text is embedded by the bundled all-MiniLM-L6-v2
(sentence-transformers, float32, unit length); int8/uint8 ranges come from the same model's vectors
of the calibration texts that ship with trio-infer (`trio_infer.models.range_texts`), as the server
computes them; the vectors are quantized by the server's own `trio_infer.models.quantization`.

For each format, the documents and the queries are quantized alike and each query's 10 nearest
documents are found by the format's own score: the dot product of the int8 values, as an int8 index
computes it (uint8 is int8 + 128: centred first, so it ranks identically); "int8 decoded": the dot
product after mapping each bucket back to its midpoint in the ranges (a client holding the ranges);
the Hamming distance of the bits (binary and ubinary hold the same bits). "top-10 overlap" is the share of the float32 top 10 (by cosine) found in the
format's top 10, averaged over the queries. "rescored" takes the format's top 40 and re-ranks them by
the float32 cosine (the float vectors kept beside the index), then takes 10.

Prints a Markdown table (the one in README's "Compact vectors") and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import numpy.typing as npt

from bench.corpus import make_corpus
from trio_infer.models import quantization
from trio_infer.models.range_texts import range_texts

TOP = 10
RESCORE = 40


def _top(scores: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.intp]:
    """Each row's k best columns, best first (ties broken by column, for determinism)."""
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)
    return order[:, :k]


def _scores(
    precision: str,
    queries: npt.NDArray[np.float32],
    docs: npt.NDArray[np.float32],
    ranges: npt.NDArray[np.float32],
) -> npt.NDArray[np.float64]:
    if precision == "float32":
        return (queries @ docs.T).astype(np.float64)
    if precision == "int8 decoded":
        return _scores("float32", _decode(queries, ranges), _decode(docs, ranges), ranges)
    q = quantization.quantize(queries, precision, ranges)  # type: ignore[arg-type]
    d = quantization.quantize(docs, precision, ranges)  # type: ignore[arg-type]
    if precision in ("int8", "uint8"):
        offset = 128 if precision == "uint8" else 0
        return ((q.astype(np.int64) - offset) @ (d.astype(np.int64) - offset).T).astype(np.float64)
    bits_q = np.unpackbits(q.view(np.uint8), axis=1)
    bits_d = np.unpackbits(d.view(np.uint8), axis=1)
    hamming = bits_q.astype(np.int64) @ (1 - bits_d).T + (1 - bits_q).astype(np.int64) @ bits_d.T
    return -hamming.astype(np.float64)


def _decode(vectors: npt.NDArray[np.float32], ranges: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """int8 buckets mapped back to their midpoints in the ranges (what a client holding the ranges can do)."""
    buckets = quantization.quantize(vectors, "uint8", ranges).astype(np.float32)
    steps = (ranges[1] - ranges[0]) / 255
    return (ranges[0] + steps * (buckets + 0.5)).astype(np.float32)


def _overlap(found: npt.NDArray[np.intp], truth: npt.NDArray[np.intp]) -> float:
    return float(np.mean([len(set(a) & set(b)) / TOP for a, b in zip(found, truth, strict=True)]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compact", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2000, help="corpus texts (default 2000)")
    parser.add_argument("--queries", type=int, default=200, help="the first N are queries (default 200)")
    args = parser.parse_args(argv)

    from sentence_transformers import SentenceTransformer

    from trio_infer.models.sentence_transformer import bundled_model_path

    model = SentenceTransformer(str(bundled_model_path()), device="cpu")
    texts = make_corpus(args.size)
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, convert_to_numpy=True).astype(np.float32)
    calibration = model.encode(range_texts(), batch_size=32, convert_to_numpy=True).astype(np.float32)
    seconds = time.perf_counter() - start
    queries, docs = vectors[: args.queries], vectors[args.queries :]
    ranges = quantization.ranges(calibration)
    truth = _top(_scores("float32", queries, docs, ranges), TOP)
    float_scores = _scores("float32", queries, docs, ranges)
    dimension = vectors.shape[1]
    sizes = {"float32": 4 * dimension, "int8": dimension, "int8 decoded": dimension, "uint8": dimension}
    sizes["binary"] = sizes["ubinary"] = (dimension + 7) // 8

    print(f"{len(queries)} queries, {len(docs)} documents, {dimension} dimensions ({seconds:.0f} s to embed)")
    print(f"| format | bytes per vector | top-{TOP} overlap | rescored from top {RESCORE} |")
    print("| --- | ---: | ---: | ---: |")
    for precision in ("float32", "int8", "uint8", "int8 decoded", "binary", "ubinary"):
        scores = _scores(precision, queries, docs, ranges)
        plain = _overlap(_top(scores, TOP), truth)
        candidates = _top(scores, RESCORE)
        rescored_scores = np.take_along_axis(float_scores, candidates, axis=1)
        rescored = np.take_along_axis(candidates, _top(rescored_scores, TOP), axis=1)
        print(f"| {precision} | {sizes[precision]} | {plain:.3f} | {_overlap(rescored, truth):.3f} |")
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), ""
            )
    except OSError:
        cpu = ""
    print(f"CPU: {cpu or 'unknown'}")


if __name__ == "__main__":
    main()
