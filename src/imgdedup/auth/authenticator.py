"""From settings to one `Authenticator`: which credentials are accepted and how many
requests each may make. Knows nothing of HTTP; the adapter passes it the bearer value."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from imgdedup.auth.keys import TOKEN_PREFIX, KeysFileError, KeyStore, load_keys_file
from imgdedup.auth.oidc import OidcVerifier
from imgdedup.auth.policy import Principal
from imgdedup.auth.ratelimit import RateLimiter
from imgdedup.config import PREFIX, ConfigError, Settings

log = logging.getLogger("imgdedup.auth")


@dataclass
class Authenticator:
    """`enabled` False (IMGDEDUP_AUTH=off): every request passes, without a principal."""

    enabled: bool
    keys: KeyStore | None
    oidc: OidcVerifier | None
    limiter: RateLimiter

    @classmethod
    def disabled(cls) -> Authenticator:
        return cls(False, None, None, RateLimiter(0, 1))

    @classmethod
    def with_keys(cls, keys: KeyStore, rate: float = 0.0, burst: int = 1) -> Authenticator:
        return cls(True, keys, None, RateLimiter(rate, burst))

    async def start(self) -> None:
        """Fetch what verifying needs (the OIDC issuer's keys); raises `OidcUnavailable`."""
        if self.oidc is not None:
            await self.oidc.start()

    async def authenticate(self, token: str) -> Principal | None:
        """The principal of a bearer token, or None for anything that is not a valid one.
        API keys are told apart from JWTs by their prefix. Raises `OidcUnavailable`."""
        if token.startswith(TOKEN_PREFIX):
            return self.keys.lookup(token) if self.keys is not None else None
        if self.oidc is not None and token.count(".") == 2:
            return await self.oidc.verify(token)
        return None


def _credential_sources(settings: Settings) -> tuple[KeyStore | None, list[str]]:
    problems: list[str] = []
    if not settings.api_keys_file and not settings.oidc_issuer:
        problems.append(
            f"{PREFIX}AUTH=on (the default) needs {PREFIX}API_KEYS_FILE (create a key with "
            f"`imgdedup keys new`) and/or {PREFIX}OIDC_ISSUER with {PREFIX}OIDC_AUDIENCE; "
            f"{PREFIX}AUTH=off serves everyone without credentials (only for a port nobody else reaches)"
        )
    keys = None
    if settings.api_keys_file:
        try:
            keys = load_keys_file(settings.api_keys_file)
        except KeysFileError as exc:
            problems.extend(exc.problems)
    return keys, problems


def startup_problems(settings: Settings) -> list[str]:
    """What stops `serve` from authenticating: no credential source, or a bad keys file."""
    if settings.auth == "off":
        return []
    return _credential_sources(settings)[1]


def build_authenticator(settings: Settings) -> Authenticator:
    """The authenticator `settings` describe (not started); raise `ConfigError` listing
    every problem. Warns when authentication is off."""
    limiter = RateLimiter(settings.rate_limit_per_key, settings.rate_limit_burst)
    if settings.auth == "off":
        log.warning(
            "%sAUTH=off: the HTTP API is open to anyone who reaches %s:%s; every namespace can "
            "be read, written and deleted without credentials",
            PREFIX, settings.http_host, settings.http_port,
        )
        return Authenticator(False, None, None, limiter)
    keys, problems = _credential_sources(settings)
    if problems:
        raise ConfigError(problems)
    oidc = None
    if settings.oidc_issuer:
        oidc = OidcVerifier(
            settings.oidc_issuer, settings.oidc_audience,
            settings.oidc_namespaces_claim, settings.oidc_roles_claim,
        )
    return Authenticator(True, keys, oidc, limiter)
