"""DKIM verification, Authentication-Results and ARC sealing (helpdesk_milter.auth).

Keys are generated per run and served by a real dnsmasq on loopback; the slow-DNS cases
use a UDP socket that never answers. No MTA involved.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time

import authres
import dkim
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpdesk_milter.auth import (
    ArcError,
    ArcSealer,
    DkimResult,
    DnsTxtCache,
    authentication_results,
    authserv_id_of,
    is_own_authentication_results,
    make_dnsfunc,
    parse_resolver,
    verify_arc,
    verify_dkim,
)
from support import dkimfixtures
from support.dkimfixtures import DkimKey, message, sign_message
from support.dns import DnsServer, blackhole_resolver, refusing_resolver

# The shared fixtures (until conftest.py offers them to every module).
dns_server = dkimfixtures.dns_server
dkim_key = dkimfixtures.dkim_key
arc_key = dkimfixtures.arc_key

AUTHSERV = "mx.example.org"
FROM_DOMAIN = "mairie-exemple.fr"
_selectors = itertools.count(1)


def new_selector() -> str:
    """A selector no other test uses (the DNS server is shared by the session)."""
    return f"t{next(_selectors)}-{time.monotonic_ns() % 10**6}"


@pytest.fixture
def signed(dns_server: DnsServer, dkim_key: DkimKey) -> tuple[bytes, str]:
    """A message signed by mairie-exemple.fr with a freshly published selector."""
    selector = new_selector()
    dkim_key.publish(dns_server, FROM_DOMAIN, selector)
    return sign_message(message(), dkim_key, FROM_DOMAIN, selector), selector


@pytest.fixture
def dnsfunc(dns_server: DnsServer):
    return make_dnsfunc(dns_server.resolver, timeout=2.0, cache_ttl=3600)


def b_tag(raw: bytes) -> str:
    value = re.search(rb"\bb=([A-Za-z0-9+/=\s]+)", raw.split(b"\r\n\r\n")[0]).group(1)
    return re.sub(rb"\s+", b"", value).decode()


# --- results ------------------------------------------------------------------------

def test_pass_through_real_dns(signed, dnsfunc, dns_server):
    raw, selector = signed
    (result,) = verify_dkim(raw, dnsfunc, from_domain=FROM_DOMAIN)
    assert result == DkimResult("pass", FROM_DOMAIN, selector, b_tag(raw)[:8], True,
                                "good signature")
    assert result.trusted
    assert dns_server.query_count(f"{selector}._domainkey.{FROM_DOMAIN}") == 1
    assert authentication_results(AUTHSERV, [result]) == (
        f"mx.example.org; dkim=pass header.d=mairie-exemple.fr header.s={selector} "
        f"header.b={_quoted(b_tag(raw)[:8])}")


def _quoted(b: str) -> str:
    return f'"{b}"' if set(b) & set("/=") else b


def test_fail_when_body_changed(signed, dnsfunc):
    raw, _ = signed
    changed = raw.replace("secrétariat".encode(), b"accueil")
    (result,) = verify_dkim(changed, dnsfunc, from_domain=FROM_DOMAIN)
    assert (result.result, result.reason) == ("fail", "body hash mismatch")
    assert not result.trusted


def test_fail_when_signed_header_changed(signed, dnsfunc):
    raw, _ = signed
    changed = raw.replace(b"Subject: Imprimante en panne", b"Subject: Imprimante OK")
    (result,) = verify_dkim(changed, dnsfunc, from_domain=FROM_DOMAIN)
    assert (result.result, result.reason) == ("fail", "signature did not verify")


def test_none_when_unsigned(dnsfunc, dns_server):
    since = dns_server.log_offset()
    results = verify_dkim(message(), dnsfunc, from_domain=FROM_DOMAIN)
    assert results == (DkimResult("none", reason="no signature"),)
    assert authentication_results(AUTHSERV, results) == "mx.example.org; dkim=none"
    assert dns_server.queries(since) == []


def _garble(raw: bytes, old: bytes, new: bytes) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert old in head
    return head.replace(old, new, 1) + sep + body


@pytest.mark.parametrize("old, new", [
    (b"bh=", b"xh="),                       # missing bh=
    (b" d=", b" x="),                       # missing d=
    (b"a=rsa-sha256", b"a=rsa-md5"),        # unknown algorithm
    (b"v=1", b"v=2"),                       # unknown version
    (b"b=", b"b=!!not base64!!"),           # b= not base64
    (b"c=relaxed/relaxed", b"c=odd/weird"),  # bad canonicalization
    (b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; v=1;"),  # duplicate tag
    (b"DKIM-Signature: v=1;", b"DKIM-Signature: garbage;; ==;"),
])
def test_permerror_when_signature_garbled(signed, dnsfunc, old, new):
    raw, _ = signed
    (result,) = verify_dkim(_garble(raw, old, new), dnsfunc, from_domain=FROM_DOMAIN)
    assert result.result == "permerror", result


def test_permerror_when_no_key_published(dnsfunc, dkim_key):
    raw = sign_message(message(), dkim_key, FROM_DOMAIN, new_selector())
    (result,) = verify_dkim(raw, dnsfunc, from_domain=FROM_DOMAIN)
    assert (result.result, result.reason) == ("permerror", "no key for selector")


def test_permerror_when_key_record_is_garbage(dns_server, dnsfunc, dkim_key):
    selector = new_selector()
    dns_server.add_txt(f"{selector}._domainkey.{FROM_DOMAIN}", "v=DKIM1; k=rsa; p=AAAAnotakey")
    raw = sign_message(message(), dkim_key, FROM_DOMAIN, selector)
    (result,) = verify_dkim(raw, dnsfunc, from_domain=FROM_DOMAIN)
    assert (result.result, result.reason) == ("permerror", "unusable key")


def test_permerror_when_header_block_is_unparsable(signed, dnsfunc):
    raw, _ = signed
    # A continuation line first: dkimpy raises IndexError, not one of its exceptions.
    (result,) = verify_dkim(b" folded-first\r\n" + raw, dnsfunc, from_domain=FROM_DOMAIN)
    assert result.result == "permerror"
    assert result.domain == FROM_DOMAIN


def test_temperror_when_dns_times_out(signed):
    raw, _ = signed
    timeout = 0.4
    with blackhole_resolver() as resolver:
        dnsfunc = make_dnsfunc(resolver, timeout=timeout)
        start = time.monotonic()
        (result,) = verify_dkim(raw, dnsfunc, from_domain=FROM_DOMAIN)
        elapsed = time.monotonic() - start
        assert (result.result, result.reason) == ("temperror", "key lookup failed")
        assert timeout * 0.9 <= elapsed < timeout + 0.5
        # The failure is cached (error_ttl): the next message does not wait again.
        start = time.monotonic()
        assert verify_dkim(raw, dnsfunc, from_domain=FROM_DOMAIN)[0].result == "temperror"
        assert time.monotonic() - start < 0.1


def test_temperror_when_dns_server_is_down(signed):
    raw, _ = signed
    with refusing_resolver() as resolver:
        start = time.monotonic()
        (result,) = verify_dkim(raw, make_dnsfunc(resolver, timeout=0.5),
                                from_domain=FROM_DOMAIN)
    assert result.result == "temperror"
    assert time.monotonic() - start < 1.0


def test_temperror_when_dnsfunc_breaks_its_contract(signed):
    raw, _ = signed

    def broken(name, timeout=5):
        raise RuntimeError("resolver bug")

    assert verify_dkim(raw, broken, from_domain=FROM_DOMAIN)[0].result == "temperror"


def test_several_signatures_in_header_order_and_capped(dns_server, dnsfunc, dkim_key):
    selector = new_selector()
    dns_server.add_records({f"{selector}._domainkey.{FROM_DOMAIN}": dkim_key.txt,
                            f"{selector}._domainkey.esp.example": dkim_key.txt})
    raw = sign_message(message(), dkim_key, FROM_DOMAIN, selector)     # author, inner
    raw = sign_message(raw, dkim_key, "esp.example", selector)         # ESP, on top
    results = verify_dkim(raw, dnsfunc, from_domain=FROM_DOMAIN)
    assert [(r.result, r.domain, r.aligned) for r in results] == [
        ("pass", "esp.example", False), ("pass", FROM_DOMAIN, True)]
    assert len(verify_dkim(raw, dnsfunc, from_domain=FROM_DOMAIN, max_signatures=1)) == 1
    value = authentication_results(AUTHSERV, results)
    assert value.count("dkim=pass") == 2
    assert value.index("header.d=esp.example") < value.index("header.d=mairie-exemple.fr")


@pytest.mark.parametrize("d, from_domain, aligned", [
    ("mairie-exemple.fr", "mairie-exemple.fr", True),
    ("mairie-exemple.fr", "Mail.Mairie-Exemple.FR", True),    # d= is a parent
    ("mail.mairie-exemple.fr", "mairie-exemple.fr", False),   # d= is a child
    ("exemple.fr", "mairie-exemple.fr", False),               # suffix, not a parent
    ("esp.example", "mairie-exemple.fr", False),
    ("fr", "mairie-exemple.fr", False),                       # a bare TLD never aligns
    ("mairie-exemple.fr", None, False),
])
def test_alignment(dns_server, dnsfunc, dkim_key, d, from_domain, aligned):
    selector = new_selector()
    dkim_key.publish(dns_server, d, selector)
    raw = sign_message(message(), dkim_key, d, selector)
    (result,) = verify_dkim(raw, dnsfunc, from_domain=from_domain)
    assert (result.result, result.aligned, result.trusted) == ("pass", aligned, aligned)


# --- DNS cache ------------------------------------------------------------------------

def test_second_verification_is_served_from_cache(signed, dns_server):
    raw, selector = signed
    name = f"{selector}._domainkey.{FROM_DOMAIN}"
    now = [1000.0]
    dnsfunc = make_dnsfunc(dns_server.resolver, timeout=2.0, cache_ttl=3600,
                           clock=lambda: now[0])
    since = dns_server.log_offset()
    for _ in range(3):
        assert verify_dkim(raw, dnsfunc, from_domain=FROM_DOMAIN)[0].result == "pass"
    assert dns_server.query_count(name, since=since) == 1
    now[0] += 3601                   # past cache_ttl: asked again
    assert verify_dkim(raw, dnsfunc, from_domain=FROM_DOMAIN)[0].result == "pass"
    assert dns_server.query_count(name, since=since) == 2


def test_cache_lifetimes_by_kind():
    now = [0.0]
    cache = DnsTxtCache(3600, clock=lambda: now[0])
    cache.put_answer(b"a._domainkey.x.", b"v=DKIM1; p=AB")
    cache.put_answer("B._domainkey.X", None)
    cache.put_failure("c._domainkey.x")
    assert cache.get("A._DOMAINKEY.X").value == b"v=DKIM1; p=AB"
    assert cache.get("b._domainkey.x.").value is None
    assert cache.get("c._domainkey.x").temporary
    now[0] = 61                       # errors: min(ttl, 60)
    assert cache.get("c._domainkey.x") is None
    assert cache.get("b._domainkey.x") is not None
    now[0] = 301                      # "no record": min(ttl, 300)
    assert cache.get("b._domainkey.x") is None
    assert cache.get("a._domainkey.x") is not None
    now[0] = 3601
    assert cache.get("a._domainkey.x") is None


def test_cache_is_bounded_and_evicts_least_recently_used():
    now = [0.0]
    cache = DnsTxtCache(3600, max_entries=3, clock=lambda: now[0])
    for name in "abc":
        cache.put_answer(name, name.encode())
    cache.get("a")                    # a is now the most recently used
    cache.put_answer("d", b"d")
    assert len(cache) == 3
    assert cache.get("b") is None
    assert [cache.get(n).value for n in "acd"] == [b"a", b"c", b"d"]


def test_cache_is_thread_safe_under_load():
    cache = DnsTxtCache(3600, max_entries=100)
    errors = []

    def worker(n: int) -> None:
        try:
            for i in range(2000):
                cache.put_answer(f"{n}-{i % 150}", b"x")
                cache.get(f"{(n + 1) % 8}-{i % 150}")
        except Exception as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) <= 100


def test_concurrent_verifications_share_the_dnsfunc(signed, dns_server):
    raw, _ = signed
    dnsfunc = make_dnsfunc(dns_server.resolver, timeout=2.0)   # cold: threads race to DNS
    results: list[str] = []

    def worker() -> None:
        for _ in range(5):
            results.append(verify_dkim(raw, dnsfunc, from_domain=FROM_DOMAIN)[0].result)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["pass"] * 40


@pytest.mark.parametrize("value, expected", [
    ("", None),
    ("127.0.0.1", ("127.0.0.1", 53)),
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("::1", ("::1", 53)),
    ("[::1]:5353", ("::1", 5353)),
])
def test_resolver_setting(value, expected):
    assert parse_resolver(value) == expected


@pytest.mark.parametrize("value", ["localhost", "127.0.0.1:0", "127.0.0.1:99999",
                                   "127.0.0.1:dns", "[::1", "1.2.3"])
def test_resolver_setting_rejected(value):
    with pytest.raises(ValueError):
        make_dnsfunc(value)


# --- Authentication-Results -------------------------------------------------------

def test_authentication_results_format_parses_as_rfc8601():
    results = [DkimResult("pass", "a.example", "s1", "AbCd/f1=", True),
               DkimResult("temperror", "b.example", "s-2", "XyZ12345", False),
               DkimResult("permerror")]
    value = authentication_results(AUTHSERV, results, arc="pass")
    assert value == ('mx.example.org; dkim=pass header.d=a.example header.s=s1 '
                     'header.b="AbCd/f1="; dkim=temperror header.d=b.example header.s=s-2 '
                     'header.b=XyZ12345; dkim=permerror; arc=pass')
    parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)
    assert parsed.authserv_id == AUTHSERV
    assert [(r.method, r.result) for r in parsed.results] == [
        ("dkim", "pass"), ("dkim", "temperror"), ("dkim", "permerror"), ("arc", "pass")]
    assert authentication_results(AUTHSERV, []) == "mx.example.org; none"


@pytest.mark.parametrize("value, own", [
    ("mx.example.org; dkim=pass header.d=evil.example", True),
    ("MX.Example.ORG; dkim=pass", True),
    ("mx.example.org.; dkim=pass", True),
    ("mx.example.org 1; dkim=pass", True),
    ("mx.example.org;dkim=pass", True),
    ("(forged by a sender) mx.example.org; dkim=pass", True),
    ("\r\n\tmx.example.org;\r\n\tdkim=pass", True),
    ('"mx.example.org"; dkim=pass', True),
    ("mx.example.org(comment); dkim=pass", True),
    ("mx.example.org.evil.example; dkim=pass", False),
    ("evil-mx.example.org; dkim=pass", False),
    ("gmail.com; dkim=pass", False),
    ("", False),
    ("(only a comment)", False),
])
def test_own_authentication_results_detection(value, own):
    assert is_own_authentication_results(value, "mx.example.org") is own


def test_authserv_id_of_handles_nested_comments():
    assert authserv_id_of("(a (nested) comment) MX.example.org ; none") == "mx.example.org"


# --- ARC -------------------------------------------------------------------------------

ARC_DOMAIN = "example.org"


@pytest.fixture
def sealer(dns_server: DnsServer, arc_key: DkimKey) -> ArcSealer:
    selector = new_selector()
    arc_key.publish(dns_server, ARC_DOMAIN, selector)
    return ArcSealer(ARC_DOMAIN, selector, arc_key.private_pem, AUTHSERV)


def redact(raw: bytes) -> bytes:
    """What the milter does to a body: the ARC seal must cover the changed message."""
    return raw.replace("secrétariat".encode(), b"[secret removed: password]")


def with_headers(headers: list[tuple[str, str]], raw: bytes) -> bytes:
    """Insert (name, value) headers on top, the way Postfix writes milter headers
    (LF folds become CRLF folds)."""
    top = b"".join(f"{n}: {v}".replace("\n", "\r\n").encode() + b"\r\n" for n, v in headers)
    return top + raw


def test_seal_modified_message_verifies(signed, dnsfunc, sealer):
    raw, _ = signed
    dkim_results = verify_dkim(raw, dnsfunc, from_domain=FROM_DOMAIN)
    ar = authentication_results(AUTHSERV, dkim_results, arc=verify_arc(raw, dnsfunc))
    modified = with_headers([("Authentication-Results", ar)], redact(raw))
    arc_set = sealer.seal(modified, ar)
    assert [n for n, _ in arc_set] == ["ARC-Seal", "ARC-Message-Signature",
                                       "ARC-Authentication-Results"]
    assert all("\r" not in v and not v[0].isspace() for _, v in arc_set)
    assert arc_set[0][1].startswith("i=1; cv=none; a=rsa-sha256; d=example.org;")
    assert arc_set[2][1].startswith("i=1; mx.example.org;")
    assert "dkim=pass header.d=mairie-exemple.fr" in arc_set[2][1]
    delivered = with_headers(arc_set, modified)
    cv, instances, reason = dkim.arc_verify(delivered, dnsfunc=dnsfunc)
    assert cv == dkim.CV_Pass, reason
    assert [(i["instance"], i["cv"], i["as-valid"], i["ams-valid"]) for i in instances] == [
        (1, b"none", True, True)]
    # Our own checker agrees, and a change after sealing is caught.
    assert verify_arc(delivered, dnsfunc) == "pass"
    assert verify_arc(delivered.replace(b"Bonjour", b"Bonsoir"), dnsfunc) == "fail"


def test_seal_uses_our_value_not_a_forged_or_missing_header(signed, dnsfunc, sealer):
    raw, _ = signed
    ar = authentication_results(AUTHSERV, verify_dkim(raw, dnsfunc, from_domain=FROM_DOMAIN))
    forged = with_headers([("authentication-results", "MX.EXAMPLE.ORG; arc=pass; dkim=pass "
                                                      "header.d=bank.example")], redact(raw))
    for modified in (forged, redact(raw)):
        arc_set = dict(sealer.seal(modified, ar))
        assert "bank.example" not in arc_set["ARC-Authentication-Results"]
        assert "cv=none" in arc_set["ARC-Seal"]
        cv, _, reason = dkim.arc_verify(with_headers(list(arc_set.items()), modified),
                                        dnsfunc=dnsfunc)
        assert cv == dkim.CV_Pass, reason


def test_seal_message_with_an_earlier_arc_set(dns_server, signed, dnsfunc, sealer, arc_key):
    raw, _ = signed
    # An earlier hop (a forwarder) verified and sealed the message, unchanged.
    hop_selector = new_selector()
    arc_key.publish(dns_server, "forwarder.example", hop_selector)
    hop_ar = b"Authentication-Results: mx.forwarder.example; dkim=pass header.d=" + \
        FROM_DOMAIN.encode() + b"\r\n"
    hop = b"".join(dkim.arc_sign(hop_ar + raw, hop_selector.encode(), b"forwarder.example",
                                 arc_key.private_pem, b"mx.forwarder.example")) + hop_ar + raw
    # We verify the original as received, then change it and seal.
    arc_result = verify_arc(hop, dnsfunc)
    assert arc_result == "pass"
    ar = authentication_results(
        AUTHSERV, verify_dkim(hop, dnsfunc, from_domain=FROM_DOMAIN), arc=arc_result)
    modified = with_headers([("Authentication-Results", ar)], redact(hop))
    arc_set = dict(sealer.seal(modified, ar))
    assert arc_set["ARC-Seal"].startswith("i=2; cv=pass;")
    assert arc_set["ARC-Authentication-Results"].startswith("i=2; mx.example.org;")
    cv, instances, reason = dkim.arc_verify(with_headers(list(arc_set.items()), modified),
                                            dnsfunc=dnsfunc)
    assert cv == dkim.CV_Pass, reason
    assert [(i["instance"], i["cv"], i["as-valid"], i["ams-valid"]) for i in instances] == [
        (2, b"pass", True, True),
        (1, b"none", True, False)]    # our change broke hop 1's AMS: what ARC is for

    # Sealing a chain without saying how it validated is refused (dkimpy would
    # silently return nothing).
    no_arc = authentication_results(AUTHSERV, [DkimResult("pass", FROM_DOMAIN)])
    with pytest.raises(ArcError, match="no arc= result"):
        sealer.seal(modified, no_arc)
    with pytest.raises(ArcError, match="DNS"):
        sealer.seal(modified, no_arc + "; arc=temperror")


def test_verify_arc_temperror_when_dns_times_out(dns_server, signed, dnsfunc, sealer):
    raw, _ = signed
    ar = authentication_results(AUTHSERV, [DkimResult("none")], arc="none")
    sealed = with_headers(sealer.seal(raw, ar), raw)
    assert verify_arc(sealed, dnsfunc) == "pass"
    with blackhole_resolver() as resolver:
        assert verify_arc(sealed, make_dnsfunc(resolver, timeout=0.3)) == "temperror"
    assert verify_arc(raw, dnsfunc) == "none"


def test_seal_refuses_foreign_authentication_results(signed, sealer):
    raw, _ = signed
    with pytest.raises(ArcError, match="authserv-id"):
        sealer.seal(raw, "mx.other.example; dkim=pass")
    with pytest.raises(ArcError, match="does not parse"):
        sealer.seal(raw, "mx.example.org; dkim")


def test_sealer_from_file(tmp_path, arc_key, dns_server, dnsfunc):
    selector = new_selector()
    arc_key.publish(dns_server, ARC_DOMAIN, selector)
    crlf = tmp_path / "crlf.pem"
    crlf.write_bytes(arc_key.private_pem.replace(b"\n", b"\r\n"))   # dkimpy needs LF
    sealer = ArcSealer.from_file(ARC_DOMAIN, selector, crlf, AUTHSERV)
    raw = message()
    sealed = with_headers(sealer.seal(raw, "mx.example.org; dkim=none"), raw)
    assert verify_arc(sealed, dnsfunc) == "pass"

    with pytest.raises(ArcError, match="cannot read"):
        ArcSealer.from_file(ARC_DOMAIN, selector, tmp_path / "missing.pem", AUTHSERV)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ArcError, match="not an RSA key") as info:
        ArcSealer.from_file(ARC_DOMAIN, selector, garbage, AUTHSERV)
    assert "AAAA" not in str(info.value)
    assert b"PRIVATE" not in repr(sealer).encode()


# --- never leak, never raise ------------------------------------------------------

def test_nothing_is_logged_from_dkimpy(signed, dnsfunc, caplog, dkim_key):
    raw, _ = signed
    caplog.set_level(logging.DEBUG)
    verify_dkim(_garble(raw, b"bh=", b"xh="), dnsfunc, from_domain=FROM_DOMAIN)
    verify_dkim(raw.replace(b"Bonjour", b"Salut"), dnsfunc, from_domain=FROM_DOMAIN)
    verify_dkim(raw, lambda name, timeout=5: b"p=garbage!!", from_domain=FROM_DOMAIN)
    verify_arc(raw, dnsfunc)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Imprimante" not in text and "Bonjour" not in text
    assert dkim_key.public_b64[:40] not in text


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=40), where=st.integers(min_value=0, max_value=400))
def test_verify_never_raises(signed, junk, where):
    raw, _ = signed

    def offline(name, timeout=5):
        raise dkim.DnsTimeoutError("offline")

    head, _, body = raw.partition(b"\r\n\r\n")
    where = min(where, len(head))
    mangled = head[:where] + junk + head[where:] + b"\r\n\r\n" + body
    for result in verify_dkim(mangled, offline, from_domain=FROM_DOMAIN):
        assert result.result in {"pass", "fail", "none", "temperror", "permerror"}
    assert verify_arc(mangled, offline) in {"none", "fail", "temperror", "pass"}
