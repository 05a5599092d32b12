"""The dashboard page at `/` and its static files: served without a token, each file the page loads is there."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from api.routes.dashboard import STATIC


async def test_the_page_is_served_without_a_token_and_only_runs_its_own_scripts(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>taskmill dashboard</title>" in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"


def _local_references(html: str) -> set[str]:
    return set(re.findall(r'(?:src|href)="(/static/[^"]+)"', html))


def _imports(js: str) -> set[str]:
    return set(re.findall(r'^import [^;]*? from "\./([^"]+)";', js, flags=re.MULTILINE | re.DOTALL))


async def test_every_file_the_page_and_its_modules_load_is_served_with_its_type(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    wanted = _local_references(page)
    assert {"/static/style.css", "/static/js/app.js"} <= wanted
    seen: set[str] = set()
    while wanted - seen:
        path = sorted(wanted - seen)[0]
        seen.add(path)
        response = await client.get(path)
        assert response.status_code == 200, path
        if path.endswith(".js"):
            # ES modules load only with a JavaScript type.
            assert response.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
            folder = path.rsplit("/", 1)[0]
            wanted |= {f"{folder}/{name}" for name in _imports(response.text)}
        else:
            assert response.headers["content-type"].startswith("text/css")
    modules = {p for p in seen if p.endswith(".js")}
    assert modules == {f"/static/js/{p.name}" for p in (STATIC / "js").glob("*.js")}, "a module nothing imports"


async def test_a_missing_static_file_is_a_404_and_the_tree_cannot_be_left(client: httpx.AsyncClient) -> None:
    assert (await client.get("/static/nope.js")).status_code == 404
    # ("/static/../app.py" would be normalized by the client to "/app.py" before it left: encoded, it reaches them.)
    assert (await client.get("/static/%2e%2e/app.py")).status_code == 404


def test_the_page_renders_data_as_text_never_as_html() -> None:
    # Names and outputs may hold "<script>": the scripts build text nodes, never parse strings as HTML.
    for path in Path(STATIC).rglob("*.js"):
        source = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{path.name} uses {sink}"


async def test_the_page_is_left_out_of_the_openapi_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths and "/schedule-preview" in paths and "/runs" in paths
