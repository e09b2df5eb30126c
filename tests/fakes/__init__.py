"""Fake external systems that tests run on 127.0.0.1."""

from tests.fakes.rest_erp import FakeErp

__all__ = ["FakeErp"]
