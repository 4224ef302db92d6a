"""Interactive docs work offline: every asset is served by the app itself, never a CDN."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.security import OAuth2PasswordBearer

from _app_factory import build_app, serve, settings_for
from app_kernel import init_app_kernel
from app_kernel.auth import UserIdentity, get_current_user, get_optional_user
from app_kernel.settings import FeatureSettings

_ASSET_REF = re.compile(r"""(?:src|href)="([^"]+)\"""")


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    app = build_app(settings_for(tmp_path))
    app.openapi()  # build the schema here, not on the event loop of the test
    return app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as client:
        yield client


@pytest.mark.parametrize(
    ("page", "expected_assets"),
    [
        ("/docs", {"swagger-ui.css", "swagger-ui-bundle.js", "swagger-init.js"}),
        ("/redoc", {"redoc.standalone.js"}),
    ],
)
async def test_page_references_only_local_assets_that_load(
    client: httpx.AsyncClient, page: str, expected_assets: set[str]
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html
    assert "https://" not in html
    refs = _ASSET_REF.findall(html)
    assert refs
    assert all(ref.startswith("/docs/static/") for ref in refs), refs
    assert expected_assets <= {ref.rsplit("/", 1)[1] for ref in refs}
    for ref in refs:
        asset = await client.get(ref)
        assert asset.status_code == 200, ref
        assert asset.content, ref


async def test_swagger_page_points_at_the_openapi_schema(client: httpx.AsyncClient) -> None:
    html = (await client.get("/docs")).text
    match = re.search(r'data-openapi-url="([^"]+)"', html)
    assert match is not None
    schema = await client.get(match.group(1))
    assert schema.status_code == 200
    assert "/api/v1/items/{item_id}" in schema.json()["paths"]


async def test_docs_page_has_no_inline_script(client: httpx.AsyncClient) -> None:
    html = (await client.get("/docs")).text
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []


async def test_docs_page_gets_the_docs_csp(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    csp = docs.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    assert "frame-ancestors 'none'" in csp
    # Only one policy: the docs' own, not the API's added on top.
    assert len(docs.headers.get_list("content-security-policy")) == 1
    api = await client.get("/healthz")
    assert api.headers["content-security-policy"] != csp


async def test_unknown_asset_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs/static/jquery.min.js")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_asset_names_cannot_reach_other_files(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs/static/..%2F..%2Fsettings.py")
    assert response.status_code == 404


@pytest.mark.parametrize("auth_routes", [True, False])
def test_routes_using_the_user_dependencies_list_both_credentials(
    tmp_path: Path, auth_routes: bool
) -> None:
    """The bearer token and the X-API-Key header, on every route that needs a user."""
    app = FastAPI()
    router = APIRouter()

    @router.get("/mine")
    async def mine(user: Annotated[UserIdentity, Depends(get_current_user)]) -> str:
        return user.id

    @router.get("/maybe")
    async def maybe(user: Annotated[UserIdentity | None, Depends(get_optional_user)]) -> bool:
        return user is not None

    @router.get("/open")
    async def open_route() -> bool:
        return True

    app.include_router(router)
    features = FeatureSettings(enable_auth_routes=auth_routes)
    init_app_kernel(app, settings_for(tmp_path, features=features))
    schema = app.openapi()

    both = [{"OAuth2PasswordBearer": []}, {"APIKeyHeader": []}]
    assert schema["paths"]["/mine"]["get"]["security"] == both
    assert schema["paths"]["/maybe"]["get"]["security"] == both
    assert "security" not in schema["paths"]["/open"]["get"]
    schemes = schema["components"]["securitySchemes"]
    assert schemes["APIKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] == "/auth/login"


# Module level: the annotations are strings, resolved against the module's globals.
_partner_oauth = OAuth2PasswordBearer(tokenUrl="/partner/token", scheme_name="PartnerOAuth")


def test_an_app_s_own_oauth2_scheme_keeps_its_token_url(tmp_path: Path) -> None:
    """Only the kernel's scheme points at the kernel's login route."""
    app = FastAPI()
    router = APIRouter()

    @router.get("/partner")
    async def partner(token: Annotated[str, Depends(_partner_oauth)]) -> str:
        return token

    @router.get("/mine")
    async def mine(user: Annotated[UserIdentity, Depends(get_current_user)]) -> str:
        return user.id

    app.include_router(router)
    init_app_kernel(app, settings_for(tmp_path))
    schema = app.openapi()

    schemes = schema["components"]["securitySchemes"]
    assert schemes["PartnerOAuth"]["flows"]["password"]["tokenUrl"] == "/partner/token"
    assert schemes["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] == "/auth/login"
    assert schema["paths"]["/partner"]["get"]["security"] == [{"PartnerOAuth": []}]
