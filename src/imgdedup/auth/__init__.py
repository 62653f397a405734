"""Authentication and tenancy: API keys, OIDC tokens, roles, namespaces, request limits.

Free of HTTP: `adapters/http_auth.py` turns these answers into 401/403/429 responses.
"""

from imgdedup.auth.authenticator import Authenticator, build_authenticator, startup_problems
from imgdedup.auth.keys import KeysFileError, KeyStore, load_keys_file, new_key, parse_keys
from imgdedup.auth.oidc import OidcUnavailable, OidcVerifier
from imgdedup.auth.policy import NamespacePattern, Principal, Role
from imgdedup.auth.ratelimit import RateLimiter, retry_after_seconds

__all__ = [
    "Authenticator",
    "KeyStore",
    "KeysFileError",
    "NamespacePattern",
    "OidcUnavailable",
    "OidcVerifier",
    "Principal",
    "RateLimiter",
    "Role",
    "build_authenticator",
    "load_keys_file",
    "new_key",
    "parse_keys",
    "retry_after_seconds",
    "startup_problems",
]
