"""Settings from environment variables: typed, with errors naming the variable."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from meshline import env


def test_bool_accepts_words(monkeypatch):
    monkeypatch.setenv("X_FLAG", "yes")
    assert env.env_bool("X_FLAG") is True
    monkeypatch.setenv("X_FLAG", "off")
    assert env.env_bool("X_FLAG") is False


def test_bad_bool_names_variable(monkeypatch):
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG='maybe'"):
        env.env_bool("X_FLAG")


def test_bad_int_names_variable(monkeypatch):
    monkeypatch.setenv("X_COUNT", "ten")
    with pytest.raises(ImproperlyConfigured, match="X_COUNT"):
        env.env_int("X_COUNT", 1)


def test_int_below_minimum(monkeypatch):
    monkeypatch.setenv("X_COUNT", "0")
    with pytest.raises(ImproperlyConfigured, match="minimum of 1"):
        env.env_int("X_COUNT", 5, minimum=1)


def test_file_variant_reads_secret(monkeypatch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("X_SECRET_FILE", str(secret))
    assert env.env_str("X_SECRET") == "s3cret"


def test_unreadable_file_names_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("X_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="X_SECRET_FILE"):
        env.env_str("X_SECRET")


@pytest.mark.parametrize(
    ("url", "engine", "name"),
    [
        ("postgresql://meshline:pw@db.local:6543/prod", "django.db.backends.postgresql", "prod"),
        ("sqlite:///relative.sqlite3", "django.db.backends.sqlite3", "relative.sqlite3"),
        ("sqlite:////var/lib/meshline.sqlite3", "django.db.backends.sqlite3", "/var/lib/meshline.sqlite3"),
    ],
)
def test_database_url_parsed(monkeypatch, url, engine, name):
    monkeypatch.setenv("X_DB", url)
    database = env.env_database("X_DB", "sqlite:///x")
    assert database["ENGINE"] == engine
    assert database["NAME"] == name


def test_postgres_url_parts(monkeypatch):
    monkeypatch.setenv("X_DB", "postgresql://meshline:p%40ss@db.local:6543/prod")
    database = env.env_database("X_DB", "sqlite:///x")
    assert database["USER"] == "meshline"
    assert database["PASSWORD"] == "p@ss"
    assert database["HOST"] == "db.local"
    assert database["PORT"] == "6543"


def test_unknown_database_scheme(monkeypatch):
    monkeypatch.setenv("X_DB", "mysql://x/y")
    with pytest.raises(ImproperlyConfigured, match="X_DB"):
        env.env_database("X_DB", "sqlite:///x")


def test_settings_need_secret_key_without_debug():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='meshline.settings'; django.setup()"],
        env={"PATH": "/usr/bin:/bin", "DEBUG": "0"},
        capture_output=True,
        text=True,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
    )
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_bad_broker_stops_startup():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='meshline.settings'; django.setup()"],
        env={"PATH": "/usr/bin:/bin", "DEBUG": "1", "Q_BROKER": "amqp://x"},
        capture_output=True,
        text=True,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
    )
    assert result.returncode != 0
    assert "Q_BROKER='amqp://x'" in result.stderr


def test_bad_crm_pacer_stops_startup():
    import subprocess
    import sys
    from pathlib import Path

    setup = (
        "import django, os; "
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'meshline.settings'; django.setup()"
    )
    result = subprocess.run(
        [sys.executable, "-c", setup],
        env={"PATH": "/usr/bin:/bin", "DEBUG": "1", "MESHLINE_CRM_PACER": "redis"},
        capture_output=True,
        text=True,
        cwd=str(Path(__file__).resolve().parents[1]),
    )

    assert result.returncode != 0
    assert "MESHLINE_CRM_PACER='redis' is not supported" in result.stderr
