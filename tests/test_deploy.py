"""Production settings: the deployment checklist passes and headers are strict."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PRODUCTION_ENV = {
    "PATH": "/usr/bin:/bin",
    "DEBUG": "0",
    "SECRET_KEY": "p7!x$-long-production-like-secret-key-for-the-deploy-check-0123456789",
    "ALLOWED_HOSTS": "meshline.example.com",
    "DATABASE_URL": "sqlite:////tmp/meshline-deploy-check.sqlite3",
}


def test_check_deploy_has_no_warnings():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=PRODUCTION_ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.django_db
def test_pages_send_strict_csp(client):
    response = client.get("/accounts/login/")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy


def test_templates_have_no_inline_scripts():
    offenders = []
    for template in (ROOT / "templates").rglob("*.html"):
        text = template.read_text(encoding="utf-8")
        for line_number, line in enumerate(text.splitlines(), start=1):
            if "<script" in line and "src=" not in line and "json_script" not in line:
                offenders.append(f"{template.relative_to(ROOT)}:{line_number}")
            if " onclick=" in line or " onchange=" in line or " style=" in line:
                offenders.append(f"{template.relative_to(ROOT)}:{line_number}")
    assert offenders == []
