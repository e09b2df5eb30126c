"""A fake Salesforce REST API on 127.0.0.1, in Salesforce's documented formats.

- ``GET /services/data/{version}/query?q=SOQL`` runs a small subset of SOQL:
  ``SELECT f1, f2, Rel.Field FROM Object WHERE F = 'x' [AND G = true]
  [ORDER BY ...]``. It returns ``{"totalSize", "done", "records",
  "nextRecordsUrl"}`` with at most ``batch_size`` records a page; every record
  carries ``attributes`` ``{"type", "url"}``. The next page is ``GET
  /services/data/{version}/query/{locator}-{offset}``.
- ``POST /services/oauth2/token`` with the refresh-token grant returns
  ``{"access_token", "instance_url", "id", "token_type", "issued_at",
  "signature"}`` and no expiry, as Salesforce does.

Errors are a JSON array ``[{"message", "errorCode"}]``: 401 with
``INVALID_SESSION_ID`` for an expired session, 403 with
``REQUEST_LIMIT_EXCEEDED`` from ``limit_exceeded()``, 400 with
``MALFORMED_QUERY`` for SOQL outside the subset.
"""

import re
import secrets

from tests.fakes.crm_api import FakeCrmApi

VERSION = "v60.0"
SELECT = re.compile(
    r"^SELECT (?P<fields>.+?) FROM (?P<object>\w+)"
    r"(?: WHERE (?P<where>.+?))?(?: ORDER BY (?P<order>.+))?$"
)
CONDITION = re.compile(r"^(\w+) = (?:'([^']*)'|(true|false))$")


class FakeSalesforce(FakeCrmApi):
    token_path = "/services/oauth2/token"

    def __init__(self, batch_size: int = 2000):
        super().__init__()
        self.batch_size = batch_size
        self.tables: dict[str, list[dict]] = {}
        self.results: dict[str, list[dict]] = {}

    def add(self, object_type: str, **fields) -> dict:
        self.tables.setdefault(object_type, []).append(fields)
        return fields

    def delete(self, object_type: str, record_id: str) -> None:
        rows = self.tables.get(object_type, [])
        self.tables[object_type] = [row for row in rows if row.get("Id") != record_id]

    def limit_exceeded(self, *, times=1):
        body = [
            {
                "message": "TotalRequests Limit exceeded.",
                "errorCode": "REQUEST_LIMIT_EXCEEDED",
            }
        ]
        self.fail("GET", f"/services/data/{VERSION}/query", 403, body, times=times)

    def cursor(self, request) -> str:
        return request.query.get("q", "")

    def auth_error(self):
        return (
            401,
            [
                {
                    "message": "Session expired or invalid",
                    "errorCode": "INVALID_SESSION_ID",
                }
            ],
            {},
        )

    def token_body(self, token: str) -> dict:
        return {
            "access_token": token,
            "instance_url": self.url,
            "id": f"{self.url}/id/00Dxx0000000001EAA/005xx0000000001AAA",
            "token_type": "Bearer",
            "issued_at": "1764496800000",
            "signature": "ZmFrZS1zaWduYXR1cmU=",
        }

    def route(self, request):
        headers = {"Sforce-Limit-Info": "api-usage=18/15000"}
        base = f"/services/data/{VERSION}/query"
        if request.method == "GET" and request.path == base:
            status, body = self.query(request.query.get("q", ""))
        elif request.method == "GET" and request.path.startswith(base + "/"):
            status, body = self.next_page(request.path.removeprefix(base + "/"))
        else:
            status, body = (
                404,
                [
                    {
                        "message": "The requested resource does not exist",
                        "errorCode": "NOT_FOUND",
                    }
                ],
            )
        return status, body, headers

    def query(self, soql: str):
        match = SELECT.match(" ".join(soql.split()))
        if not match:
            return 400, [
                {
                    "message": f"unexpected token in {soql[:40]!r}",
                    "errorCode": "MALFORMED_QUERY",
                }
            ]
        object_type = match["object"]
        conditions = self._conditions(match["where"] or "")
        if conditions is None:
            return 400, [
                {"message": "unsupported WHERE clause", "errorCode": "MALFORMED_QUERY"}
            ]
        rows = [
            row
            for row in self.tables.get(object_type, [])
            if all(row.get(name) == value for name, value in conditions)
        ]
        fields = [name.strip() for name in match["fields"].split(",")]
        records = [self._project(object_type, row, fields) for row in rows]
        if match["order"]:
            keys = [part.strip().split()[0] for part in match["order"].split(",")]
            records.sort(
                key=lambda record: tuple(str(record.get(key) or "") for key in keys)
            )
        locator = "01gxx" + secrets.token_hex(5)
        self.results[locator] = records
        return 200, self._page(locator, 0)

    def next_page(self, tail: str):
        locator, _, offset = tail.rpartition("-")
        if locator not in self.results or not offset.isdigit():
            return 400, [
                {
                    "message": "invalid query locator",
                    "errorCode": "INVALID_QUERY_LOCATOR",
                }
            ]
        return 200, self._page(locator, int(offset))

    def _page(self, locator: str, offset: int) -> dict:
        records = self.results[locator]
        chunk = records[offset : offset + self.batch_size]
        done = offset + self.batch_size >= len(records)
        body = {"totalSize": len(records), "done": done, "records": chunk}
        if not done:
            body["nextRecordsUrl"] = (
                f"/services/data/{VERSION}/query/{locator}-{offset + self.batch_size}"
            )
        return body

    def _conditions(self, where: str):
        conditions = []
        for part in [p for p in where.split(" AND ") if p]:
            match = CONDITION.match(part.strip())
            if not match:
                return None
            value = match[2] if match[2] is not None else match[3] == "true"
            conditions.append((match[1], value))
        return conditions

    def _project(self, object_type: str, row: dict, fields: list[str]) -> dict:
        record = {
            "attributes": {
                "type": object_type,
                "url": (
                    f"/services/data/{VERSION}/sobjects/{object_type}/{row.get('Id')}"
                ),
            }
        }
        for name in fields:
            if "." in name:
                relation, field_name = name.split(".", 1)
                record[relation] = self._related(
                    relation, row, field_name, record.get(relation)
                )
            else:
                record[name] = row.get(name)
        return record

    def _related(self, relation: str, row: dict, field_name: str, current):
        target_id = row.get(f"{relation}Id")
        target = next(
            (r for r in self.tables.get(relation, []) if r.get("Id") == target_id), None
        )
        if target is None:
            return None
        related = current or {
            "attributes": {
                "type": relation,
                "url": f"/services/data/{VERSION}/sobjects/{relation}/{target_id}",
            }
        }
        related[field_name] = target.get(field_name)
        return related
