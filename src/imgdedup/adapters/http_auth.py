"""HTTP side of authentication: the bearer header in, 401/403/429 JSON errors out.

Every route is either public (probes, metrics, the API description) or needs a valid
credential whose principal holds the route's role in the route's namespace. Routes no
handler matched (404/405) need a valid credential too, so an anonymous caller learns
nothing from them. Who may do what is decided in `imgdedup.auth`; this module only
reads the header, asks, and answers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from imgdedup.auth import Authenticator, OidcUnavailable, Principal, Role, retry_after_seconds

logger = logging.getLogger("imgdedup.http")

AUTH: web.AppKey[Authenticator] = web.AppKey("imgdedup_auth", Authenticator)
#: The request's principal, for handlers that need to know who calls.
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("imgdedup_principal", Principal)

#: Routes anyone may call: orchestrator probes, Prometheus scrapes (no tenant data: the
#: labels are route templates, verdicts and error codes), and the OpenAPI document.
PUBLIC_ROUTES = frozenset({"healthz", "readyz", "metrics", "openapi"})
#: The role each protected route needs in its `{ns}`.
REQUIRED_ROLE: dict[str, Role] = {
    "check": Role.CHECK,
    "image": Role.CHECK,
    "image_duplicates": Role.CHECK,
    "image_register": Role.REGISTER,
    "image_delete": Role.ADMIN,
    "image_thumbnail": Role.CHECK,
    "images_by_sha": Role.CHECK,
    "similar": Role.CHECK,
    "namespace": Role.CHECK,
    "reviews": Role.REVIEW,
    "image_resolution": Role.REVIEW,
    "image_resolution_undo": Role.REVIEW,
    "namespace_erase": Role.ADMIN,
}
_CHALLENGE = 'Bearer realm="imgdedup"'
_UNAUTHENTICATED_DETAIL = "a valid credential is required: Authorization: Bearer <API key or token>"


def check_route_policies(app: web.Application) -> None:
    """Fail at start-up, not at a request, when a route was added without a policy."""
    for resource in app.router.resources():
        name = resource.name
        if name not in PUBLIC_ROUTES and name not in REQUIRED_ROLE:
            raise RuntimeError(f"route {resource.canonical} ({name!r}) has no access policy in http_auth.py")


def bearer_token(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive), else None."""
    scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _json_error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


def _log_fields(request: web.Request, code: str, status: int) -> dict[str, object]:
    return {
        "namespace": request.match_info.get("ns"),
        "image_id": request.match_info.get("image_id"),
        "method": request.method,
        "path": request.path,
        "error_code": code,
        "http_status": status,
    }


def _unauthenticated(request: web.Request, presented: bool) -> web.Response:
    # RFC 6750: `invalid_token` when a token was sent; no error attribute when none was.
    challenge = _CHALLENGE + (', error="invalid_token"' if presented else "")
    logger.info(
        "unauthenticated: %s", "invalid credential" if presented else "no credential",
        extra=_log_fields(request, "unauthenticated", 401),
    )
    return _json_error(401, "unauthenticated", _UNAUTHENTICATED_DETAIL, {hdrs.WWW_AUTHENTICATE: challenge})


def _forbidden(request: web.Request, principal: Principal, role: Role | None) -> web.Response:
    ns = request.match_info.get("ns")
    logger.info(
        "forbidden: %s lacks %s in this namespace", principal.id, role or "a policy for this route",
        extra={**_log_fields(request, "forbidden", 403), "principal": principal.id},
    )
    where = f" in namespace {ns!r}" if ns is not None else ""
    needed = f"the {role.value!r} role" if role else "access"
    return _json_error(403, "forbidden", f"this credential does not grant {needed}{where}")


def _rate_limited(request: web.Request, principal: Principal, wait: float, rate: float) -> web.Response:
    seconds = retry_after_seconds(wait)
    logger.info(
        "rate limited: %s", principal.id,
        extra={**_log_fields(request, "rate_limited", 429), "principal": principal.id},
    )
    return _json_error(
        429, "rate_limited", f"this credential is over its limit of {rate:g} requests/s; retry in {seconds} s",
        {hdrs.RETRY_AFTER: str(seconds)},
    )


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Runs before any body is read: an unauthenticated upload costs no buffering."""
    auth = request.app[AUTH]
    resource = request.match_info.route.resource
    name = resource.name if resource is not None else None
    if not auth.enabled or name in PUBLIC_ROUTES:
        return await handler(request)
    token = bearer_token(request)
    if token is None:
        return _unauthenticated(request, presented=False)
    try:
        principal = await auth.authenticate(token)
    except OidcUnavailable as exc:
        logger.warning("cannot verify a token: %s", exc, extra=_log_fields(request, "unavailable", 503))
        return _json_error(
            503, "unavailable", "credentials cannot be verified right now; retry shortly",
            {hdrs.RETRY_AFTER: "5"},
        )
    if principal is None:
        return _unauthenticated(request, presented=True)
    wait = auth.limiter.acquire(principal.id)
    if wait > 0:
        return _rate_limited(request, principal, wait, auth.limiter.rate)
    if name is not None:  # a matched route; unmatched ones (404/405) need only the credential
        role = REQUIRED_ROLE.get(name)
        if role is None or not principal.allows(request.match_info.get("ns"), role):
            return _forbidden(request, principal, role)
    request[PRINCIPAL] = principal
    return await handler(request)
