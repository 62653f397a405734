"""Who may do what: roles, namespace patterns and the principal a credential stands for.

Pure data and rules, shared by every credential kind (API keys, OIDC tokens) and free of
HTTP: the adapter asks `Principal.allows(namespace, role)` and answers 403 when it is not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from imgdedup.records import NAMESPACE_RE


class Role(StrEnum):
    """What a credential may do. Higher roles include lower ones (`IMPLIED`)."""

    CHECK = "check"  # POST .../check, GET records and duplicates
    REGISTER = "register"  # POST images, and everything `check` may
    REVIEW = "review"  # the review workflow (resolve/override), and everything `check` may
    ADMIN = "admin"  # everything, including DELETE


#: Every role a granted role carries with it.
IMPLIED: dict[Role, frozenset[Role]] = {
    Role.CHECK: frozenset({Role.CHECK}),
    Role.REGISTER: frozenset({Role.REGISTER, Role.CHECK}),
    Role.REVIEW: frozenset({Role.REVIEW, Role.CHECK}),
    Role.ADMIN: frozenset(Role),
}

ROLE_NAMES = tuple(role.value for role in Role)

#: A prefix pattern: up to 63 namespace characters, then one trailing `*` (`*` alone: all).
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{0,63}\*")


def effective_roles(granted: Iterable[Role]) -> frozenset[Role]:
    out: set[Role] = set()
    for role in granted:
        out |= IMPLIED[role]
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class NamespacePattern:
    """An exact namespace (`shop`) or a prefix ending in `*` (`shop-*`; `*` = every one)."""

    text: str

    @classmethod
    def parse(cls, text: str) -> NamespacePattern:
        """Raise ValueError with an operator-facing sentence when `text` is not a pattern."""
        if not isinstance(text, str):
            raise ValueError(f"{text!r} is not a string")
        if NAMESPACE_RE.fullmatch(text) or _PREFIX_RE.fullmatch(text):
            return cls(text)
        raise ValueError(
            f"{text!r} is neither a namespace (1-64 of A-Z a-z 0-9 _ . -) nor a prefix "
            "ending in a single trailing '*' (e.g. 'shop-*', or '*' for every namespace)"
        )

    def matches(self, namespace: str) -> bool:
        if self.text.endswith("*"):
            return namespace.startswith(self.text[:-1])
        return namespace == self.text


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a valid credential stands for.

    `id` names it in logs and keys its request limit (`key:<id>` for API keys,
    `oidc:<sub>` for tokens); `roles` are already expanded with `IMPLIED`.
    """

    id: str
    namespaces: tuple[NamespacePattern, ...]
    roles: frozenset[Role]

    @classmethod
    def of(cls, id: str, namespaces: Iterable[NamespacePattern], roles: Iterable[Role]) -> Principal:
        return cls(id, tuple(namespaces), effective_roles(roles))

    def may_use(self, namespace: str) -> bool:
        return any(pattern.matches(namespace) for pattern in self.namespaces)

    def has(self, role: Role) -> bool:
        return role in self.roles

    def allows(self, namespace: str | None, role: Role) -> bool:
        """May this principal act as `role` in `namespace` (None: a route without one)?"""
        return self.has(role) and (namespace is None or self.may_use(namespace))
