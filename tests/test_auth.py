"""Authentication and tenancy over real HTTP: API keys, roles, namespaces, request limits,
OIDC tokens against a JWKS served on 127.0.0.1, the keys file and the `keys` command.

The app under test is the real one (`create_http_app` with a `Deduplicator` over the
in-memory index and a thread hasher): a request that passes authorisation reaches the
real handler, which answers 400/404 for the empty or unknown images sent here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from auth_helpers import ADMIN, bearer, key_store, make_keys, write_keys_file
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from helpers import StartClient
from imgdedup_devtools.demo import try_lines
from imgdedup_devtools.keys import throwaway_key

from imgdedup.adapters import http_auth
from imgdedup.adapters.http_api import create_http_app
from imgdedup.app import Service
from imgdedup.auth import (
    Authenticator,
    KeysFileError,
    NamespacePattern,
    OidcUnavailable,
    OidcVerifier,
    Principal,
    RateLimiter,
    Role,
    build_authenticator,
    load_keys_file,
    oidc,
    parse_keys,
)
from imgdedup.config import ConfigError, Settings
from imgdedup.decisions.deduplicator import Deduplicator
from imgdedup.decisions.rules import Policy
from imgdedup.errors import StartupError
from imgdedup.fingerprint import ImageLimits
from imgdedup.hasher import Hasher
from imgdedup.index.memory import MemoryIndex
from imgdedup.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
NS = "shop"
#: Every protected operation: (method, path in namespace `ns`, route name).
OPERATIONS = [
    ("POST", "/v1/namespaces/{ns}/check", "check"),
    ("GET", "/v1/namespaces/{ns}/images/a.jpg", "image"),
    ("GET", "/v1/namespaces/{ns}/images/a.jpg/duplicates", "image_duplicates"),
    ("POST", "/v1/namespaces/{ns}/images/a.jpg", "image_register"),
    ("DELETE", "/v1/namespaces/{ns}/images/a.jpg", "image_delete"),
    ("GET", "/v1/namespaces/{ns}/images/a.jpg/thumbnail", "image_thumbnail"),
    ("GET", "/v1/namespaces/{ns}/images?sha256=" + "0" * 64, "images_by_sha"),
    ("GET", "/v1/namespaces/{ns}/similar?phash=ff", "similar"),
    ("GET", "/v1/namespaces/{ns}", "namespace"),
    ("GET", "/v1/namespaces/{ns}/reviews", "reviews"),
    ("POST", "/v1/namespaces/{ns}/images/a.jpg/resolution", "image_resolution"),
    ("POST", "/v1/namespaces/{ns}/images/a.jpg/resolution/undo", "image_resolution_undo"),
    ("DELETE", "/v1/namespaces/{ns}", "namespace_erase"),
]
_READ = {"image_thumbnail", "images_by_sha", "similar", "namespace"}
_REVIEW = {"reviews", "image_resolution", "image_resolution_undo"}
PUBLIC = ["/healthz", "/readyz", "/metrics", "/openapi.json"]
#: Which operations each granted role may call.
ALLOWED = {
    "check": {"check", "image", "image_duplicates"} | _READ,
    "review": {"check", "image", "image_duplicates"} | _READ | _REVIEW,
    "register": {"check", "image", "image_duplicates", "image_register"} | _READ,
    "admin": {"check", "image", "image_duplicates", "image_register", "image_delete", "namespace_erase"}
    | _READ | _REVIEW,
}


async def _ready() -> dict[str, str]:
    return {"index": "ok"}


@pytest.fixture
async def dedup() -> AsyncIterator[Deduplicator]:
    settings = Settings(max_image_bytes=200_000)
    hasher = Hasher(ImageLimits(settings.max_image_bytes, settings.max_image_pixels), workers=1, use_threads=True)
    await hasher.start()
    yield Deduplicator(MemoryIndex(), hasher, Policy(8, 12), Metrics(), max_in_flight=4)
    await hasher.close()


AppClient = Callable[[Authenticator], Awaitable[TestClient]]


@pytest.fixture
def app_client(dedup: Deduplicator, start_client: StartClient) -> AppClient:
    """A client (no default credential) of the real app with the given authenticator."""

    async def make(auth: Authenticator) -> TestClient:
        return await start_client(create_http_app(dedup, Metrics(), Settings(max_image_bytes=200_000), _ready, auth))

    return make


async def call(client: TestClient, method: str, path: str, token: str | None = None, **kwargs: Any):
    headers = bearer(token) if token else {}
    async with client.request(method, path, headers=headers, data=b"", **kwargs) as response:
        return response.status, await response.json(), response.headers


# --- 401: no or invalid credential ---------------------------------------------------------


async def test_anonymous_calls_get_401_on_every_protected_route(app_client: AppClient) -> None:
    store, _ = key_store()
    client = await app_client(Authenticator.with_keys(store))
    for method, path, _name in OPERATIONS:
        status, body, headers = await call(client, method, path.format(ns=NS))
        assert status == 401, (method, path)
        assert body == {"error": "unauthenticated", "detail": http_auth._UNAUTHENTICATED_DETAIL}
        assert headers["WWW-Authenticate"] == 'Bearer realm="imgdedup"'
    # Paths no route serves need a credential too: an anonymous caller learns nothing.
    for method, path in (("GET", "/v1/nowhere"), ("PUT", f"/v1/namespaces/{NS}/check")):
        assert (await call(client, method, path))[0] == 401


async def test_every_served_route_is_public_or_protected(app_client: AppClient) -> None:
    client = await app_client(Authenticator.disabled())
    names = {resource.name for resource in client.app.router.resources()}
    assert names == http_auth.PUBLIC_ROUTES | set(http_auth.REQUIRED_ROLE)
    assert {name for _m, _p, name in OPERATIONS} == set(http_auth.REQUIRED_ROLE)
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/new", handler, name="forgotten")
    with pytest.raises(RuntimeError, match="no access policy"):
        http_auth.check_route_policies(app)


async def test_public_routes_need_no_credential(app_client: AppClient) -> None:
    store, _ = key_store()
    client = await app_client(Authenticator.with_keys(store))
    for path in PUBLIC:
        async with client.get(path) as response:
            assert response.status == 200, path


async def test_invalid_credentials_all_get_the_same_401(app_client: AppClient) -> None:
    """Unknown, altered, malformed or wrong-scheme credentials are indistinguishable."""
    store, tokens = key_store()
    token = tokens[ADMIN[0]]
    client = await app_client(Authenticator.with_keys(store))
    path = f"/v1/namespaces/{NS}/images/a.jpg"
    answers = []
    for header in (
        f"Bearer imgdedup_{'A' * 43}",  # well formed, unknown
        f"Bearer {token[:-1]}{'B' if token[-1] != 'B' else 'C'}",  # one character changed
        "Bearer not-a-token",
        "Bearer a.b.c",  # JWT-shaped while no issuer is configured
        f"bearer {token}x",
    ):
        async with client.get(path, headers={"Authorization": header}) as response:
            answers.append((response.status, await response.json(), response.headers["WWW-Authenticate"]))
    assert len(set(map(json.dumps, answers))) == 1
    assert answers[0][0] == 401 and answers[0][2] == 'Bearer realm="imgdedup", error="invalid_token"'
    for header in (f"Basic {token}", f"Token {token}", "Bearer ", token):
        async with client.get(path, headers={"Authorization": header}) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="imgdedup"'
    # The scheme is case-insensitive (RFC 7235).
    async with client.get(path, headers={"Authorization": f"bEaReR {token}"}) as response:
        assert response.status == 404


async def test_unauthenticated_upload_is_refused_before_its_body_is_read(app_client: AppClient) -> None:
    """A huge declared body gets its 401 without the server waiting for the bytes."""
    store, _ = key_store()
    client = await app_client(Authenticator.with_keys(store))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(
            f"POST /v1/namespaces/{NS}/images/big.jpg HTTP/1.1\r\nHost: test\r\n"
            f"Content-Type: image/jpeg\r\nContent-Length: {10**9}\r\n\r\n".encode() + b"\xff\xd8\xff"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        assert head.split(b" ", 2)[1] == b"401"
    finally:
        writer.close()


async def test_openapi_documents_the_security_of_every_operation(app_client: AppClient) -> None:
    """Bearer security on exactly the protected operations, with their 401/403/429."""
    client = await app_client(Authenticator.disabled())
    async with client.get("/openapi.json") as response:
        doc = await response.json()
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    route_names = {
        (resource.canonical, route.method.lower()): resource.name
        for resource in client.app.router.resources() for route in resource if route.method != "HEAD"
    }
    codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["description"]
    for code in ("unauthenticated (401)", "forbidden (403)", "rate_limited (429)"):
        assert code in codes
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            name = route_names[(path, method)]
            security = operation.get("security", doc.get("security"))
            if name in http_auth.PUBLIC_ROUTES:
                assert security == [], (path, method)
                continue
            assert security == [{"bearer": []}], (path, method)
            assert {"401", "403", "429"} <= set(operation["responses"]), (path, method)
            role = http_auth.REQUIRED_ROLE[name].value
            assert f"Needs the `{role}` role" in operation["description"], (path, method)
    responses = doc["components"]["responses"]
    assert "WWW-Authenticate" in responses["Unauthorized"]["headers"]
    assert "Retry-After" in responses["TooManyRequests"]["headers"]


# --- 403: roles and namespaces ----------------------------------------------------------


async def test_role_matrix(app_client: AppClient) -> None:
    store, tokens = key_store(*[(f"k-{role}", [NS], [role]) for role in ALLOWED])
    client = await app_client(Authenticator.with_keys(store))
    for role, allowed in ALLOWED.items():
        for method, path, name in OPERATIONS:
            status, body, _ = await call(client, method, path.format(ns=NS), tokens[f"k-{role}"])
            if name in allowed:
                # Past authorisation, the handler answers: empty body 400, unknown image
                # 404; the tenant-wide reads (and an erasure) of an empty namespace 200.
                expected = (200,) if name in _READ | {"reviews", "namespace_erase"} and name != "image_thumbnail" else (400, 404)
                assert status in expected, (role, name, status, body)
            else:
                assert status == 403, (role, name, status)
                assert body["error"] == "forbidden"
                assert f"'{http_auth.REQUIRED_ROLE[name].value}' role" in body["detail"]


async def test_wrong_namespace_is_forbidden_and_prefixes_match(app_client: AppClient) -> None:
    store, tokens = key_store(
        ("exact", [NS], ["admin"]),
        ("prefix", ["shop-*"], ["admin"]),
        ("everything", ["*"], ["check"]),
    )
    client = await app_client(Authenticator.with_keys(store))
    image = "/v1/namespaces/{ns}/images/a.jpg"
    expectations = {
        ("exact", "shop"): 404, ("exact", "shop-eu"): 403, ("exact", "other"): 403,
        ("prefix", "shop-eu"): 404, ("prefix", "shop-"): 404, ("prefix", "shop"): 403,
        ("prefix", "shopx"): 403, ("prefix", "other"): 403,
        ("everything", "shop"): 404, ("everything", "anything-at-all"): 404,
    }
    for (key, ns), expected in expectations.items():
        status, body, _ = await call(client, "GET", image.format(ns=ns), tokens[key])
        assert status == expected, (key, ns, status, body)
        if status == 403:
            assert body == {"error": "forbidden", "detail": f"this credential does not grant the 'check' role in namespace {ns!r}"}
    # A key may not delete in a namespace it may read in, without admin.
    status, _, _ = await call(client, "DELETE", image.format(ns="shop"), tokens["everything"])
    assert status == 403


def test_namespace_patterns() -> None:
    assert NamespacePattern.parse("shop-*").matches("shop-eu")
    assert not NamespacePattern.parse("shop-*").matches("shop")
    assert NamespacePattern.parse("*").matches("x")
    assert not NamespacePattern.parse("shop").matches("shop2")
    for bad in ("*shop", "sh*p", "shop**", "", "a b", "x" * 65, "ns/1"):
        with pytest.raises(ValueError):
            NamespacePattern.parse(bad)
    principal = Principal.of("p", [NamespacePattern("a")], [Role.REGISTER])
    assert principal.roles == {Role.REGISTER, Role.CHECK}
    assert principal.allows("a", Role.CHECK) and not principal.allows("a", Role.ADMIN)
    assert not principal.allows("b", Role.CHECK)


# --- request limits ---------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after_per_key(app_client: AppClient) -> None:
    store, tokens = key_store(("busy", [NS], ["check"]), ("quiet", [NS], ["check"]))
    # Two requests at once, then one per 1000 s: the third comes far too soon.
    client = await app_client(Authenticator.with_keys(store, rate=0.001, burst=2))
    path = f"/v1/namespaces/{NS}/images/a.jpg"
    assert [(await call(client, "GET", path, tokens["busy"]))[0] for _ in range(2)] == [404, 404]
    status, body, headers = await call(client, "GET", path, tokens["busy"])
    assert status == 429 and body["error"] == "rate_limited"
    assert 900 <= int(headers["Retry-After"]) <= 1000
    # Another key has its own bucket; public routes are never limited.
    assert (await call(client, "GET", path, tokens["quiet"]))[0] == 404
    async with client.get("/healthz") as response:
        assert response.status == 200


def test_token_bucket_refills_and_stays_bounded() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, max_buckets=2, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)  # one token per 0.5 s
    now[0] = 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(0.5)
    now[0] = 100.0
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # refilled to the burst only
    assert limiter.acquire("a") > 0
    limiter.acquire("b")
    limiter.acquire("c")  # evicts the least recently seen bucket ("a")
    assert len(limiter) == 2
    assert RateLimiter(rate=0, burst=1).acquire("x") == 0.0  # 0 = unlimited


# --- the keys file ----------------------------------------------------------------------


def test_keys_file_problems_are_all_listed(tmp_path: Path) -> None:
    document, tokens = make_keys(("good", [NS], ["check"]), ("twin", [NS], ["check"]))
    good, twin = document["keys"]  # type: ignore[index]
    entries = [
        good,
        {**twin, "sha256": good["sha256"]},  # the same token twice
        {**twin, "name": "good"},  # a name twice
        {"name": "bad roles", "sha256": "0" * 64, "namespaces": ["*x"], "roles": ["writer"], "colour": "red"},
        {"name": "clear", "sha256": tokens["good"], "namespaces": [], "roles": []},
        {"name": "missing"},
        "not an object",
    ]
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": entries}))
    with pytest.raises(KeysFileError) as info:
        load_keys_file(str(path))
    problems = info.value.problems
    expected = [
        "keys[1] (name 'twin'): same sha256 as keys[0]",
        "keys[2] (name 'good'): name already used by keys[0]",
        "keys[3] (name 'bad roles'): unknown field(s) 'colour'",
        "keys[3] (name 'bad roles'): name 'bad roles' must be",
        "keys[3] (name 'bad roles'): namespaces: '*x' is neither",
        "keys[3] (name 'bad roles'): roles: unknown role 'writer'",
        "keys[4] (name 'clear'): sha256 must be 64 lowercase hex digits",
        "keys[4] (name 'clear'): namespaces must be a non-empty list",
        "keys[4] (name 'clear'): roles must be a non-empty list",
        "keys[5] (name 'missing'): missing 'sha256'",
        "keys[6]: must be an object",
    ]
    for fragment in expected:
        assert any(fragment in problem for problem in problems), (fragment, problems)
    assert all(problem.startswith(f"IMGDEDUP_API_KEYS_FILE={path}: ") for problem in problems)
    assert tokens["good"] not in str(info.value).replace(f"{tokens['good']!r}", "")  # never echoes a value back
    for text, fragment in (
        ("{", "not valid JSON (line 1"),
        ("[]", 'one field, "keys"'),
        ('{"keys": []}', "defines no key"),
    ):
        path.write_text(text)
        with pytest.raises(KeysFileError) as info:
            load_keys_file(str(path))
        assert fragment in str(info.value)
    with pytest.raises(KeysFileError, match="cannot read it"):
        load_keys_file(str(tmp_path / "absent.json"))


def test_keys_file_stores_no_token_and_lookup_needs_the_exact_token() -> None:
    document, tokens = make_keys(("a", [NS], ["check"]))
    text = json.dumps(document)
    assert tokens["a"] not in text
    store = parse_keys(document, "test")
    principal = store.lookup(tokens["a"])
    assert principal is not None and principal.id == "key:a"
    assert store.lookup(tokens["a"] + "x") is None
    assert store.lookup(tokens["a"].upper()) is None


# --- OIDC -------------------------------------------------------------------------------


class Issuer:
    """An OpenID provider on 127.0.0.1: discovery document, JWKS, and token signing."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.published: list[str] = []
        self.jwks_fetches = 0
        self.base = ""
        self._runner: web.AppRunner | None = None

    def add_key(self, kid: str, kind: str = "RSA", publish: bool = True) -> None:
        if kind == "RSA":
            self.keys[kid] = (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
        else:
            self.keys[kid] = (ec.generate_private_key(ec.SECP256R1()), "ES256")
        if publish:
            self.published.append(kid)

    def jwk(self, kid: str) -> dict[str, Any]:
        private, alg = self.keys[kid]
        algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
        return {**algorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid, "use": "sig", "alg": alg}

    async def start(self) -> None:
        async def discovery(request: web.Request) -> web.Response:
            return web.json_response({"issuer": self.base, "jwks_uri": f"{self.base}/jwks"})

        async def jwks(request: web.Request) -> web.Response:
            self.jwks_fetches += 1
            return web.json_response({"keys": [self.jwk(kid) for kid in self.published]})

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", jwks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def token(self, kid: str = "k1", *, expires_in: float = 300, audience: str = "imgdedup",
              issuer: str | None = None, algorithm: str | None = None, **claims: Any) -> str:
        private, alg = self.keys[kid]
        now = int(time.time())
        payload = {"iss": issuer or self.base, "aud": audience, "sub": "user-1", "iat": now,
                   "exp": now + int(expires_in), **claims}
        return jwt.encode(payload, private, algorithm=algorithm or alg, headers={"kid": kid})


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    provider = Issuer()
    provider.add_key("k1")
    provider.add_key("k2", kind="EC")
    await provider.start()
    yield provider
    await provider.stop()


