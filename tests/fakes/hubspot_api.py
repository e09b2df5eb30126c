"""A fake HubSpot CRM API on 127.0.0.1, in HubSpot's documented formats.

Endpoints:

- ``GET /crm/v3/objects/{type}/{id}?properties=a,b`` returns ``{"id",
  "properties", "createdAt", "updatedAt", "archived"}`` with the requested
  properties (an empty one as ``""``, an unknown one as null). An id merged
  into another returns the surviving record. A missing id returns 404 with
  ``category: OBJECT_NOT_FOUND``.
- ``GET /crm/v4/objects/{type}/{id}/associations/{to_type}?limit&after``
  returns ``{"results": [{"toObjectId", "associationTypes"}], "paging":
  {"next": {"after", "link"}}}``; ``paging`` is absent on the last page.
- ``POST /crm/v3/objects/{type}/batch/read`` with ``{"properties",
  "inputs": [{"id"}]}`` (at most 100 inputs) returns ``{"status":
  "COMPLETE", "results": [...]}``.
- ``POST /crm/v3/objects/{type}/search`` with ``filterGroups`` of ``EQ``
  filters, ``limit`` and ``after`` returns ``{"total", "results",
  "paging"}``.
- ``POST /oauth/v1/token`` with the refresh-token grant.

Errors use HubSpot's body ``{"status": "error", "message", "correlationId",
"category"}``; a 429 has ``errorType: RATE_LIMIT`` and a ``Retry-After``.
Use ``rate_limit(path_prefix, after=cursor)`` to return a 429 for one page.
"""

import base64
import uuid

from tests.fakes.crm_api import FakeCrmApi

BATCH_LIMIT = 100
STAMP = "2026-11-30T10:00:00.000Z"


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(cursor: str) -> int:
    if not cursor:
        return 0
    return int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)[1])


