"""Interactive API docs served from packaged assets, never a CDN.

Swagger UI and ReDoc come from the ``fastapi-offline`` package's static files;
the page starts Swagger UI from a script file of the kernel's own, so the docs
need no inline script. The docs pages carry a Content-Security-Policy made for
them; every other response keeps the strict API policy.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

__all__ = ("DOCS_CSP", "install_offline_docs")

DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_ASSETS = {
    "swagger-ui-bundle.js": Path(fastapi_offline.__file__).parent / "static/swagger-ui-bundle.js",
    "swagger-ui.css": Path(fastapi_offline.__file__).parent / "static/swagger-ui.css",
    "redoc.standalone.js": Path(fastapi_offline.__file__).parent / "static/redoc.standalone.js",
    "favicon.png": Path(fastapi_offline.__file__).parent / "static/favicon.png",
    "swagger-init.js": Path(__file__).parent / "static/swagger-init.js",
}

_SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="{static}/swagger-ui.css">
<link rel="icon" href="{static}/favicon.png"></head>
<body><div id="swagger-ui" data-openapi-url="{openapi}"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script src="{static}/swagger-init.js"></script></body></html>"""

_REDOC_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="icon" href="{static}/favicon.png"></head>
<body><redoc spec-url="{openapi}"></redoc>
<script src="{static}/redoc.standalone.js"></script></body></html>"""


def install_offline_docs(app: FastAPI) -> None:
    """Replace FastAPI's CDN-based docs routes with offline ones at the same paths."""
    openapi_url = app.openapi_url
    docs_url, redoc_url = app.docs_url, app.redoc_url
    drop = {docs_url, redoc_url, app.swagger_ui_oauth2_redirect_url} - {None}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in drop]
    if openapi_url is None or (docs_url is None and redoc_url is None):
        return
    static_path = f"{docs_url or redoc_url}/static"
    title = html.escape(app.title)

    def page(template: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            root = request.scope.get("root_path", "")
            body = template.format(
                title=title,
                static=html.escape(root + static_path),
                openapi=html.escape(root + openapi_url),
            )
            return HTMLResponse(body, headers={"content-security-policy": DOCS_CSP})

        return endpoint

    async def asset(name: str) -> Response:
        path = _ASSETS.get(name)
        if path is None:
            raise HTTPException(404)
        return FileResponse(path, headers={"cache-control": "public, max-age=86400"})

    app.add_api_route(f"{static_path}/{{name}}", asset, include_in_schema=False)
    if docs_url:
        app.add_api_route(docs_url, page(_SWAGGER_PAGE), include_in_schema=False)
    if redoc_url:
        app.add_api_route(redoc_url, page(_REDOC_PAGE), include_in_schema=False)