async def oidc_auth(issuer: Issuer, **settings: Any) -> Authenticator:
    values = {"oidc_issuer": issuer.base, "oidc_audience": "imgdedup", **settings}
    auth = build_authenticator(Settings(**values))
    await auth.start()
    return auth


async def test_oidc_tokens_accepted_and_mapped_to_namespaces_and_roles(issuer: Issuer, app_client: AppClient) -> None:
    client = await app_client(await oidc_auth(issuer))
    image = f"/v1/namespaces/{NS}/images/a.jpg"
    reader = issuer.token(imgdedup_namespaces=["shop", "eu-*"], imgdedup_roles=["check"])
    assert (await call(client, "GET", image, reader))[0] == 404
    assert (await call(client, "GET", "/v1/namespaces/eu-1/images/a.jpg", reader))[0] == 404
    assert (await call(client, "GET", "/v1/namespaces/us/images/a.jpg", reader))[0] == 403
    assert (await call(client, "DELETE", image, reader))[0] == 403
    # EC keys too; roles from a space-separated claim and from `imgdedup:<role>` scopes.
    admin = issuer.token("k2", imgdedup_namespaces="shop", scope="openid imgdedup:admin")
    assert (await call(client, "DELETE", image, admin))[0] == 404
    # Valid, but without any imgdedup claim: authenticated, allowed nothing.
    assert (await call(client, "GET", image, issuer.token()))[0] == 403
    # The key set was fetched once, at start-up, and served from the cache since.
    assert issuer.jwks_fetches == 1