class FakeHubSpot(FakeCrmApi):
    token_path = "/oauth/v1/token"

    def __init__(self):
        super().__init__()
        # objects[type][id] = properties; types are API path names such as "deals".
        self.objects: dict[str, dict[str, dict]] = {
            "deals": {},
            "line_items": {},
            "companies": {},
        }
        # associations[(from_type, id, to_type)] = [ids]
        self.associations: dict[tuple, list[str]] = {}
        self.merged: dict[tuple, str] = {}  # (type, merged id) -> surviving id

    # Test data

    def add_deal(self, deal_id, properties, *, line_items=(), companies=()):
        self.objects["deals"][str(deal_id)] = dict(properties)
        items = []
        for index, item in enumerate(line_items):
            item_id = str(item.get("id") or f"{deal_id}{index + 1:04d}")
            self.objects["line_items"][item_id] = {
                k: v for k, v in item.items() if k != "id"
            }
            items.append(item_id)
        self.associations[("deals", str(deal_id), "line_items")] = items
        company_ids = []
        for company in companies:
            company_id = str(company["id"])
            self.objects["companies"][company_id] = {
                k: v for k, v in company.items() if k != "id"
            }
            company_ids.append(company_id)
        self.associations[("deals", str(deal_id), "companies")] = company_ids

    def merge(self, object_type, survivor_id, merged_id):
        self.merged[(object_type, str(merged_id))] = str(survivor_id)
        self.objects[object_type].pop(str(merged_id), None)

    def delete(self, object_type, object_id):
        self.objects[object_type].pop(str(object_id), None)

    def rate_limit(self, path_prefix, *, after=None, retry_after=2, method="GET"):
        body = {
            "status": "error",
            "message": "You have reached your secondly limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": "SECONDLY",
        }
        headers = {
            "Retry-After": str(retry_after),
            "X-HubSpot-RateLimit-Secondly-Remaining": "0",
        }
        self.fail(method, path_prefix, 429, body, after=after, headers=headers)

    # Protocol

    def cursor(self, request) -> str:
        """Return the paging cursor, or for a batch read its first requested id."""
        if request.method == "POST" and request.path.endswith("/search"):
            return (request.body or {}).get("after", "")
        if request.method == "POST" and isinstance(request.body, dict):
            inputs = request.body.get("inputs") or [{}]
            return f"first:{inputs[0].get('id', '')}"
        return request.query.get("after", "")

    def auth_error(self):
        return (
            401,
            {
                "status": "error",
                "message": "The OAuth token used to make this call expired.",
                "correlationId": str(uuid.uuid4()),
                "category": "EXPIRED_AUTHENTICATION",
            },
            {},
        )

    def token(self, request):
        status, body, headers = super().token(request)
        if status == 400:
            body = {
                "status": "BAD_REFRESH_TOKEN",
                "message": "missing or unknown refresh token",
            }
        return status, body, headers

    def route(self, request):
        parts = request.path.strip("/").split("/")
        headers = {"X-HubSpot-RateLimit-Secondly-Remaining": "9"}
        if (
            request.method == "GET"
            and parts[:3] == ["crm", "v3", "objects"]
            and len(parts) == 5
        ):
            status, body = self.get_object(parts[3], parts[4], request.query)
        elif (
            request.method == "GET"
            and parts[:3] == ["crm", "v4", "objects"]
            and len(parts) == 7
        ):
            status, body = self.list_associations(
                parts[3], parts[4], parts[6], request.query
            )
        elif (
            request.method == "POST"
            and parts[:3] == ["crm", "v3", "objects"]
            and parts[4:]
            == [
                "batch",
                "read",
            ]
        ):
            status, body = self.batch_read(parts[3], request.body or {})
        elif (
            request.method == "POST"
            and parts[:3] == ["crm", "v3", "objects"]
            and parts[4:] == ["search"]
        ):
            status, body = self.search(parts[3], request.body or {})
        else:
            status, body = self.error(404, "Unable to route the request.", "NOT_FOUND")
        return status, body, headers

    def error(self, status, message, category):
        return status, {
            "status": "error",
            "message": message,
            "correlationId": str(uuid.uuid4()),
            "category": category,
        }

    def _resolve(self, object_type, object_id) -> str:
        return self.merged.get((object_type, str(object_id)), str(object_id))

    def _object(self, object_type, object_id, properties) -> dict:
        stored = self.objects[object_type][object_id]
        values = {name: stored.get(name) for name in properties}
        values["hs_object_id"] = object_id
        return {
            "id": object_id,
            "properties": values,
            "createdAt": STAMP,
            "updatedAt": STAMP,
            "archived": False,
        }

    def get_object(self, object_type, object_id, query):
        object_id = self._resolve(object_type, object_id)
        if object_id not in self.objects.get(object_type, {}):
            return self.error(
                404,
                "Object not found.  objectId are usually numeric.",
                "OBJECT_NOT_FOUND",
            )
        properties = [name for name in query.get("properties", "").split(",") if name]
        return 200, self._object(object_type, object_id, properties)

    def list_associations(self, object_type, object_id, to_type, query):
        object_id = self._resolve(object_type, object_id)
        if object_id not in self.objects.get(object_type, {}):
            return self.error(404, "Object not found.", "OBJECT_NOT_FOUND")
        ids = self.associations.get((object_type, object_id, to_type), [])
        limit = min(int(query.get("limit", 500)), 500)
        offset = _offset(query.get("after", ""))
        page = ids[offset : offset + limit]
        body = {
            "results": [
                {
                    "toObjectId": int(item),
                    "associationTypes": [
                        {"category": "HUBSPOT_DEFINED", "typeId": 19, "label": None}
                    ],
                }
                for item in page
            ]
        }
        if offset + limit < len(ids):
            after = _cursor(offset + limit)
            body["paging"] = {
                "next": {
                    "after": after,
                    "link": (
                        f"/crm/v4/objects/{object_type}/{object_id}"
                        f"/associations/{to_type}?after={after}"
                    ),
                }
            }
        return 200, body

    def batch_read(self, object_type, body):
        inputs = body.get("inputs") or []
        if len(inputs) > BATCH_LIMIT:
            return self.error(
                400,
                f"Batch read accepts at most {BATCH_LIMIT} inputs.",
                "VALIDATION_ERROR",
            )
        properties = body.get("properties") or []
        results = [
            self._object(object_type, str(item["id"]), properties)
            for item in inputs
            if str(item["id"]) in self.objects.get(object_type, {})
        ]
        return 200, {
            "status": "COMPLETE",
            "results": results,
            "startedAt": STAMP,
            "completedAt": STAMP,
        }

    def search(self, object_type, body):
        filters = [
            f for group in body.get("filterGroups", []) for f in group["filters"]
        ]
        if any(f.get("operator") != "EQ" for f in filters):
            return self.error(
                400, "Only the EQ operator is supported here.", "VALIDATION_ERROR"
            )
        matches = [
            object_id
            for object_id, values in sorted(self.objects.get(object_type, {}).items())
            if all(str(values.get(f["propertyName"])) == f["value"] for f in filters)
        ]
        limit = min(int(body.get("limit", 10)), 200)
        offset = int(body.get("after") or 0)
        properties = body.get("properties") or []
        page = matches[offset : offset + limit]
        result = {
            "total": len(matches),
            "results": [self._object(object_type, item, properties) for item in page],
        }
        if offset + limit < len(matches):
            result["paging"] = {"next": {"after": str(offset + limit)}}
        return 200, result
