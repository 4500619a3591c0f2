"""The dashboard's routes, added to the API's (api.py): the page and its two assets, the login exchange, and the
JSON the page polls twice a second. Which requests reach these (the token, or a session cookie for GETs under
/ui) is the API's guard's business; /ui/login alone is open, and it checks its code itself.

Every answer carries a strict Content-Security-Policy (scripts and styles from this origin only, no inline
script, no other origin), `nosniff`, no referrer (a login code never leaves in a Referer) and no framing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from importlib import resources

import orjson
from aiohttp import web

from . import views
from .sessions import COOKIE, Logins

PREFIX = "/ui"
LOGIN_PATH = "/ui/login"
CODE_PATH = "/ui/api/login"  # POST, with the token: a one-time login code
SLICE_S = 0.005  # the most work between two hand-backs of the event loop while a page of services is built

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
ASSETS = {"/ui": ("index.html", "text/html"), "/ui/app.js": ("app.js", "text/javascript"),
          "/ui/app.css": ("app.css", "text/css")}


def is_ui_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def page(title: str, text: str, status: int = 200, *, refresh: str | None = None) -> web.Response:
    """A small HTML page (no script) for the login's outcomes and the 401 a browser sees without a session."""
    head = f'<meta http-equiv="refresh" content="0;url={refresh}">' if refresh else ""
    body = (f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>{head}'
            f'<link rel="icon" href="data:,"><link rel="stylesheet" href="/ui/app.css"></head>'
            f'<body class="notice"><h1>{title}</h1><p>{text}</p>'
            "</body></html>")
    return web.Response(status=status, body=body.encode(), content_type="text/html", charset="utf-8",
                        headers=HEADERS)


def unauthorized() -> web.Response:
    return page("ferry dashboard: log in",
                "Run <code>ferry dashboard</code> (add <code>--open</code> to open a browser): it prints a link "
                "that logs this browser in once, for a few hours.", 401)


def _json(body: dict) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=HEADERS)


async def _sliced(items: Iterable[dict]) -> list[dict]:
    """The items, built while handing the event loop back every SLICE_S."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    found = []
    for item in items:
        found.append(item)
        if loop.time() - started >= SLICE_S:
            await asyncio.sleep(0)
            started = loop.time()
    return found


def add_routes(routes: web.RouteTableDef, leader: Callable[[], views.UiLeader], logins: Logins) -> None:
    assets = {path: (_asset(name), kind) for path, (name, kind) in ASSETS.items()}

    for path, (body, kind) in assets.items():
        async def serve(request: web.Request, body=body, kind=kind) -> web.Response:
            return web.Response(body=body, content_type=kind, charset="utf-8", headers=HEADERS)

        routes.get(path)(serve)

    @routes.get("/ui/")
    async def slash(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui", headers=HEADERS)

    @routes.get(LOGIN_PATH)
    async def login(request: web.Request) -> web.Response:
        """The code becomes a session cookie; the page then moves to /ui by itself (a same-site navigation, so
        the SameSite=Strict cookie goes with it even when the link was opened from another site)."""
        if request.method == "HEAD":  # a link preview must not spend the code
            return page("ferry dashboard", "Open this link to log in.")
        session = logins.redeem(request.query.get("code"))
        if session is None:
            return page("ferry dashboard: this link does not log in",
                        "A login link works once, within a minute. Run <code>ferry dashboard</code> again for a "
                        "new one.", 401)
        response = page("ferry dashboard", 'Logged in. <a href="/ui">Open the dashboard</a>.', refresh="/ui")
        response.set_cookie(COOKIE, session, path=PREFIX, httponly=True, samesite="Strict",
                            secure=request.secure, max_age=int(logins.session_ttl_s))
        return response

    @routes.post(CODE_PATH)
    async def login_code(request: web.Request) -> web.Response:
        code = logins.issue_code()
        return _json({"code": code, "path": f"{LOGIN_PATH}?code={code}", "expires_in_s": logins.code_ttl_s})

    @routes.get("/ui/api/services")
    async def services(request: web.Request) -> web.Response:
        try:
            q, offset, limit = views.page_bounds(dict(request.query))
        except ValueError:
            return web.json_response({"error": "offset and limit are numbers"}, status=400)
        source = leader()
        every = source.service_names()
        names = views.matching(every, q)
        await asyncio.sleep(0)
        rows = await _sliced(views.summaries(source, names[offset:offset + limit]))
        return _json({"total": len(every), "matched": len(names), "offset": offset,
                      "limit": limit, "q": q, "services": rows})

    @routes.get("/ui/api/services/{service}")
    async def service(request: web.Request) -> web.Response:
        name = request.match_info["service"]
        try:
            return _json(views.service_detail(leader(), name))
        except KeyError:
            return web.json_response({"error": f"no service {name!r}"}, status=404, headers=HEADERS)

    @routes.get("/ui/api/overview")
    async def overview(request: web.Request) -> web.Response:
        return _json(views.overview(leader()))
