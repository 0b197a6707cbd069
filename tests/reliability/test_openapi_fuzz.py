"""Schemathesis against the real server, from the app's own OpenAPI schema: no 5xx, answers as documented.

Every operation is fuzzed with schema-valid and schema-violating requests (bounded, derandomised examples), with
the API key the shared server requires; Schemathesis also checks that the routes it protects refuse requests
without it. One built-in check is left out: `positive_data_acceptance` expects any `format: binary` upload to be
accepted, but only a decodable image is, which no JSON schema can say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from app.config import Settings
from app.main import create_app
from tests.app.live_server import LiveServer
from tests.reliability.server_support import API_KEY

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 40


def _openapi_document() -> dict[str, Any]:
    # Building the app loads nothing (the model loads in its lifespan), so its schema is there at collection.
    # (`schemathesis.pytest.from_fixture`, which would load it from the live server, fails under pytest 9.)
    document: dict[str, Any] = create_app(Settings(model_path=Path("unused.onnx"), auto_export=False)).openapi()
    return document


# OpenAPI-aware auth: Schemathesis sends the token where the schema asks for it, and leaves it out on purpose in
# the cases that check that a missing token is refused.
CONFIG = schemathesis.Config.from_dict(
    {
        "auth": {"openapi": {"HTTPBearer": {"bearer": API_KEY}}},
        "checks": {"positive_data_acceptance": {"enabled": False}},
    }
)
schema = schemathesis.openapi.from_dict(_openapi_document(), config=CONFIG)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_answers_as_its_schema_says(case: schemathesis.Case[Any], shared_server: LiveServer) -> None:
    case.call_and_validate(base_url=shared_server.url)
