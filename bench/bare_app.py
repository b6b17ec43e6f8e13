"""Baseline: a bare quart-trio app on hypercorn's trio worker, single process.

POST /embed parses the same JSON body as trio-infer ({"input_text": ...}) and answers a fixed
384-float vector as {"embedding": [...], "model": "debug"}, serialised with orjson on every request
(as a normal app would). GET /ready answers 200 so the benchmark can wait for it like for the service.

Run: ``python -m bench.bare_app --port P``; SIGTERM or SIGINT shuts it down gracefully (exit 0).
"""

from __future__ import annotations

import argparse
import random
import signal

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

_rng = random.Random(0)
VECTOR: list[float] = [_rng.uniform(-0.2, 0.2) for _ in range(384)]

app = QuartTrio(__name__)


def _json(doc: object, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status=status, mimetype="application/json")


@app.post("/embed")
async def embed() -> Response:
    data = await request.get_json(force=True, silent=True)
    text = data.get("input_text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text:
        return _json({"error": "validation_error", "detail": "input_text must be a non-empty string"}, 422)
    return _json({"embedding": VECTOR, "model": "debug"})


@app.get("/ready")
async def ready() -> Response:
    return _json({"status": "ready"})


async def _shutdown_trigger() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    trio.run(lambda: serve(app, config, shutdown_trigger=_shutdown_trigger))


if __name__ == "__main__":
    main()
