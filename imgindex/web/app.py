"""The web page and its JSON API (FastAPI): ``/`` serves the page (plain HTML, CSS and JS
modules from ``imgindex/web/static``, nothing from elsewhere), ``/api/...`` the library in the
shapes of the CLI's ``--json``, ``/api/openapi.json`` the API's description.

Security: a session cookie (signed, HttpOnly, SameSite=Strict) for every browser; with a
password, every ``/api`` call but the login needs an authenticated session; every change
(POST) needs the session's CSRF token in ``X-CSRF-Token``; a read-only server refuses every
change. Pictures are asked for by image id only, never by a path; uploads are read no
further than their cap and never written to disk. On a loopback address, requests naming
another host are refused (DNS rebinding).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

from fastapi import Body, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from imgindex import names
from imgindex.errors import ImgIndexError, NotInLibrary
from imgindex.httpbody import read_body
from imgindex.web import thumbs
from imgindex.web.auth import Signer, verify_password
from imgindex.web.data import PAGE_MAX, WebLibrary

log = logging.getLogger(__name__)

COOKIE = "imgindex_session"
CSRF_HEADER = "x-csrf-token"
MAX_UPLOAD = 32 * 1024 * 1024
NAME_MAX = 200
STATIC = {  # the page's files: served by name from this table only
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
ImageId = Annotated[int, Path(ge=1, le=2**63 - 1, description="An image's id.")]
ClusterId = Annotated[int, Path(ge=1, le=2**31 - 1, description="A cluster's id.")]
Json = dict[str, Any]


@dataclass(frozen=True)
class Policy:
    """``password``: the stored hash (None: no login); ``read_only``: refuse every change;
    ``loopback``: only requests to a loopback host name are answered."""

    password: str | None
    read_only: bool
    loopback: bool


def create_app(web: WebLibrary, signer: Signer, policy: Policy) -> FastAPI:
    app = FastAPI(
        title="imgindex",
        description="The library's clusters, neighbours, search by photo and duplicates.",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code >= 400 and exc.status_code not in (401, 404):
            client = request.client.host if request.client else "?"
            log.info("%s %s from %s: %d %s", request.method, request.url.path, client,
                     exc.status_code, exc.detail)  # fmt: skip
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[..., Any]) -> Any:
        try:
            session = _check(request, signer, policy)
        except HTTPException as exc:
            return await refused(request, exc)
        request.state.session = session
        response = await call_next(request)
        if request.cookies.get(COOKIE) is None or getattr(request.state, "new_cookie", None):
            _set_cookie(response, signer.cookie(request.state.session), request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        return response

    # --- the page -----------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return _static("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        return _static(name)

    # --- session ------------------------------------------------------------------------------

    @app.get("/api/session", tags=["session"])
    def session(request: Request) -> Json:
        """The session's state and its CSRF token (changes send it in ``X-CSRF-Token``)."""
        s = request.state.session
        return {
            "authenticated": s.authenticated or policy.password is None,
            "login_required": policy.password is not None,
            "read_only": policy.read_only,
            "csrf": signer.csrf(s),
        }

    @app.post("/api/login", tags=["session"])
    def login(
        request: Request, password: Annotated[str, Body(embed=True, max_length=1024)]
    ) -> Json:
        """Log in with the library's web password (``imgindex config http_password``)."""
        if policy.password is None:
            raise HTTPException(409, "this server has no password: nothing to log in to")
        if not verify_password(password, policy.password):
            raise HTTPException(403, "wrong password")
        request.state.session = signer.new(authenticated=True)  # a fresh id: no fixation
        request.state.new_cookie = True
        return {"authenticated": True, "csrf": signer.csrf(request.state.session)}

    @app.post("/api/logout", tags=["session"])
    def logout(request: Request) -> Json:
        request.state.session = signer.new()
        request.state.new_cookie = True
        return {"authenticated": False, "csrf": signer.csrf(request.state.session)}

    # --- reads --------------------------------------------------------------------------------

    @app.get("/api/status", tags=["library"])
    async def status() -> Json:
        """``imgindex status --json``: counts, daemon state, queue."""
        return await _call(web.overview)

    @app.get("/api/clusters", tags=["clusters"])
    async def clusters() -> list[Json]:
        """``imgindex clusters --json``, with representatives' ids and each cluster's title."""
        return await _call(web.clusters)

    @app.get("/api/clusters/{cluster_id}", tags=["clusters"])
    async def cluster(
        cluster_id: ClusterId,
        offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
        limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
    ) -> Json:
        """``imgindex clusters show ID --json``, one page of members (nearest the centre
        first)."""
        return await _call(web.cluster, cluster_id, offset, limit)

    @app.get("/api/images/{image_id}", tags=["images"])
    async def image(image_id: ImageId) -> Json:
        """One image: file, state and failure reason, cluster, 20 nearest neighbours with
        scores, duplicates."""
        return await _call(web.image, image_id)

    @app.get(
        "/api/images/{image_id}/thumb",
        tags=["images"],
        responses={200: {"content": {"image/webp": {}}}, 304: {"description": "unchanged"}},
    )
    async def thumb(request: Request, image_id: ImageId) -> Response:
        """The image's thumbnail (WebP, 256 px), cached, with an ETag."""
        return await _picture(request, image_id, "thumb")

    @app.get(
        "/api/images/{image_id}/preview",
        tags=["images"],
        responses={200: {"content": {"image/webp": {}}}, 304: {"description": "unchanged"}},
    )
    async def preview(request: Request, image_id: ImageId) -> Response:
        """The image's preview (WebP, 1280 px), cached, with an ETag."""
        return await _picture(request, image_id, "preview")

    @app.get("/api/duplicates", tags=["duplicates"])
    async def duplicates() -> Json:
        """Duplicate groups with each member's size, dimensions, date taken and path, and
        the keeper the library's policy (``keep``) picks."""
        return await _call(web.duplicates)

    @app.get("/api/map", tags=["library"])
    async def library_map() -> Json:
        """The report's map: ids, x, y (0-1) and cluster of every indexed image."""
        return await _call(web.map)

    @app.post(
        "/api/search",
        tags=["images"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def search(request: Request) -> list[Json]:
        """``imgindex similar --json`` for an uploaded photo (the request's body, at most
        32 MiB): answered by the loaded model; kept in memory, never written."""
        _change(request, signer, policy, writes=False)
        data = await read_body(request, MAX_UPLOAD)
        if not data:
            raise HTTPException(400, "no photo: send its bytes as the request body")
        name = names.printable(request.headers.get("x-file-name", "upload"))[:NAME_MAX]
        return await _call(web.search, name, data)

    # --- changes ------------------------------------------------------------------------------

    @app.post("/api/clusters/{cluster_id}/name", tags=["clusters"])
    async def rename(
        request: Request,
        cluster_id: ClusterId,
        name: Annotated[str | None, Body(embed=True, max_length=NAME_MAX)] = None,
    ) -> Json:
        """Name a cluster (``imgindex clusters name``); an empty or null name clears it."""
        _change(request, signer, policy)
        clean = (name or "").strip() or None
        if clean is not None and not clean.isprintable():
            raise HTTPException(400, "a name is one line of printable characters")
        return await _call(web.rename, cluster_id, clean)

    @app.post("/api/duplicates/resolve", tags=["duplicates"])
    async def resolve(
        request: Request, keep: Annotated[int, Body(embed=True, ge=1, le=2**63 - 1)]
    ) -> Json:
        """Keep image ``keep``; move the others of its group into the library's quarantine
        folder (journaled; nothing deleted)."""
        _change(request, signer, policy)
        return await _call(web.resolve, keep)

    @app.post("/api/duplicates/undo", tags=["duplicates"])
    async def undo(request: Request) -> list[Json]:
        """Put back the files the last resolve set aside."""
        _change(request, signer, policy)
        return await _call(web.undo)

    async def _picture(request: Request, image_id: int, kind: str) -> Response:
        path, mtime_ns = await _call(web.picture_source, image_id)
        tag = thumbs.etag(image_id, kind, mtime_ns)
        headers = {"ETag": tag, "Cache-Control": "private, max-age=86400"}
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers=headers)
        try:
            data = await run_in_threadpool(
                thumbs.picture, web.lib.paths.root, image_id, path, kind, mtime_ns
            )
        except thumbs.NoPicture as exc:
            raise HTTPException(404, f"image {image_id} cannot be shown: {exc}") from None
        return Response(data, media_type="image/webp", headers=headers)

    return app


def _check(request: Request, signer: Signer, policy: Policy) -> Any:
    """The request's session (a new one when it has none); refuses another host name on a
    loopback server, and API calls without a login when there is a password."""
    if policy.loopback:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0]
        if host and host not in LOOPBACK_HOSTS:
            raise HTTPException(421, f"this server answers for 127.0.0.1 only, not {host[:60]}")
    session = signer.read(request.cookies.get(COOKIE))
    if session is None:
        session = signer.new()
        request.state.new_cookie = True
    path = request.url.path
    open_paths = ("/api/session", "/api/login", "/api/openapi.json")
    if (
        policy.password is not None
        and not session.authenticated
        and path.startswith("/api/")
        and path not in open_paths
    ):
        raise HTTPException(401, "log in first")
    return session


def _change(request: Request, signer: Signer, policy: Policy, *, writes: bool = True) -> None:
    """A request that acts (a change, or an upload): the session's CSRF token, and no
    changes on a read-only server."""
    if writes and policy.read_only:
        raise HTTPException(403, "this server is read-only (--read-only): nothing can be changed")
    if not signer.csrf_ok(request.state.session, request.headers.get(CSRF_HEADER)):
        raise HTTPException(403, "missing or wrong CSRF token (reload the page)")


def _set_cookie(response: Response, value: str, request: Request) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=30 * 86400,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def _static(name: str) -> Response:
    data = resources.files("imgindex.web").joinpath("static").joinpath(name).read_bytes()
    return Response(data, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker thread; the library's errors as 4xx answers."""
    try:
        return await run_in_threadpool(fn, *args)
    except NotInLibrary as exc:
        raise HTTPException(404, str(exc)) from None
    except ImgIndexError as exc:
        raise HTTPException(400, names.printable(str(exc))) from None