async def test_oidc_claim_names_are_configurable(issuer: Issuer, app_client: AppClient) -> None:
    auth = await oidc_auth(issuer, oidc_namespaces_claim="https://example.org/ns",
                           oidc_roles_claim="https://example.org/roles")
    client = await app_client(auth)
    token = issuer.token(**{"https://example.org/ns": ["shop"], "https://example.org/roles": ["register"]})
    assert (await call(client, "POST", f"/v1/namespaces/{NS}/images/a.jpg", token))[0] == 400  # empty body


async def test_oidc_rejects_expired_foreign_and_unknown_tokens(
    issuer: Issuer, app_client: AppClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = await app_client(await oidc_auth(issuer))
    rights = {"imgdedup_namespaces": ["*"], "imgdedup_roles": ["admin"]}
    issuer.add_key("unpublished", publish=False)
    bad = {
        "expired": issuer.token(expires_in=-120, **rights),
        "wrong audience": issuer.token(audience="another-app", **rights),
        "wrong issuer": issuer.token(issuer="https://evil.example", **rights),
        "unknown signing key id": issuer.token("unpublished", **rights),
        "missing claim 'sub'": jwt.encode(
            {"iss": issuer.base, "aud": "imgdedup", "exp": int(time.time()) + 300, **rights},
            issuer.keys["k1"][0], algorithm="RS256", headers={"kid": "k1"},
        ),
        "bad signature": issuer.token(**rights)[:-4] + "AAAA",
    }
    caplog.set_level(logging.INFO, logger="imgdedup.auth")
    for reason, token in bad.items():
        caplog.clear()
        status, body, headers = await call(client, "GET", f"/v1/namespaces/{NS}/images/a.jpg", token)
        assert status == 401 and body["error"] == "unauthenticated", reason
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert any(reason in record.getMessage() for record in caplog.records), (reason, caplog.text)
        assert token not in caplog.text
    # An unknown kid within the refresh cool-down does not make the service refetch the keys.
    assert issuer.jwks_fetches == 1


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


async def test_oidc_refuses_symmetric_and_unsigned_tokens(issuer: Issuer, app_client: AppClient) -> None:
    from cryptography.hazmat.primitives import serialization

    client = await app_client(await oidc_auth(issuer))
    claims = {"iss": issuer.base, "aud": "imgdedup", "sub": "x", "exp": int(time.time()) + 300,
              "imgdedup_namespaces": ["*"], "imgdedup_roles": ["admin"]}
    public_pem = issuer.keys["k1"][0].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Algorithm confusion: the issuer's public key used as an HMAC secret (made by hand:
    # PyJWT itself refuses to sign so).
    signing_input = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"})) + "." + _b64(json.dumps(claims))
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    hmac_token = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"})
    for token in (hmac_token, unsigned):
        assert (await call(client, "DELETE", f"/v1/namespaces/{NS}/images/a.jpg", token))[0] == 401


async def test_oidc_rotated_key_is_fetched_once_the_cooldown_allows(
    issuer: Issuer, app_client: AppClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oidc, "REFRESH_COOLDOWN_S", 0)
    client = await app_client(await oidc_auth(issuer))
    issuer.add_key("rotated")  # published after the service fetched the set
    token = issuer.token("rotated", imgdedup_namespaces=["*"], imgdedup_roles=["check"])
    assert (await call(client, "GET", f"/v1/namespaces/{NS}/images/a.jpg", token))[0] == 404
    assert issuer.jwks_fetches == 2


async def test_oidc_start_fails_clearly(issuer: Issuer) -> None:
    verifier = OidcVerifier(issuer.base + "/other", "imgdedup", "ns", "roles")
    with pytest.raises(OidcUnavailable, match="cannot read the OIDC discovery document"):
        await verifier.start()  # 404
    impostor = OidcVerifier(issuer.base.replace("127.0.0.1", "localhost"), "imgdedup", "ns", "roles")
    with pytest.raises(OidcUnavailable, match="names issuer"):
        await impostor.start()
    issuer.published.clear()
    with pytest.raises(OidcUnavailable, match="key set"):
        await OidcVerifier(issuer.base, "imgdedup", "ns", "roles").start()


async def test_service_verifies_oidc_tokens_and_fails_start_without_the_issuer(issuer: Issuer) -> None:
    settings = Settings(http_port=0, hash_workers=1, oidc_issuer=issuer.base, oidc_audience="imgdedup")
    service = Service(settings)
    await service.start()
    try:
        import aiohttp

        token = issuer.token(imgdedup_namespaces=["shop"], imgdedup_roles=["check"])
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{service.http_port}/v1/namespaces/{NS}/images/a.jpg"
            async with session.get(url, headers=bearer(token)) as response:
                assert response.status == 404
            async with session.get(url) as response:
                assert response.status == 401
    finally:
        await service.stop()
    await issuer.stop()
    with pytest.raises(StartupError, match="IMGDEDUP_OIDC_ISSUER"):
        await Service(settings).start()


# --- settings and start-up --------------------------------------------------------------


def test_settings_refuse_incomplete_or_insecure_oidc() -> None:
    def problems(**env: str) -> list[str]:
        with pytest.raises(ConfigError) as info:
            Settings.from_env({f"IMGDEDUP_{k.upper()}": v for k, v in env.items()})
        return info.value.problems

    assert "go together" in problems(oidc_issuer="https://id.example")[0]
    assert "go together" in problems(oidc_audience="imgdedup")[0]
    assert "https://" in problems(oidc_issuer="http://id.example", oidc_audience="a")[0]
    assert "must be >= 0" in problems(rate_limit_per_key="-1")[0]
    assert "must be one of" in problems(auth="maybe")[0]
    Settings.from_env({"IMGDEDUP_OIDC_ISSUER": "http://127.0.0.1:9/", "IMGDEDUP_OIDC_AUDIENCE": "a"})


def test_auth_on_without_credentials_is_refused_and_off_warns(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match=r"IMGDEDUP_AUTH=on .* needs IMGDEDUP_API_KEYS_FILE"):
        build_authenticator(Settings())
    caplog.set_level(logging.WARNING, logger="imgdedup.auth")
    auth = build_authenticator(Settings(auth="off"))
    assert not auth.enabled
    (record,) = [r for r in caplog.records if r.name == "imgdedup.auth"]
    assert record.levelno == logging.WARNING and "IMGDEDUP_AUTH=off" in record.getMessage()


async def test_service_with_auth_off_serves_anonymous_callers_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    import aiohttp

    caplog.set_level(logging.WARNING)
    service = Service(Settings(http_port=0, hash_workers=1, auth="off"))
    await service.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{service.http_port}/v1/namespaces/{NS}/images/a.jpg"
            async with session.delete(url) as response:
                assert response.status == 404
    finally:
        await service.stop()
    assert any("IMGDEDUP_AUTH=off" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# --- the command line -------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMGDEDUP_")}
    return subprocess.run([sys.executable, "-m", "imgdedup", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def test_keys_new_prints_the_token_once_and_an_entry_that_works(tmp_path: Path) -> None:
    printed = run_cli("keys", "new", "--name", "web", "--namespaces", "shop,shop-*", "--roles", "register", "--json")
    assert printed.returncode == 0, printed.stderr
    output = json.loads(printed.stdout)
    store = parse_keys({"keys": [output["entry"]]}, "printed")
    principal = store.lookup(output["token"])
    assert principal is not None and principal.allows("shop-eu", Role.REGISTER)
    assert output["token"] not in json.dumps(output["entry"])

    human = run_cli("keys", "new", "--name", "ops", "--namespaces", "*", "--roles", "admin")
    assert human.returncode == 0 and "shown only now" in human.stdout and '"sha256"' in human.stdout

    keys_file = tmp_path / "keys.json"
    tokens = [run_cli("keys", "new", "--name", name, "--namespaces", NS, "--roles", "check",
                      "--file", str(keys_file)).stdout.strip() for name in ("a", "b")]
    store = load_keys_file(str(keys_file))
    assert [store.lookup(t).id for t in tokens] == ["key:a", "key:b"]  # type: ignore[union-attr]
    assert not any(t in keys_file.read_text() for t in tokens)
    again = run_cli("keys", "new", "--name", "a", "--namespaces", NS, "--roles", "check", "--file", str(keys_file))
    assert again.returncode == 2 and "name already used" in again.stderr
    wrong = run_cli("keys", "new", "--name", "x", "--namespaces", "a*b", "--roles", "check", "writer")
    assert wrong.returncode == 2 and "'a*b'" in wrong.stderr and "unknown role 'writer'" in wrong.stderr


def test_serve_and_config_check_list_every_auth_problem(tmp_path: Path) -> None:
    missing = run_cli("serve", env={"IMGDEDUP_HTTP_PORT": "0"})
    assert missing.returncode == 2 and "IMGDEDUP_AUTH=on (the default) needs" in missing.stderr
    broken = tmp_path / "keys.json"
    broken.write_text(json.dumps({"keys": [{"name": "a", "sha256": "x", "namespaces": ["*"], "roles": ["god"]}]}))
    env = {"IMGDEDUP_API_KEYS_FILE": str(broken), "IMGDEDUP_OIDC_ISSUER": "http://id.example"}
    for command in (("serve",), ("config", "--check")):
        result = run_cli(*command, env=env)
        assert result.returncode == 2, command
        for fragment in ("sha256 must be", "unknown role 'god'", "IMGDEDUP_OIDC_ISSUER and IMGDEDUP_OIDC_AUDIENCE"):
            assert fragment in result.stderr, (command, result.stderr)
    write_keys_file(broken)
    assert run_cli("config", "--check", env={"IMGDEDUP_API_KEYS_FILE": str(broken)}).returncode == 0


# --- the demo ---------------------------------------------------------------------------


async def test_demo_key_and_curl_lines_work(app_client: AppClient, tmp_path: Path) -> None:
    """Every curl line the demo prints, run against a service using the demo's key file."""
    token, keys_file = throwaway_key(tmp_path, "demo", ("demo-1",))
    client = await app_client(build_authenticator(Settings(api_keys_file=str(keys_file))))
    base = str(client.make_url("")).rstrip("/")
    statuses = []
    for line in try_lines(base, "demo-1", token).splitlines()[1:]:
        words = shlex.split(line.split("|")[0].split("#")[0])
        assert words[:2] == ["curl", "-s"], line
        headers = dict(words[i + 1].split(": ", 1) for i, w in enumerate(words) if w == "-H")
        data = [words[i + 1] for i, w in enumerate(words) if w == "--data-binary"]
        body = (ROOT / data[0].removeprefix("@")).read_bytes() if data else None
        method = "POST" if data else "GET"
        async with client.session.request(method, words[-1], headers=headers, data=body) as response:
            statuses.append(response.status)
    # check: 200 unique; duplicates of an image not registered here: 404; no key: 401; metrics
    assert statuses == [200, 404, 401, 200]
