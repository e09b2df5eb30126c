"""Salesforce REST: an Opportunity, its line items, Account and CPQ quote by SOQL.

Calls ``GET /services/data/{version}/query?q=...`` and follows
``nextRecordsUrl`` until ``done`` is true. Associations a brief may ask for:
``OpportunityLineItems``, ``Account`` and ``quotes`` (the primary
``SBQQ__Quote__c`` with its ``SBQQ__QuoteLine__c`` lines, stored in the shape
of a CPQ QuoteModel, ``{"record": ..., "lineItems": [{"record": ...}]}``).
Credentials: ``client_id``, ``client_secret`` and ``refresh_token``,
refreshed at ``/services/oauth2/token``; or a ``token`` used as is.
Errors: ``INVALID_SESSION_ID`` refreshes the token once, and
``REQUEST_LIMIT_EXCEEDED`` is a rate limit.
"""

import re

from syncflows.crm.auth import OAuthToken, StaticToken, load_credentials
from syncflows.crm.base import ChildRecord, CrmClient, ReadRequest, ReadResult
from syncflows.crm.errors import CrmError, RecordNotFound
from syncflows.crm.http import parse_retry_after

DEFAULT_VERSION = "v60.0"
# Salesforce ids are 15 or 18 letters and digits; checked before they enter SOQL.
ID_PATTERN = re.compile(r"^[A-Za-z0-9]{15}([A-Za-z0-9]{3})?$")
FIELD_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)?$")
OPPORTUNITY_FIELDS = [
    "Id",
    "Name",
    "Amount",
    "CurrencyIsoCode",
    "CloseDate",
    "StageName",
    "AccountId",
    "HasOpportunityLineItem",
]
ACCOUNT_FIELDS = ["Account.Name", "Account.AccountNumber"]
LINE_ITEM_FIELDS = [
    "Id",
    "OpportunityId",
    "ProductCode",
    "Name",
    "Quantity",
    "UnitPrice",
    "ListPrice",
    "Discount",
    "TotalPrice",
    "SortOrder",
]
QUOTE_FIELDS = [
    "Id",
    "Name",
    "SBQQ__Primary__c",
    "SBQQ__NetAmount__c",
    "CurrencyIsoCode",
]
QUOTE_LINE_FIELDS = [
    "Id",
    "SBQQ__Quote__c",
    "SBQQ__Number__c",
    "SBQQ__ProductCode__c",
    "SBQQ__ProductName__c",
    "SBQQ__Quantity__c",
    "SBQQ__RegularPrice__c",
    "SBQQ__Discount__c",
    "SBQQ__AdditionalDiscountAmount__c",
    "SBQQ__NetTotal__c",
]
RATE_LIMIT_CODES = {"REQUEST_LIMIT_EXCEEDED"}
SESSION_CODES = {"INVALID_SESSION_ID"}


