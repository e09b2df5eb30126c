"""CEL checks and evaluation: positions, names, decimal helpers, lookups."""

import pytest

from meshline.expressions import (
    MAPPING_VARIABLES,
    TRIGGER_VARIABLES,
    Evaluator,
    ExpressionError,
    LookupMissing,
    check_expression,
)
from syncflows.demo import GENERIC_MAPPING, HUBSPOT_MAPPING, PIPEDRIVE_MAPPING, SALESFORCE_MAPPING


@pytest.mark.parametrize(
    "mapping", [HUBSPOT_MAPPING, SALESFORCE_MAPPING, PIPEDRIVE_MAPPING, GENERIC_MAPPING]
)
def test_demo_mappings_pass_check(mapping):
    for name, source in mapping.items():
        assert check_expression(source, MAPPING_VARIABLES) == [], name


def test_check_names_unknown_variable():
    assert check_expression("deal.amount == 1", TRIGGER_VARIABLES) == [
        "Unknown variable 'deal': use one of changed, event, previous, record."
    ]


def test_check_names_unknown_function():
    assert check_expression("evil(record.x)", TRIGGER_VARIABLES) == ["Unknown function 'evil'."]


def test_check_accepts_decimal_helpers():
    assert check_expression('decimal.eq(record.amount, "1.00")', TRIGGER_VARIABLES) == []


def test_syntax_error_has_position():
    problems = check_expression("record.amount ==", TRIGGER_VARIABLES)
    assert problems[0].startswith("Syntax error at line 1, column 17")


def test_missing_field_names_field_and_column():
    evaluator = Evaluator({"record": {"amount": "1.00"}})
    with pytest.raises(ExpressionError) as raised:
        evaluator.evaluate("record.amont", name="total")
    assert "'amont'" in raised.value.message
    assert "column 8" in raised.value.message
    assert "'total'" in raised.value.message


def test_decimal_helpers_never_use_floats():
    evaluator = Evaluator({"record": {"a": "0.1", "b": "0.2"}})
    assert evaluator.evaluate("decimal.add(record.a, record.b)") == "0.3"
    assert evaluator.evaluate('decimal.round("2.675", "EUR")') == "2.68"
    assert evaluator.evaluate('decimal.round("2.5", "JPY")') == "3"
    assert evaluator.evaluate('decimal.sum(["0.10", "0.20", "0.30"])') == "0.60"


def test_decimal_helper_rejects_float():
    evaluator = Evaluator({"record": {"a": 0.1}})
    with pytest.raises(ExpressionError, match="binary float"):
        evaluator.evaluate('decimal.add(record.a, "1")')


def test_lookup_missing_names_table_and_key():
    evaluator = Evaluator({"record": {"sku": "X"}}, {"sku_map": {"A": "B"}})
    with pytest.raises(LookupMissing) as raised:
        evaluator.evaluate('lookup("sku_map", record.sku)', name="lines")
    assert raised.value.table == "sku_map"
    assert raised.value.key == "X"
    assert raised.value.reason_code == "mapping_missing"


def test_lookup_or_default():
    evaluator = Evaluator({"record": {"sku": "X"}}, {"sku_map": {}})
    assert evaluator.evaluate('lookup_or("sku_map", record.sku, "none")') == "none"
