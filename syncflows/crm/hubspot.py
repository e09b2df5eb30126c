"""HubSpot CRM v3: a deal with its properties, line items and company.

Calls: ``GET /crm/v3/objects/{type}/{id}?properties=...``; associated ids by
``GET /crm/v4/objects/{type}/{id}/associations/{to_type}``, paged with
``paging.next.after``; the associated records by ``POST
/crm/v3/objects/{to_type}/batch/read`` in batches of at most 100 ids.
``search`` pages through ``POST /crm/v3/objects/{type}/search``.
Credentials: ``token`` (a private app token), or ``client_id``,
``client_secret`` and ``refresh_token`` for OAuth, refreshed at
``/oauth/v1/token``.
"""

from syncflows.crm.auth import OAuthToken, StaticToken, load_credentials
from syncflows.crm.base import ChildRecord, CrmClient, ReadRequest, ReadResult
from syncflows.crm.errors import CrmError, RecordNotFound
from syncflows.crm.http import parse_retry_after

BATCH_READ_LIMIT = 100
# HubSpot object names in API paths, by the object type webhooks use.
OBJECT_PATHS = {"deal": "deals", "line_item": "line_items", "company": "companies"}
# Associations read as child records, by association name: the child's object type.
CHILD_ASSOCIATIONS = {"line_items": "line_item"}
DEFAULT_PROPERTIES = {
    "deals": ["dealname", "amount", "deal_currency_code", "dealstage", "closedate"],
    "line_items": [
        "name",
        "hs_sku",
        "quantity",
        "price",
        "amount",
        "discount",
        "hs_discount_percentage",
        "hs_product_id",
    ],
    "companies": ["name", "domain"],
}


class HubSpotClient(CrmClient):
    crm = "hubspot"

    def auth_for(self, access):
        credentials = load_credentials(access)
        if access.auth_type == "oauth":
            token_url = (
                access.token_url or access.base_url.rstrip("/") + "/oauth/v1/token"
            )
            return OAuthToken(access, credentials, token_url)
        return StaticToken(credentials.get("token", ""))

    def read(
        self, object_type: str, record_id: str, request: ReadRequest
    ) -> ReadResult:
        path = OBJECT_PATHS.get(object_type, object_type)
        properties = list(request.properties) or DEFAULT_PROPERTIES.get(path, [])
        body = self.transport.get(
            f"/crm/v3/objects/{path}/{record_id}",
            params={"properties": ",".join(properties), "archived": "false"},
        )
        result = ReadResult(
            object_type=object_type,
            record_id=str(body["id"]),
            fields=_properties(body, properties),
        )
        for association in request.associations:
            ids = self.associated_ids(path, result.record_id, association)
            records = self.batch_read(
                association, ids, request.child_properties.get(association)
            )
            child_type = CHILD_ASSOCIATIONS.get(association)
            if child_type:
                result.children.extend(
                    ChildRecord(child_type, item_id, fields)
                    for item_id, fields in records
                )
                result.complete_child_types.add(child_type)
            else:
                result.related[association] = [
                    {"id": i, **fields} for i, fields in records
                ]
        return result

    def associated_ids(self, path: str, record_id: str, association: str) -> list[str]:
        ids, after = [], None
        while True:
            params = {"limit": self.access.page_size}
            if after:
                params["after"] = after
            page = self.transport.get(
                f"/crm/v4/objects/{path}/{record_id}/associations/{association}",
                params=params,
            )
            ids.extend(str(item["toObjectId"]) for item in page.get("results", []))
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return ids

    def batch_read(self, association: str, ids: list[str], properties=None) -> list:
        properties = list(properties or DEFAULT_PROPERTIES.get(association, []))
        records = []
        for start in range(0, len(ids), BATCH_READ_LIMIT):
            chunk = ids[start : start + BATCH_READ_LIMIT]
            body = self.transport.post(
                f"/crm/v3/objects/{association}/batch/read",
                {"properties": properties, "inputs": [{"id": item} for item in chunk]},
            )
            found = {
                str(item["id"]): _properties(item, properties)
                for item in body["results"]
            }
            missing = [item for item in chunk if item not in found]
            if missing:
                # An association to a record deleted since: a partial order is
                # worse than none, so the read fails and is retried.
                raise CrmError(
                    "crm_unavailable",
                    f"HubSpot returned no {association} {', '.join(missing[:5])} "
                    "although "
                    "the deal is associated with them.",
                    transient=True,
                )
            records.extend((item, found[item]) for item in chunk)
        return records

    def search(self, path: str, filters: dict, properties=None) -> list:
        """Return (id, fields) of every record whose properties equal ``filters``,
        following ``paging.next.after`` through the search results."""
        properties = list(properties or DEFAULT_PROPERTIES.get(path, []))
        body = {
            "filterGroups": [
                {
                    "filters": [
                        {"propertyName": name, "operator": "EQ", "value": str(value)}
                        for name, value in filters.items()
                    ]
                }
            ],
            "properties": properties,
            "limit": self.access.page_size,
        }
        records = []
        while True:
            page = self.transport.post(f"/crm/v3/objects/{path}/search", body)
            records.extend(
                (str(item["id"]), _properties(item, properties))
                for item in page["results"]
            )
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return records
            body = {**body, "after": after}

    def classify(self, status: int, body, headers) -> CrmError:
        body = body if isinstance(body, dict) else {}
        category = str(body.get("category") or body.get("errorType") or "")
        message = str(body.get("message") or f"HTTP {status}")
        if status == 429:
            return CrmError(
                "rate_limited",
                f"HubSpot rate limit reached: {message}",
                transient=True,
                retry_after=parse_retry_after(headers) or 1.0,
                status=status,
                crm_code=category or "RATE_LIMIT",
            )
        if status == 401:
            return CrmError(
                "auth_failed",
                f"HubSpot rejected the token: {message}",
                status=status,
                crm_code=category,
            )
        if status == 404:
            return RecordNotFound("HubSpot record", "", f"HubSpot: {message}")
        if status >= 500:
            return CrmError(
                "crm_unavailable",
                f"HubSpot failed with HTTP {status}: {message}",
                transient=True,
                status=status,
                crm_code=category,
            )
        return CrmError(
            "schema_invalid",
            f"HubSpot rejected the request (HTTP {status}, "
            f"{category or 'no category'}): {message} Check the property and "
            "association names in the brief's read_back.",
            status=status,
            crm_code=category,
        )


def _properties(item: dict, requested: list[str]) -> dict:
    """Return the requested properties; HubSpot's "" means the property is empty."""
    properties = item.get("properties") or {}
    fields = {}
    for name in requested:
        if name in properties:
            value = properties[name]
            fields[name] = None if value == "" else value
    return fields
