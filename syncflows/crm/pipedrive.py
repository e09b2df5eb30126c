"""Pipedrive API v1: a deal and its products.

Calls ``GET /api/v1/deals/{id}`` and ``GET /api/v1/deals/{id}/products``,
paged with ``start`` and ``limit`` until
``additional_data.pagination.more_items_in_collection`` is false.
Credentials: ``token`` (an API token, sent in the ``x-api-token`` header), or
``client_id``, ``client_secret`` and ``refresh_token`` for OAuth, refreshed at
``https://oauth.pipedrive.com/oauth/token`` with HTTP basic client auth.
"""

from syncflows.crm.auth import OAuthToken, StaticToken, load_credentials
from syncflows.crm.base import ChildRecord, CrmClient, ReadRequest, ReadResult
from syncflows.crm.errors import CrmError, RecordNotFound
from syncflows.crm.http import parse_retry_after

TOKEN_URL = "https://oauth.pipedrive.com/oauth/token"
# Fields that GET /deals/{id} returns as objects, where webhooks send the id.
REFERENCE_FIELDS = {
    "org_id": "org_name",
    "person_id": "person_name",
    "user_id": "owner_name",
}


class PipedriveClient(CrmClient):
    crm = "pipedrive"

    def auth_for(self, access):
        credentials = load_credentials(access)
        if access.auth_type == "oauth":
            return OAuthToken(
                access, credentials, access.token_url or TOKEN_URL, "basic"
            )
        return StaticToken(
            credentials.get("token", ""), header="x-api-token", scheme=""
        )

    def read(
        self, object_type: str, record_id: str, request: ReadRequest
    ) -> ReadResult:
        body = self.transport.get(f"/api/v1/{object_type}s/{record_id}")
        deal = (body or {}).get("data")
        if not deal or deal.get("status") == "deleted" or deal.get("deleted") is True:
            raise RecordNotFound(
                object_type, record_id, f"Pipedrive deal {record_id} is deleted."
            )
        fields = _flatten(deal)
        if request.properties:
            fields = {
                name: fields[name] for name in request.properties if name in fields
            }
        result = ReadResult(
            object_type=object_type, record_id=str(deal["id"]), fields=fields
        )
        if "products" in request.associations:
            for product in self.products(result.record_id):
                result.children.append(
                    ChildRecord("product", str(product["id"]), product)
                )
            result.complete_child_types.add("product")
        return result

    def products(self, deal_id: str) -> list[dict]:
        products, start = [], 0
        while True:
            body = self.transport.get(
                f"/api/v1/deals/{deal_id}/products",
                params={"start": start, "limit": self.access.page_size},
            )
            products.extend(body.get("data") or [])
            pagination = (body.get("additional_data") or {}).get("pagination") or {}
            if not pagination.get("more_items_in_collection"):
                return products
            start = pagination.get("next_start", start + self.access.page_size)

    def classify(self, status: int, body, headers) -> CrmError:
        body = body if isinstance(body, dict) else {}
        message = str(body.get("error") or f"HTTP {status}")
        code = str(body.get("errorCode") or status)
        if status == 429:
            return CrmError(
                "rate_limited",
                f"Pipedrive rate limit reached: {message}",
                transient=True,
                retry_after=parse_retry_after(headers) or 2.0,
                status=status,
                crm_code=code,
            )
        if status == 401:
            return CrmError(
                "auth_failed",
                f"Pipedrive rejected the token: {message}",
                status=status,
                crm_code=code,
            )
        if status in (404, 410):
            return RecordNotFound("Pipedrive record", "", f"Pipedrive: {message}")
        if status >= 500:
            return CrmError(
                "crm_unavailable",
                f"Pipedrive failed with HTTP {status}: {message}",
                transient=True,
                status=status,
                crm_code=code,
            )
        return CrmError(
            "schema_invalid",
            f"Pipedrive rejected the request (HTTP {status}): {message}",
            status=status,
            crm_code=code,
        )


def _flatten(deal: dict) -> dict:
    """Return the deal with reference objects as their id, as webhooks send them."""
    fields = dict(deal)
    for name, name_field in REFERENCE_FIELDS.items():
        value = fields.get(name)
        if isinstance(value, dict):
            fields[name] = value.get("value")
            if value.get("name") is not None and name_field not in fields:
                fields[name_field] = value["name"]
    return fields
