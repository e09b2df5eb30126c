"""A fake Pipedrive API v1 on 127.0.0.1, in Pipedrive's documented formats.

- ``GET /api/v1/deals/{id}`` returns ``{"success": true, "data": {...}}``,
  with ``org_id`` as an object ``{"name", "value"}`` as the API sends it. A
  deleted deal has ``status: "deleted"``; an unknown one returns 404
  ``{"success": false, "error": "Deal not found", "errorCode": 404}``.
- ``GET /api/v1/deals/{id}/products?start&limit`` returns ``data`` and
  ``additional_data.pagination`` ``{"start", "limit",
  "more_items_in_collection", "next_start"}``.
- ``POST /oauth/token`` with the refresh-token grant and HTTP basic client
  authentication.

API tokens are sent in the ``x-api-token`` header, OAuth tokens as bearer.
"""

import base64

from tests.fakes.crm_api import FakeCrmApi


class FakePipedrive(FakeCrmApi):
    token_path = "/oauth/token"

    def __init__(self):
        super().__init__()
        self.deals: dict[str, dict] = {}
        self.products: dict[str, list[dict]] = {}

    def add_deal(self, deal_id, fields: dict, products=()):
        self.deals[str(deal_id)] = {"id": int(deal_id), **fields}
        self.products[str(deal_id)] = [
            {"id": index + 1 + int(deal_id) * 1000, "deal_id": int(deal_id), **product}
            for index, product in enumerate(products)
        ]

    def rate_limit(self, path_prefix, *, after=None, retry_after=2):
        body = {
            "success": False,
            "error": "Rate limit has been exceeded",
            "errorCode": 429,
        }
        headers = {"Retry-After": str(retry_after), "x-ratelimit-remaining": "0"}
        self.fail("GET", path_prefix, 429, body, after=after, headers=headers)

    def cursor(self, request) -> str:
        return request.query.get("start", "")

    def authorized(self, request) -> bool:
        if request.headers.get("x-api-token") == self.api_token:
            return True
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        with self.lock:
            return token in self.access_tokens

    def client_authorized(self, request) -> bool:
        expected = base64.b64encode(
            f"{self.client_id}:{self.client_secret}".encode()
        ).decode()
        return request.headers.get("Authorization") == f"Basic {expected}"

    def auth_error(self):
        return (
            401,
            {"success": False, "error": "unauthorized access", "errorCode": 401},
            {},
        )

    def route(self, request):
        parts = request.path.strip("/").split("/")
        headers = {"x-ratelimit-remaining": "79"}
        if (
            request.method == "GET"
            and parts[:3] == ["api", "v1", "deals"]
            and len(parts) == 4
        ):
            return *self.get_deal(parts[3]), headers
        if (
            request.method == "GET"
            and parts[:3] == ["api", "v1", "deals"]
            and parts[4:] == ["products"]
        ):
            return *self.list_products(parts[3], request.query), headers
        return (
            404,
            {"success": False, "error": "Unknown method", "errorCode": 404},
            headers,
        )

    def get_deal(self, deal_id):
        deal = self.deals.get(deal_id)
        if deal is None:
            return 404, {"success": False, "error": "Deal not found", "errorCode": 404}
        data = dict(deal)
        if "org_id" in data and not isinstance(data["org_id"], dict):
            data["org_id"] = {
                "name": data.pop("org_name", None),
                "value": data["org_id"],
            }
        return 200, {"success": True, "data": data, "additional_data": {}}

    def list_products(self, deal_id, query):
        if deal_id not in self.deals:
            return 404, {"success": False, "error": "Deal not found", "errorCode": 404}
        start, limit = int(query.get("start", 0)), int(query.get("limit", 100))
        products = self.products.get(deal_id, [])
        page = products[start : start + limit]
        more = start + limit < len(products)
        pagination = {"start": start, "limit": limit, "more_items_in_collection": more}
        if more:
            pagination["next_start"] = start + limit
        return 200, {
            "success": True,
            "data": page,
            "additional_data": {"pagination": pagination},
        }
