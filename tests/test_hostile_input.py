"""Hostile and odd input against a real server over real sockets: every answer is a 2xx or a 4xx JSON
error, never a 500 and never a stack trace; oversized bodies are refused without being read.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import trio

from tests.serverproc import (
    Response,
    ServerProcess,
    build_request,
    get,
    read_response,
    request,
    wait_until,
)
from trio_infer.http.schemas import NOT_BLANK_PATTERN

pytestmark = pytest.mark.e2e

MAX_BODY = 1024 * 1024
DIMENSION = 384
# A bound on one exchange: far above what a loaded 2-core machine needs, far below "waits forever"
# (a server that waited for an unsent body would wait out its 75 s keep-alive timeout, or for ever).
LIMIT = 30.0


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess() as server:
        yield server
        log = server.log()
    # Nothing a client sent made the server log a stack trace.
    assert "Traceback" not in log, log[max(0, log.find("Traceback") - 300) :][:6000]
    assert "unhandled error" not in log, log[-5000:]


def assert_sane(response: Response, *, openai: bool = False) -> Any:
    """A 2xx with an embedding, or a 4xx JSON error in the route's error shape; returns the body."""
    assert response.status < 500, (response.status, response.body[:500])
    assert b"Traceback" not in response.body and b'File "' not in response.body, response.body[:500]
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    if response.status >= 400:
        if openai:
            assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
        else:
            assert set(body) == {"error", "detail"} and isinstance(body["detail"], str), body
    elif openai:
        assert all(len(item["embedding"]) == DIMENSION for item in body["data"]), body
    else:
        assert len(body["embedding"]) == DIMENSION, body
    return body


async def post_raw(
    server: ServerProcess,
    body: bytes,
    *,
    path: str = "/embed",
    content_type: str | None = "application/json",
    headers: dict[str, str] | None = None,
) -> Response:
    return await request(
        server.port, build_request("POST", path, body, headers, content_type=content_type), limit=LIMIT
    )


def embed_body(text: str) -> bytes:
    return orjson.dumps({"input_text": text})


# -- size ------------------------------------------------------------------------------------------


async def test_declared_oversized_body_is_refused_without_reading_it(server: ServerProcess) -> None:
    """Content-Length of 2 MiB, a few bytes sent: the 413 comes at once, not after a 2 MiB upload."""
    head = build_request("POST", "/embed", b"", {"Content-Length": str(2 * MAX_BODY)})
    with trio.fail_after(LIMIT):  # the server must not wait for the rest of the body
        response = await request(server.port, head + b'{"input_text": "', limit=LIMIT)
    assert response.status == 413
    assert assert_sane(response)["error"] == "payload_too_large"


async def test_clients_leaving_as_their_413_ends_cause_no_server_errors(server: ServerProcess) -> None:
    """The client closes right after the 413's last byte, racing the server's end of the response:
    an ordinary disconnect, which must not surface as "Error in ASGI Framework" and a stack trace."""
    head = build_request("POST", "/embed", b"", {"Content-Length": str(2 * MAX_BODY)}) + b'{"input_text": '

    async def one() -> None:
        assert (await request(server.port, head, limit=LIMIT)).status == 413

    async def connections_closed() -> bool:
        return server.open_fds() <= fds_before

    fds_before = server.open_fds()
    for _ in range(20):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one)
    # Once the server has closed its end of every connection, whatever those closes logged is in the
    # log (errors are written at once, not buffered).
    await wait_until(connections_closed, LIMIT, "the server to close the 200 connections")
    assert "Error in ASGI Framework" not in server.log()


async def test_streamed_oversized_body_is_413(server: ServerProcess) -> None:
    """No Content-Length (chunked): the server counts as it reads and stops at the limit."""
    chunk = b"x" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // len(chunk) + 2))
    raw = build_request(
        "POST", "/embed", None, {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}
    )
    with trio.fail_after(LIMIT):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(raw)
            with contextlib.suppress(trio.BrokenResourceError):  # it may answer and close mid-upload
                await stream.send_all(chunks + b"0\r\n\r\n")
            response = await read_response(stream)
    assert response.status == 413
    assert_sane(response)


