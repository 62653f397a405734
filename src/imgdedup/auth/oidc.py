"""Bearer JWTs from an OpenID Connect issuer, verified against the issuer's published keys.

At start-up the issuer's discovery document (`<issuer>/.well-known/openid-configuration`)
names its JWKS; PyJWT's `PyJWKClient` fetches and caches that key set (refreshed every
`JWKS_CACHE_S`, and at most once per `REFRESH_COOLDOWN_S` when a token names a key id
the cache does not know, e.g. after the issuer rotated its keys).

A token is accepted when its signature verifies with the issuer's key of its `kid`
(asymmetric algorithms only: never `none` or a shared-secret HMAC), `iss` is the issuer,
`aud` contains the audience, and `exp` has not passed (30 s clock leeway). Claims map to
rights:

- namespaces: the claim named by IMGDEDUP_OIDC_NAMESPACES_CLAIM (a list of strings, or
  one space-separated string) of namespace patterns (`shop`, `shop-*`, `*`);
- roles: the claim named by IMGDEDUP_OIDC_ROLES_CLAIM (same forms), plus every
  `imgdedup:<role>` entry of the standard `scope` string (or the `scp` list some
  providers send). Unknown roles and invalid patterns are ignored;
- identity: `sub`, as principal `oidc:<sub>` (logs, request limits).

A valid token without any of these claims authenticates but may do nothing (403).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import jwt
from jwt import PyJWKClient
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError, PyJWKSetError, PyJWTError

from imgdedup.auth.policy import ROLE_NAMES, NamespacePattern, Principal, Role

log = logging.getLogger("imgdedup.auth")

#: Signature algorithms a token may use: asymmetric only, so that only the issuer signs.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
LEEWAY_S = 30
JWKS_CACHE_S = 300
REFRESH_COOLDOWN_S = 30
HTTP_TIMEOUT_S = 10
SCOPE_PREFIX = "imgdedup:"
_MAX_SUBJECT = 255


class OidcUnavailable(Exception):
    """The issuer's discovery document or key set could not be fetched."""


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def _fetch_json(url: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def discover_jwks_uri(issuer: str, timeout: float = HTTP_TIMEOUT_S) -> str:
    """The issuer's `jwks_uri`, from its discovery document (blocking: run in a thread)."""
    url = discovery_url(issuer)
    try:
        document = _fetch_json(url, timeout)
    except (OSError, ValueError) as exc:
        raise OidcUnavailable(f"cannot read the OIDC discovery document {url} ({exc})") from exc
    if not isinstance(document, dict):
        raise OidcUnavailable(f"{url} is not a JSON object")
    # OpenID Connect Discovery 1.0, section 4.3: the document's issuer must be the one
    # asked for, or tokens would be checked against somebody else's keys.
    if document.get("issuer") != issuer:
        raise OidcUnavailable(
            f"{url} names issuer {document.get('issuer')!r}, not {issuer!r} (IMGDEDUP_OIDC_ISSUER "
            "must be exactly the `iss` the provider puts in its tokens)"
        )
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in ("http", "https"):
        raise OidcUnavailable(f"{url} has no http(s) jwks_uri")
    return jwks_uri


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


class OidcVerifier:
    """Verifies bearer JWTs of one issuer for one audience and maps them to principals."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        namespaces_claim: str,
        roles_claim: str,
        *,
        timeout: float = HTTP_TIMEOUT_S,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.namespaces_claim = namespaces_claim
        self.roles_claim = roles_claim
        self._timeout = timeout
        self._jwks: PyJWKClient | None = None

    async def start(self) -> None:
        """Find and fetch the issuer's keys; raise `OidcUnavailable` if that fails."""
        jwks_uri = await asyncio.to_thread(discover_jwks_uri, self.issuer, self._timeout)
        client = PyJWKClient(
            jwks_uri,
            cache_jwk_set=True,
            lifespan=JWKS_CACHE_S,
            timeout=self._timeout,
            cooldown_duration=REFRESH_COOLDOWN_S,
        )
        try:
            await asyncio.to_thread(client.get_signing_keys)
        except PyJWTError as exc:
            raise OidcUnavailable(f"cannot use the issuer's key set {jwks_uri} ({exc})") from exc
        self._jwks = client

    async def verify(self, token: str) -> Principal | None:
        """The principal of a valid token; None if it is not one (the reason is logged).

        Raises `OidcUnavailable` when the key set must be fetched and cannot be.
        """
        if self._jwks is None:
            raise RuntimeError("OidcVerifier.start() was not awaited")
        try:
            # May fetch the key set (cache expired, or an unknown kid): not on the loop.
            key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
        except (PyJWKClientConnectionError, PyJWKSetError) as exc:
            raise OidcUnavailable(f"cannot use the issuer's key set ({exc})") from exc
        except PyJWTError as exc:  # malformed token, unknown kid
            log.info("bearer token refused: %s", _reason(exc))
            return None
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.InvalidTokenError as exc:
            log.info("bearer token refused: %s", _reason(exc))
            return None
        return self.principal_from(claims)

    def principal_from(self, claims: dict[str, Any]) -> Principal | None:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            return None
        patterns = list(_patterns(_strings(claims.get(self.namespaces_claim))))
        granted = set(_strings(claims.get(self.roles_claim)))
        for scope in _strings(claims.get("scope")) + _strings(claims.get("scp")):
            if scope.startswith(SCOPE_PREFIX):
                granted.add(scope.removeprefix(SCOPE_PREFIX))
        roles = [Role(name) for name in sorted(granted) if name in ROLE_NAMES]
        # Printable characters only: the id goes into log lines.
        safe = "".join(ch for ch in subject[:_MAX_SUBJECT] if ch.isprintable())
        return Principal.of(f"oidc:{safe}", patterns, roles)


def _patterns(texts: Iterable[str]) -> Iterable[NamespacePattern]:
    for text in texts:
        try:
            yield NamespacePattern.parse(text)
        except ValueError:
            log.info("token names an invalid namespace pattern %r: ignored", text[:80])


def _reason(exc: Exception) -> str:
    """A category for the log, never the token or its claims."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim!r}"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm not allowed"
    if isinstance(exc, PyJWKClientError):
        return "unknown signing key id"
    return "malformed token"
