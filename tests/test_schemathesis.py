"""Property-based requests against every operation of the OpenAPI schema.

schemathesis generates requests from the schema that ``/api/v1/schema/``
serves and sends them through Django as an integration user with a read token. No
answer may be a 5xx, and every 4xx must be a JSON object with a ``message``.
The run is bounded: a few examples per operation and no per-example deadline,
so the whole module takes well under a minute, and derandomised, so CI
sends the same requests on every run.
"""

import json
from urllib.parse import urlencode

import pytest
import schemathesis
from django.test import Client
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings

from meshline.models import ApiToken
from meshline.roles import VIEWER
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

MAX_EXAMPLES = 15

schema = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(public=True))


@pytest.fixture
def token(db):
    api_token = ApiToken(
        user=make_user("api-bot", VIEWER), name="fuzz", scopes=["read"]
    )
    value = api_token.issue()
    api_token.save()
    return value


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_never_fails(case, token):
    # Django's test client, not the raw WSGI app: the raw app closes the
    # database connection at the end of each request, and with it the test's
    # transaction.
    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    query = urlencode(case.query or {}, doseq=True)
    url = case.formatted_path + (f"?{query}" if query else "")
    response = client.generic(case.method, url, headers=case.headers or {})
    text = response.content.decode("utf-8", "replace")[:500]
    assert response.status_code < 500, text
    if 400 <= response.status_code < 500:
        body = json.loads(response.content)
        assert isinstance(body, dict), text
        assert isinstance(body.get("message"), str), text
        assert body["message"]
