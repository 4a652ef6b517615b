"""The ``/ui`` route through the real ASGI app: headers, assets, no outside resources."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from reloop_service.config import Settings
from reloop_service.serving.app import create_app
from reloop_service.serving.routes.ui import CSP, static_files


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'r.db'}", admin_token="t")
    return TestClient(create_app(settings))  # no lifespan: /ui needs no model and no database


def test_page_and_assets_carry_a_strict_csp(client: TestClient) -> None:
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert csp == CSP
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
    assert "frame-ancestors 'none'" in csp and page.headers["x-content-type-options"] == "nosniff"
    referenced = re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.text)
    assert sorted(referenced) == ["/ui/static/dashboard.css", "/ui/static/dashboard.js"]
    for path in [*referenced, "/ui/static/chart.js"]:
        asset = client.get(path)
        assert asset.status_code == 200, path
        assert asset.headers["content-security-policy"] == CSP
    assert client.get("/ui/static/dashboard.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/", follow_redirects=False).headers["location"] == "/ui"


@pytest.mark.parametrize("name", ["nope.js", "..%2Fui.py", "%2E%2E%2F%2E%2E%2Fapp.py", "__init__.py"])
def test_only_shipped_assets_are_served(client: TestClient, name: str) -> None:
    assert client.get(f"/ui/static/{name}").status_code == 404


def test_assets_use_nothing_outside_the_service() -> None:
    """No CDN, no inline script or style (the CSP would block them), no eval, no token logging."""
    files = static_files()
    assert {"index.html", "dashboard.js", "chart.js", "dashboard.css"} <= files.keys()
    for name, data in files.items():
        text = data.decode()
        urls = set(re.findall(r"https?://[^\s\"')]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, f"{name} references {urls}"
        assert "console." not in text and "eval(" not in text and "innerHTML" not in text, name
    html = files["index.html"].decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers


def test_the_page_is_not_in_the_openapi_schema(client: TestClient) -> None:
    assert not any(path.startswith("/ui") for path in client.get("/openapi.json").json()["paths"])
