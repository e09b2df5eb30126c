"""The KPI results as flat tables, shared by the page, the CSV export and tests."""

import csv

from django.http import HttpResponse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe


def kpi_table(kpi: dict, buckets) -> dict:
    columns = ["Period", "Segment", "Value", "Numerator", "Denominator"]
    rows = []
    for series in kpi["series"]:
        for point in series["points"]:
            rows.append(
                [
                    point["bucket"],
                    series["segment"],
                    point["value"] if point["value"] is not None else "",
                    point["numerator"],
                    point["denominator"],
                ]
            )
    return {"key": kpi["key"], "label": kpi["label"], "columns": columns, "rows": rows}


def revenue_table(revenue: dict) -> dict:
    columns = ["Period", "Segment", "Currency", "Expected", "Invoiced"]
    rows = []
    for series in revenue["series"]:
        for expected, invoiced in zip(
            series["expected"], series["invoiced"], strict=True
        ):
            rows.append(
                [
                    expected["bucket"],
                    series["segment"],
                    series["currency"],
                    expected["value"],
                    invoiced["value"],
                ]
            )
    return {
        "key": "revenue",
        "label": revenue["label"],
        "columns": columns,
        "rows": rows,
    }


def comparison_table(result: dict) -> dict:
    columns = ["KPI", "Segment", "Before", "After"]
    rows = []
    for kpi in result["kpis"]:
        for segment, periods in (kpi.get("comparison") or {}).items():
            rows.append(
                [
                    kpi["label"],
                    segment,
                    periods["before"]["value"] or "",
                    periods["after"]["value"] or "",
                ]
            )
    for series in result["revenue"]["series"]:
        periods = series.get("comparison") or {}
        for name in ("expected", "invoiced"):
            if periods:
                rows.append(
                    [
                        f"Revenue {name} ({series['currency']})",
                        series["segment"],
                        periods["before"][name],
                        periods["after"][name],
                    ]
                )
    return {
        "key": "comparison",
        "label": "Before and after the pilot",
        "columns": columns,
        "rows": rows,
    }


def all_tables(result: dict) -> list[dict]:
    tables = [kpi_table(kpi, result["buckets"]) for kpi in result["kpis"]]
    tables.append(revenue_table(result["revenue"]))
    if result["filters"]["pilot"]:
        tables.append(comparison_table(result))
    for table in tables:
        table["body"] = table_body(table["rows"])
    return tables


def table_body(rows) -> SafeString:
    """Render table rows as escaped HTML; the first two columns are labels.

    Built in Python because a template loop over a few thousand cells took
    about half of the dashboard's server time.
    """
    parts = []
    for row in rows:
        cells = [
            f'<td class="num">{escape(cell)}</td>'
            if index > 1
            else f"<td>{escape(cell)}</td>"
            for index, cell in enumerate(
                cell if cell not in ("", None) else "–" for cell in row
            )
        ]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    return mark_safe("\n".join(parts))


def csv_response(filename: str, columns, rows) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(columns)
    writer.writerows(rows)
    return response