class SalesforceClient(CrmClient):
    crm = "salesforce"

    def auth_for(self, access):
        credentials = load_credentials(access)
        if access.auth_type == "oauth":
            token_url = (
                access.token_url
                or access.base_url.rstrip("/") + "/services/oauth2/token"
            )
            auth = OAuthToken(access, credentials, token_url)
            auth.on_refresh = self._follow_instance_url
            return auth
        return StaticToken(credentials.get("token", ""))

    def _follow_instance_url(self, body: dict) -> None:
        if body.get("instance_url"):
            self.transport.base_url = body["instance_url"].rstrip("/")

    @property
    def query_path(self) -> str:
        return f"/services/data/{self.access.api_version or DEFAULT_VERSION}/query"

    def read(
        self, object_type: str, record_id: str, request: ReadRequest
    ) -> ReadResult:
        record_id = _checked_id(record_id)
        fields = _checked_fields(list(request.properties) or OPPORTUNITY_FIELDS)
        if "Id" not in fields:
            fields.insert(0, "Id")
        if "Account" in request.associations:
            fields += [name for name in ACCOUNT_FIELDS if name not in fields]
        rows = self.query(
            f"SELECT {', '.join(fields)} FROM {object_type} WHERE Id = '{record_id}'"
        )
        if not rows:
            raise RecordNotFound(
                object_type, record_id, f"Salesforce has no {object_type} {record_id}."
            )
        row = rows[0]
        result = ReadResult(
            object_type=object_type, record_id=str(row["Id"]), fields=_plain(row)
        )
        if isinstance(row.get("Account"), dict):
            result.related["Account"] = _plain(row["Account"])
        if "OpportunityLineItems" in request.associations:
            self._read_line_items(result, request)
        if "quotes" in request.associations:
            self._read_quote(result)
        return result

    def _read_line_items(self, result: ReadResult, request: ReadRequest) -> None:
        fields = _checked_fields(
            request.child_properties.get("OpportunityLineItems") or LINE_ITEM_FIELDS
        )
        rows = self.query(
            f"SELECT {', '.join(fields)} FROM OpportunityLineItem "
            f"WHERE OpportunityId = '{result.record_id}' ORDER BY SortOrder, Id"
        )
        result.children.extend(
            ChildRecord("OpportunityLineItem", str(row["Id"]), _plain(row))
            for row in rows
        )
        result.complete_child_types.add("OpportunityLineItem")

    def _read_quote(self, result: ReadResult) -> None:
        quotes = self.query(
            f"SELECT {', '.join(QUOTE_FIELDS)} FROM SBQQ__Quote__c WHERE "
            f"SBQQ__Opportunity2__c = '{result.record_id}' AND SBQQ__Primary__c = true"
        )
        result.complete_child_types.add("SBQQ__Quote__c")
        if not quotes:
            return
        quote = _plain(quotes[0])
        lines = self.query(
            f"SELECT {', '.join(QUOTE_LINE_FIELDS)} FROM SBQQ__QuoteLine__c "
            f"WHERE SBQQ__Quote__c = '{_checked_id(quote['Id'])}' "
            "ORDER BY SBQQ__Number__c"
        )
        model = {
            "record": quote,
            "lineItems": [
                {"key": index + 1, "record": _plain(line)}
                for index, line in enumerate(lines)
            ],
        }
        result.children.append(ChildRecord("SBQQ__Quote__c", str(quote["Id"]), model))

    def query(self, soql: str) -> list[dict]:
        """Run a SOQL query and return every record, page by page."""
        page = self.transport.get(self.query_path, params={"q": soql})
        records = list(page.get("records", []))
        while not page.get("done", True) and page.get("nextRecordsUrl"):
            page = self.transport.get(page["nextRecordsUrl"])
            records.extend(page.get("records", []))
        return records

    def classify(self, status: int, body, headers) -> CrmError:
        first = (
            body[0]
            if isinstance(body, list) and body and isinstance(body[0], dict)
            else {}
        )
        code = str(first.get("errorCode") or "")
        message = str(first.get("message") or f"HTTP {status}")
        if code in RATE_LIMIT_CODES or status == 429:
            return CrmError(
                "rate_limited",
                f"Salesforce API request limit reached: {message}",
                transient=True,
                retry_after=parse_retry_after(headers),
                status=status,
                crm_code=code or "HTTP_429",
            )
        if code in SESSION_CODES or status == 401:
            return CrmError(
                "auth_failed",
                f"Salesforce rejected the session: {message}",
                status=status,
                crm_code=code,
            )
        if status == 404 or code == "NOT_FOUND":
            return RecordNotFound("Salesforce record", "", f"Salesforce: {message}")
        if status >= 500 or code == "SERVER_UNAVAILABLE":
            return CrmError(
                "crm_unavailable",
                f"Salesforce failed with HTTP {status}: {message}",
                transient=True,
                status=status,
                crm_code=code,
            )
        return CrmError(
            "schema_invalid",
            f"Salesforce rejected the query ({code or status}): {message} "
            "Check the field names in the brief's read_back.",
            status=status,
            crm_code=code,
        )


def _plain(row: dict) -> dict:
    """Drop the ``attributes`` entry Salesforce adds to every record."""
    return {
        key: (_plain(value) if isinstance(value, dict) else value)
        for key, value in row.items()
        if key != "attributes"
    }


def _checked_id(value: str) -> str:
    if not ID_PATTERN.match(str(value)):
        raise CrmError("schema_invalid", f"{value!r} is not a Salesforce record id.")
    return str(value)


def _checked_fields(fields: list[str]) -> list[str]:
    bad = [name for name in fields if not FIELD_PATTERN.match(name)]
    if bad:
        raise CrmError(
            "schema_invalid",
            f"The read_back field names {', '.join(map(repr, bad))} are not "
            "SOQL field names.",
        )
    return list(fields)
