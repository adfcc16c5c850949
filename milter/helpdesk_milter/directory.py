"""The client directory: sender address -> client structure.

Rules, in order: an exact address entry wins; otherwise the longest client
domain that equals the sender's domain or is a parent of it
(``mail.mairie-exemple.fr`` resolves to ``mairie-exemple.fr``).  Matching is
case-insensitive.  The directory is immutable once built, so it is shared by
every milter thread without a lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


def split_address(address: str) -> tuple[str, str]:
    """``"<Jean.Dupont@Example.FR>"`` -> ``("jean.dupont", "example.fr")``."""
    address = address.strip().strip("<>").strip().lower()
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain.rstrip(".")


def domain_of(address: str) -> str:
    return split_address(address)[1]


def in_domains(domain: str, domains: tuple[str, ...] | frozenset[str]) -> bool:
    """True when ``domain`` is one of ``domains`` or a subdomain of one."""
    domain = domain.lower()
    return any(domain == d or domain.endswith("." + d) for d in domains)


@dataclass(frozen=True)
class ClientDirectory:
    addresses: Mapping[str, str] = field(default_factory=dict)
    domains: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, entries: Mapping[str, str]) -> ClientDirectory:
        """Build from ``{"domain-or-address": "structure"}`` (keys already lower-cased)."""
        addresses = {k: v for k, v in entries.items() if "@" in k}
        domains = {k.lstrip("@"): v for k, v in entries.items() if "@" not in k}
        return cls(addresses=addresses, domains=domains)

    def lookup(self, address: str | None) -> str | None:
        """The structure of a sender address, or None when it is not a known client."""
        if not address:
            return None
        local, domain = split_address(address)
        if not domain:
            return None
        exact = self.addresses.get(f"{local}@{domain}")
        if exact:
            return exact
        labels = domain.split(".")
        for start in range(len(labels) - 1):
            structure = self.domains.get(".".join(labels[start:]))
            if structure:
                return structure
        return None

    def __len__(self) -> int:
        return len(self.addresses) + len(self.domains)
