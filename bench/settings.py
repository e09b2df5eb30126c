"""Meshline's settings plus the bare baseline view, for the benchmarks only."""

from meshline.settings import *  # noqa: F403

ROOT_URLCONF = "bench.bare_urls"
