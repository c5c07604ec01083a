"""The API docs pages, /docs (Swagger UI) and /redoc, with every script, style and icon served by
this server from the fastapi-offline package's copy of them.

FastAPI's own pages load those from public CDNs, so on a host without internet they stay blank.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png
SCHEMA, SWAGGER, OAUTH2_REDIRECT, REDOC = "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"
PAGES = frozenset({SWAGGER, OAUTH2_REDIRECT, REDOC, SCHEMA})
FAVICON = f"{ASSETS}/favicon.png"
_STATIC = Path(fastapi_offline.__file__).parent / "static"


def is_docs(path: str) -> bool:
    """The docs pages, their assets and the schema: open without a token (service.guard)."""
    return path in PAGES or path.startswith(ASSETS + "/")


def install_docs(app: FastAPI) -> None:
    """Add the pages to an app made with `docs_url=None, redoc_url=None`."""
    app.mount(ASSETS, StaticFiles(directory=_STATIC), name="docs-assets")
    title = f"{app.title} API"

    # Two page builders of FastAPI's, each with its own asset arguments: alike in shape only.
    @app.get(SWAGGER, include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=SCHEMA,
            title=title,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=FAVICON,
            oauth2_redirect_url=OAUTH2_REDIRECT,
        )

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=SCHEMA,
            title=title,
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=FAVICON,
            with_google_fonts=False,
        )
