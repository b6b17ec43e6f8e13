"""OpenAPI generation tweaks on top of quart-schema."""

from __future__ import annotations

from typing import Any

from quart_schema import OpenAPIProvider
from quart_schema.validation import DataSource


class RequiredBodyOpenAPIProvider(OpenAPIProvider):
    """Marks every documented request body `required`: no route accepts a request without one (it is
    a 415 or 400), and clients and fuzzers generated from the schema should know."""

    def build_request_body(
        self, model: type[Any], source: DataSource
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        request_body, definitions = super().build_request_body(model, source)
        request_body["required"] = True
        return request_body, definitions
