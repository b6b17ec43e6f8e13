"""Tokenizing a text of any length at a cost bounded by the model's limit, not by the text.

A model reads at most `max_tokens` tokens, so tokenizing a 900 kB text whole would be wasted work (and
seconds of a held thread). `tokenize_heads` tokenizes only a head of each text: `CHARS_PER_TOKEN`
characters per token the model can read, cut back to a whitespace so no word is split. When that head
does not yield more tokens than the limit (a text padded with whitespace, say), the head doubles and is
tokenized again, up to `MAX_HEAD_FACTOR` times the first head: the truncated ids are those of the whole
text unless the text packs fewer than `limit` tokens into its first `limit * CHARS_PER_TOKEN *
MAX_HEAD_FACTOR` characters (whitespace runs, a single huge "word"); characters past that are never
read. The cost stays proportional to what the model reads, whatever the text's length.

A text may keep its last tokens instead (TEI's `truncation_direction: Left`): the same, mirrored, with a
tail that starts after a whitespace and grows towards the text's start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..core.embedder import TokenIds

# English runs about 4-5 characters per WordPiece/BPE token; 16 leaves room for long words, URLs and
# numbers, and a head that falls short is extended anyway.
CHARS_PER_TOKEN = 16
# The head grows at most to this multiple of its first size (for all-MiniLM-L6-v2: 32768 characters).
MAX_HEAD_FACTOR = 8
# How far back from the cut to look for whitespace; a longer run without any is cut where it stands
# (WordPiece reads a word over 100 characters as one unknown token anyway).
_WORD_REACH = 128


def head(text: str, chars: int) -> tuple[str, bool]:
    """The first `chars` characters of `text`, ending before a whitespace where one is near the cut,
    and whether anything was cut off."""
    if len(text) <= chars:
        return text, False
    for end in range(chars, max(0, chars - _WORD_REACH), -1):
        if text[end].isspace():
            return text[:end], True
    return text[:chars], True


def tail(text: str, chars: int) -> tuple[str, bool]:
    """The last `chars` characters of `text`, starting after a whitespace where one is near the cut,
    and whether anything was cut off."""
    if len(text) <= chars:
        return text, False
    start = len(text) - chars
    for begin in range(start, min(len(text), start + _WORD_REACH)):
        if text[begin - 1].isspace():
            return text[begin:], True
    return text[start:], True


def tokenize_heads(
    texts: Sequence[str],
    content_ids: Callable[[list[str]], list[list[int]]],
    limit: int,
    tails: Sequence[bool] = (),
) -> list[tuple[list[int], int, bool]]:
    """For each text: its first `limit` content token ids (its last, where `tails[i]` is True), its
    content token count, and whether that count is exact (False: the text was cut, and the count is of
    the piece read only).

    `content_ids` tokenizes a list of texts without special tokens and without truncation.
    """
    chars = max(1, limit) * CHARS_PER_TOKEN
    most = chars * MAX_HEAD_FACTOR
    from_end = [bool(tails[i]) if i < len(tails) else False for i in range(len(texts))]
    pieces = [(tail if end else head)(text, chars) for text, end in zip(texts, from_end, strict=True)]
    encoded = content_ids([text for text, _ in pieces])
    results = []
    for text, end, (piece, cut), ids in zip(texts, from_end, pieces, encoded, strict=True):
        cutter = tail if end else head
        span = chars
        while cut and len(ids) <= limit and span < most:  # fewer tokens than the model reads: read on
            span *= 2
            piece, cut = cutter(text, span)
            ids = content_ids([piece])[0]
        kept = ids[len(ids) - limit :] if end and len(ids) > limit else ids[:limit]
        results.append((kept, len(ids), not cut))
    return results


def token_ids(
    content: list[int], total: int, exact: bool, wrap: Callable[[list[int]], list[int]]
) -> TokenIds:
    """`content` wrapped in the model's special tokens by `wrap`, counted as `total` content tokens."""
    ids = wrap(content)
    return TokenIds(ids, total + len(ids) - len(content), exact=exact)