async def test_body_of_exactly_the_limit_is_read(server: ServerProcess) -> None:
    prefix, suffix = b'{"input_text": "', b'"}'
    body = prefix + b"a" * (MAX_BODY - len(prefix) - len(suffix)) + suffix
    assert len(body) == MAX_BODY
    response = await post_raw(server, body)
    assert response.status == 422  # read and validated (the text is too long), not refused as too large
    assert_sane(response)


# -- content types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "application/octet-stream",
        "application/jsonx",
        "json",
        "",
    ],
)
async def test_wrong_content_type_is_415(server: ServerProcess, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type is not None else None
    response = await post_raw(server, embed_body("hello"), content_type=None, headers=headers)
    assert response.status == 415, response
    assert assert_sane(response)["error"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "APPLICATION/JSON", "application/vnd.api+json"]
)
async def test_json_content_types_are_accepted(server: ServerProcess, content_type: str) -> None:
    response = await post_raw(server, embed_body("hello"), content_type=content_type)
    assert response.status == 200, response
    assert_sane(response)


# -- bytes that are not (acceptable) JSON ------------------------------------------------------------------

HOSTILE_BODIES: dict[str, tuple[bytes, int]] = {
    "invalid utf-8": (b'{"input_text": "\xff\xfe\xfd"}', 400),
    "truncated utf-8": (b'{"input_text": "\xe2\x82"}', 400),
    "overlong utf-8": (b'{"input_text": "\xc0\xaf"}', 400),
    "lone high surrogate, raw bytes": (b'{"input_text": "\xed\xa0\x80"}', 400),
    "lone low surrogate, raw bytes": (b'{"input_text": "a\xed\xb0\x80b"}', 400),
    "lone high surrogate, escaped": (b'{"input_text": "\\ud800"}', 400),
    "lone low surrogate, escaped": (b'{"input_text": "\\udc00 tail"}', 400),
    "reversed surrogate pair, escaped": (b'{"input_text": "\\ude00\\ud83d"}', 400),
    "raw control character": (b'{"input_text": "a\x01b"}', 400),
    "raw NUL": (b'{"input_text": "a\x00b"}', 400),
    "byte order mark": (b'\xef\xbb\xbf{"input_text": "a"}', 400),
    "NaN": (b'{"input_text": NaN}', 400),
    "trailing garbage": (b'{"input_text": "a"} {}', 400),
    "truncated": (b'{"input_text": "a', 400),
    "empty body": (b"", 400),
    "nested arrays 100k deep": (b"[" * 100_000 + b"]" * 100_000, 400),
    "nested objects 100k deep": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400),
    "huge exponent": (b'{"input_text": 1e999999}', 400),
    "huge integer": (b'{"input_text": 1' + b"0" * 10_000 + b"}", 400),
    "huge negative": (b'{"input_text": -1e400}', 400),
    "nested 500 deep inside the field": (b'{"input_text": ' + b"[" * 500 + b"]" * 500 + b"}", 422),
    "number": (b'{"input_text": 12345678901234567890}', 422),
    "float": (b'{"input_text": 1.5e300}', 422),
    "bool": (b'{"input_text": true}', 422),
    "null": (b'{"input_text": null}', 422),
    "object": (b'{"input_text": {"$gt": ""}}', 422),
    "list of strings": (b'{"input_text": ["a", "b"]}', 422),
    "top-level array": (b'["input_text"]', 422),
    "top-level string": (b'"input_text"', 422),
    "top-level number": (b"42", 422),
    "top-level null": (b"null", 422),
    "empty object": (b"{}", 422),
    "extra field": (b'{"input_text": "a", "admin": true}', 422),
    "extra huge number field": (b'{"input_text": "a", "n": 1' + b"0" * 5000 + b"}", 400),
    "wrong field name": (b'{"input": "a"}', 422),
    "empty string": (b'{"input_text": ""}', 422),
    "whitespace only": (b'{"input_text": " \\t\\n\\u3000\\u00a0 "}', 422),
    "many unknown fields": (orjson.dumps({"input_text": "a", **{f"k{i}": i for i in range(20_000)}}), 422),
}


