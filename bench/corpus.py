"""Deterministic mixed-length English-like corpus (no downloads).

Lengths are skewed toward short texts, like search queries and RAG chunks: most texts are a few words,
some are a sentence or two, and a tail is a paragraph of up to ~200 words. Every text is at most
``MAX_CHARS`` characters because the API rejects longer inputs.
"""

from __future__ import annotations

import random

MAX_CHARS = 1024
DEFAULT_SIZE = 400
DEFAULT_SEED = 20240611

_WORD_TEXT = """
the of and to in is for that on with as was by at from it be this are or an have not which
but they his all their one has were more we can will been when there would who some out other
into time only new also about after could then them these first two any may like over such
our what how where because between through during before under while system data model search
query result document service user request response network server cache memory process thread
engine vector embedding token batch latency throughput index database storage cluster node
language question answer information product price order customer account payment delivery
support team project report market company business research study health care patient doctor
school student teacher learning course city travel hotel flight weather energy water food
recipe music film book story history science space planet ocean forest mountain river garden
house family child friend people world country government policy law court election economy
simple quick small large fast slow good better best great important different available
possible common recent public local global open free secure reliable efficient modern useful
find make use get show help need want know think work run build create update delete compare
explain describe improve reduce increase measure test deploy configure install monitor scale
how why what which best cheap near today tomorrow review guide tutorial example error fix
"""
_WORDS = _WORD_TEXT.split()

_CONNECTORS = ["however", "therefore", "meanwhile", "in addition", "for example", "as a result"]


def _sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    if n_words > 8 and rng.random() < 0.3:
        words.insert(rng.randrange(1, n_words - 1), rng.choice(_CONNECTORS) + ",")
    if n_words > 6 and rng.random() < 0.4:
        words.insert(rng.randrange(1, n_words), str(rng.randint(2, 2025)))
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice([".", ".", ".", "?", "!"])


def _text(rng: random.Random, n_words: int) -> str:
    if n_words <= 12 and rng.random() < 0.7:
        # Search-style query: lower case, no punctuation.
        return " ".join(rng.choice(_WORDS) for _ in range(n_words))
    parts: list[str] = []
    left = n_words
    while left > 0:
        k = min(left, rng.randint(6, 22))
        parts.append(_sentence(rng, k))
        left -= k
    text = " ".join(parts)
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rsplit(" ", 1)[0]
    return text


def _n_words(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.55:
        return rng.randint(3, 12)  # queries
    if r < 0.85:
        return rng.randint(13, 60)  # sentences / short chunks
    return rng.randint(61, 200)  # paragraphs (capped at MAX_CHARS)


def make_corpus(size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> list[str]:
    """Return ``size`` texts; the same seed always gives the same list."""
    rng = random.Random(seed)
    return [_text(rng, _n_words(rng)) for _ in range(size)]


def describe(texts: list[str]) -> str:
    lengths = sorted(len(t.split()) for t in texts)
    chars = sorted(len(t) for t in texts)
    n = len(lengths)
    return (
        f"{n} texts, words min/median/max {lengths[0]}/{lengths[n // 2]}/{lengths[-1]}, "
        f"chars median/max {chars[n // 2]}/{chars[-1]}"
    )
