"""/docs and /redoc work offline: every asset comes from this server. Checked in a real headless
Chromium with every other host unresolvable; its screenshot is written to the test's tmp_path."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_helpers import live_server, make_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


@pytest.fixture(scope="module")
def address(bundle_path: Path) -> Iterator[str]:
    with live_server(make_settings(bundle_path, auth_token="s3cret")) as addr:
        yield addr


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_pages_load_nothing_from_elsewhere(address: str, page: str) -> None:
    html = httpx.get(f"http://{address}{page}").text
    urls = re.findall(r'(?:src|href|url)\s*[=:]\s*[\'"]([^\'"]+)', html)
    assert urls and all(u.startswith("/") for u in urls), urls
    for url in urls:  # open without the token, like the page itself
        assert httpx.get(f"http://{address}{url}").status_code == 200, url


def _chromium(*args: str) -> str:
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", OFFLINE]
    command += ["--virtual-time-budget=15000", "--window-size=1280,1400", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/test.sh installs it)")
def test_swagger_ui_renders_offline_in_chromium(address: str, tmp_path: Path) -> None:
    url = f"http://{address}/docs"
    dom = _chromium("--dump-dom", url)
    rendered = set(re.findall(r'data-path="([^"]+)"', dom))  # one per operation Swagger UI drew
    assert {"/v1/models/{name}/predict", "/v2/models/{name}/infer"} <= rendered, dom[-3000:]
    assert "Failed to load API definition" not in dom
    shot = tmp_path / "docs.png"
    _chromium(f"--screenshot={shot}", url)
    assert shot.stat().st_size > 30_000  # a page with text and colours, not a blank one
    print(f"\nscreenshot of /docs: {shot}")