@pytest.mark.parametrize("body,status", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
async def test_hostile_bodies_get_a_json_4xx(server: ServerProcess, body: bytes, status: int) -> None:
    response = await post_raw(server, body)
    assert response.status == status, (response.status, response.body[:300])
    body_json = assert_sane(response)
    assert len(response.body) < 64 * 1024, "error details stay short whatever the input"
    assert "\x00" not in body_json["detail"]


# -- texts that are valid, however odd ------------------------------------------------------------------

ODD_TEXTS: dict[str, str] = {
    "NUL inside": "before\x00after",
    "only NUL": "\x00",
    "control characters": "".join(chr(c) for c in range(1, 32)) + "x",
    "DEL and C1 controls": "a\x7f\x80\x9f b",
    "right-to-left": "שלום עולם — مرحبا بالعالم",
    "bidi overrides": "abc\u202edcba\u202c \u2066isolate\u2069 \u200f",
    "emoji": "😀🎉👍🏽",
    "emoji ZWJ sequences": "👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏿‍🚀",
    "combining marks": "Z̴̡̪̫͎̈́a̸̢̛͕l̷̡̛g̶o̵",
    "escaped surrogate pair": "😀",
    "noncharacters": "\ufffe\uffff\U0010ffff",
    "line separators": "a\u2028b\u2029c\u0085d",
    "zero width": "\u200b\u200c\u200d\ufeffx",
    "private use": "\ue000\U000f0000",
    "html and sql": "<script>alert(1)</script>'; DROP TABLE texts; --",
    "format strings": "%s%s%n%x {0} {__class__} ${jndi:ldap://x}",
    "debug-marker lookalikes": "[[sleep:]] [[fail] [crash]] [[sleep:-1]]",
    "1024 two-byte characters": "é" * 1024,
    "1024 three-byte characters": "中" * 1024,
    "1024 four-byte characters": "😀" * 1024,
    "1024 mixed characters": ("aé中😀" * 256),
}


@pytest.mark.parametrize("text", ODD_TEXTS.values(), ids=ODD_TEXTS.keys())
async def test_odd_texts_are_embedded(server: ServerProcess, text: str) -> None:
    response = await post_raw(server, embed_body(text))
    assert response.status == 200, (response.status, response.body[:300])
    assert_sane(response)


@pytest.mark.parametrize("unit", ["a", "é", "中", "😀"])
async def test_1025_characters_is_422_whatever_their_byte_length(server: ServerProcess, unit: str) -> None:
    response = await post_raw(server, embed_body(unit * 1025))
    assert response.status == 422
    assert "input_text" in assert_sane(response)["detail"]


async def test_escaped_and_raw_texts_embed_alike(server: ServerProcess) -> None:
    """`\\u00e9` and the raw UTF-8 bytes are the same text, so the same vector."""
    raw = await post_raw(server, '{"input_text": "café 😀"}'.encode())
    escaped = await post_raw(server, b'{"input_text": "caf\\u00e9 \\ud83d\\ude00"}')
    assert raw.status == escaped.status == 200
    assert raw.json()["embedding"] == escaped.json()["embedding"]


# -- headers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "NaN", "-inf", "1e", "0x10", " ", "\xef\xbc\x91"])
async def test_bad_request_timeout_header_is_400(server: ServerProcess, value: str) -> None:
    response = await post_raw(server, embed_body("hello"), headers={"X-Request-Timeout": value})
    assert response.status == 400, (value, response.status, response.body)
    assert_sane(response)


@pytest.mark.parametrize("value", ["inf", "1e308", "30", "0.5"])
async def test_odd_but_valid_request_timeout_header(server: ServerProcess, value: str) -> None:
    response = await post_raw(server, embed_body("hello"), headers={"X-Request-Timeout": value})
    assert response.status == 200, (value, response.status, response.body)
    assert_sane(response)


async def test_odd_request_ids_are_echoed_harmlessly(server: ServerProcess) -> None:
    for request_id in ["x" * 128, "<script>", "id with spaces", '"quoted"']:
        raw = build_request("POST", "/embed", embed_body("hello"), {"X-Request-ID": request_id})
        response = await request(server.port, raw)
        assert response.status == 200
        assert response.headers["x-request-id"] == request_id
    # Too long, or not printable ASCII: replaced by a generated id rather than echoed into headers and logs.
    for request_id in ["x" * 4000, "\xfcn\xefc\xf6d\xe9"]:
        raw = build_request("POST", "/embed", embed_body("hello"), {"X-Request-ID": request_id})
        response = await request(server.port, raw)
        assert response.status == 200
        assert response.headers["x-request-id"] != request_id
        assert len(response.headers["x-request-id"]) == 32


async def test_malformed_http_is_refused_and_the_server_keeps_serving(server: ServerProcess) -> None:
    garbage = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
        b"GET /nowhere HTTP/9.9\r\nConnection: close\r\n\r\n",
        b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"POST /embed HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"NOT-A-METHOD\r\n\r\n",
    ]
    for raw in garbage:
        with trio.fail_after(LIMIT):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                await stream.send_all(raw)
                response = await read_response(stream)
        assert 400 <= response.status < 500, (raw[:40], response)
        assert b"Traceback" not in response.body
    assert (await get(server.port, "/ready")).status == 200
    assert_sane(await post_raw(server, embed_body("still serving")))


