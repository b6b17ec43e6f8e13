"""Texts that ship with the package: the probe set `auto` compares backends on, and int8 calibration data.

Deterministic (a seeded generator over a fixed vocabulary), so every machine probes and calibrates on
the same texts, and no data set is downloaded. Lengths run from a few words (queries) to a paragraph
(chunks), as the service sees them.
"""

from __future__ import annotations

import random

_WORDS = """
the of and to in is for that on with as was by at from it be this are or an have not which but they
his all their one has were more we can will been when there would who some out other into time only
new also about after could then them these first two any may like over such our what how where
because between through during before under while system data model search query result document
service user request response network server cache memory process thread engine vector embedding
token batch latency index database storage cluster node language question answer information product
price order customer account payment delivery support team project report market company business
research study health care patient doctor school student teacher learning course city travel hotel
flight weather energy water food recipe music film book story history science space planet ocean
forest mountain river garden house family child friend people world country government policy law
court election economy simple quick small large fast slow good better best great important different
available possible common recent public local global open free secure reliable efficient modern
useful find make use get show help need want know think work run build create update delete compare
explain describe improve reduce increase measure test deploy configure install monitor scale why
cheap near today tomorrow review guide tutorial example error fix café naïve résumé 東京 données
"""
_VOCABULARY = _WORDS.split()


def probe_texts(count: int = 64, seed: int = 1729) -> list[str]:
    """`count` texts of 3 to 180 words; the same arguments always give the same texts."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        words = rng.randint(3, 12) if i % 2 == 0 else rng.randint(13, 180)
        text = " ".join(rng.choice(_VOCABULARY) for _ in range(words))
        texts.append(text[0].upper() + text[1:] + ("." if i % 3 else "?"))
    return texts
