"""The client directory: exact address beats domain, subdomains resolve to their parent."""

import pytest

from helpdesk_milter.directory import ClientDirectory, in_domains, split_address

DIRECTORY = ClientDirectory.from_mapping({
    "mairie-exemple.fr": "mairie-exemple",
    "asso-velo.org": "asso-velo",
    "jean.dupont@webmail.example": "asso-velo",
    "services.mairie-exemple.fr": "mairie-services",
    "marie.leroy@mairie-exemple.fr": "ccas",
})


@pytest.mark.parametrize("address, structure", [
    ("secretariat@mairie-exemple.fr", "mairie-exemple"),
    ("<Secretariat@Mairie-Exemple.FR>", "mairie-exemple"),
    ("x@mail.mairie-exemple.fr", "mairie-exemple"),          # subdomain -> parent
    ("x@services.mairie-exemple.fr", "mairie-services"),    # the longest domain wins
    ("x@a.services.mairie-exemple.fr", "mairie-services"),
    ("marie.leroy@mairie-exemple.fr", "ccas"),                # exact address beats domain
    ("Jean.Dupont@webmail.example", "asso-velo"),
    ("someone.else@webmail.example", None),                 # only the exact address is known
    ("x@notmairie-exemple.fr", None),                       # not a subdomain
    ("x@mairie-exemple.fr.evil.example", None),
    ("", None),
    ("no-at-sign", None),
])
def test_lookup(address, structure):
    assert DIRECTORY.lookup(address) == structure


def test_split_address():
    assert split_address(" <Jean@Example.FR.> ") == ("jean", "example.fr")
    assert split_address("postmaster") == ("postmaster", "")


def test_in_domains():
    assert in_domains("example.org", ("example.org",))
    assert in_domains("mail.example.org", ("example.org",))
    assert not in_domains("badexample.org", ("example.org",))