# -- the OpenAI route gets the same treatment ----------------------------------------------------------


async def test_openai_route_refuses_hostile_input_with_4xx(server: ServerProcess) -> None:
    model = (await get(server.port, "/v1/models")).json()["data"][0]["id"]
    cases = [
        b'{"model": "%s", "input": "\xff\xfe"}' % model.encode(),
        b'{"model": "%s", "input": "\\ud800"}' % model.encode(),
        b'{"model": "%s", "input": 1e999999}' % model.encode(),
        b'{"model": "%s", "input": ' % model.encode() + b"[" * 5000 + b"]" * 5000 + b"}",
        orjson.dumps({"model": model, "input": ["ok", "  "]}),
        orjson.dumps({"model": model, "input": [[1, 2], "mixed"]}),
        orjson.dumps({"model": model, "input": []}),
        orjson.dumps({"model": 1e300, "input": "x"}),
    ]
    for body in cases:
        response = await post_raw(server, body, path="/v1/embeddings")
        assert 400 <= response.status < 500, (body[:80], response.status, response.body[:300])
        assert_sane(response, openai=True)
    response = await post_raw(server, b"{}", path="/v1/embeddings", content_type="text/plain")
    assert response.status == 415
    assert_sane(response, openai=True)
    odd = orjson.dumps({"model": model, "input": ["a\x00b", "שלום", "👨‍👩‍👧‍👦", "😀" * 1024]})
    response = await post_raw(server, odd, path="/v1/embeddings")
    assert response.status == 200, response.body[:300]
    assert len(assert_sane(response, openai=True)["data"]) == 4


def test_documented_not_blank_pattern_matches_the_validator() -> None:
    """/openapi.json's `pattern` for texts says exactly what the validator accepts, so clients and
    fuzzers generated from it agree with the server on every character."""
    pattern = re.compile(NOT_BLANK_PATTERN)
    disagree = [hex(c) for c in range(0x110000) if (pattern.search(chr(c)) is None) != chr(c).isspace()]
    assert not disagree
