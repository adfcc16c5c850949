"""The pure decision: recipients, skip rules, follow-ups, modes, headers.

These tests use a tiny rule set of their own, so that they test the policy and
not the shipped classifier (tests/test_classify.py does that on the corpus).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from helpdesk_milter.classify import Rule, RuleSet
from helpdesk_milter.config import load_config, parse_config
from helpdesk_milter.message import Envelope, ParsedMessage
from helpdesk_milter.policy import Policy, incoming_helpdesk_headers
from support.mail import as_bytes, make_message

ROOT = Path(__file__).resolve().parent.parent
RULES = RuleSet(rules=(
    Rule(name="problem", weight=4.0, where="any",
         patterns=(re.compile(r"ne fonctionne plus|impossible d", re.I),)),
    Rule(name="tool", weight=1.0, where="any", patterns=(re.compile(r"imprimante", re.I),)),
    Rule(name="quote", weight=-6.0, where="any", patterns=(re.compile(r"\bdevis\b", re.I),)),
))
# Rules only (no learned model), with the rules-only weight of a known client.
_CONFIG = load_config(ROOT / "config" / "helpdesk-milter.toml")
_CONFIG = replace(_CONFIG, classifier=replace(_CONFIG.classifier, known_client_weight=2.0))
POLICY = Policy(_CONFIG, rules=RULES, model=None)
CLIENT = "secretariat@mairie-exemple.fr"
ASSIST = "mairie-exemple@assistance.example.org"


def decide(rcpts, *, mail_from=CLIENT, policy=POLICY, auth_user=None, too_large=False,
           **message):
    raw = as_bytes(make_message(**message))
    env = Envelope(mail_from=mail_from, rcpts=tuple(rcpts), auth_user=auth_user,
                   queue_id="ABC123")
    return policy.decide(env, ParsedMessage(raw), too_large=too_large)


def header(decision, name):
    values = [v for n, v in decision.add_headers if n == name]
    return values[0] if values else None


def test_support_request_to_team_member_is_copied():
    d = decide(["alice@example.org"])
    assert d.verdict == "support" and d.action == "copy"
    assert d.structure == "mairie-exemple"
    assert d.add_rcpts == (ASSIST,) and d.del_rcpts == ()
    assert header(d, "X-Helpdesk-Request") == (
        "support; structure=mairie-exemple; score=7.0; rules=problem,tool,known-client")
    assert header(d, "X-Helpdesk-Routed") == f"to={ASSIST}; mode=copy"


def test_support_request_to_contact_is_redirected():
    d = decide(["<Contact@Example.org>"])
    assert d.action == "redirect"
    assert d.add_rcpts == (ASSIST,)
    assert d.del_rcpts == ("Contact@Example.org",)
    assert header(d, "X-Helpdesk-Routed") == f"to={ASSIST}; mode=redirect"


def test_redirect_removes_only_that_groups_recipients():
    d = decide(["contact@example.org", "alice@example.org", "partner@elsewhere.example"])
    assert d.action == "redirect"
    assert d.add_rcpts == (ASSIST,)
    assert d.del_rcpts == ("contact@example.org",)


def test_commercial_request_is_untouched_but_tagged():
    d = decide(["commercial@example.org"], subject="Demande de devis",
               body="Bonjour, pourriez-vous nous faire un devis ? L'imprimante est vieille.")
    assert d.verdict == "other" and d.action == "none"
    assert d.add_rcpts == () and d.del_rcpts == ()
    assert header(d, "X-Helpdesk-Request").startswith("other; structure=mairie-exemple;")
    assert header(d, "X-Helpdesk-Routed") is None


def test_unknown_sender_goes_to_the_fallback():
    d = decide(["alice@example.org"], mail_from="quelquun@inconnu.example",
               sender="Quelqu'un <quelquun@inconnu.example>",
               body="Bonjour, impossible d'imprimer, l'imprimante ne fonctionne plus.")
    assert d.structure is None
    assert d.add_rcpts == ("accueil@assistance.example.org",)
    assert header(d, "X-Helpdesk-Request").startswith("support; structure=unknown; score=5.0")


def test_header_from_beats_envelope_sender_for_the_structure():
    d = decide(["alice@example.org"], mail_from="bounces+123@mailer.example",
               sender="jean.dupont@webmail.example")
    assert d.structure == "asso-velo"


@pytest.mark.parametrize("subject", [
    "[example #4521] Imprimante en panne", "RE: [example #4521] Imprimante en panne",
    "TR: Re: [Example #4521] Imprimante", "Fwd: [example #4521]"])
def test_followup_is_routed_by_ticket_number(subject):
    d = decide(["bob@example.org"], subject=subject, body="Voici la photo demandée.")
    assert d.verdict == "followup" and d.ticket == "4521"
    assert d.add_rcpts == (ASSIST,)
    assert header(d, "X-Helpdesk-Request").endswith("rules=ticket-subject; ticket=4521")


@pytest.mark.parametrize("kwargs, reason", [
    ({"mail_from": "alice@example.org", "sender": "Alice <alice@example.org>"}, "internal"),
    ({"mail_from": "alice@lists.example.org"}, "internal"),
    ({"auth_user": "alice"}, "authenticated"),
    ({"mail_from": ""}, "bounce"),
    ({"headers": {"Auto-Submitted": "auto-replied"}}, "auto-submitted"),
    ({"headers": {"Precedence": "bulk"}}, "bulk"),
    ({"headers": {"Precedence": "list"}}, "bulk"),
    ({"headers": {"List-Id": "<news.mairie-exemple.fr>"}}, "list"),
    ({"headers": {"List-Unsubscribe": "<mailto:unsub@x.example>"}}, "list"),
    ({"too_large": True}, "too-large"),
])
def test_never_rerouted(kwargs, reason):
    d = decide(["contact@example.org"], **kwargs)
    assert d.action == "skip" and d.skip_reason == reason
    assert d.add_rcpts == () and d.del_rcpts == ()
    assert header(d, "X-Helpdesk-Request").endswith(f"rules=skip-{reason}")


def test_auto_submitted_no_is_a_person():
    d = decide(["alice@example.org"], headers={"Auto-Submitted": "no"})
    assert d.action == "copy"


def test_mail_only_to_assistance_is_tagged_not_rerouted():
    d = decide([ASSIST])
    assert d.verdict == "support" and d.action == "none"
    assert d.add_rcpts == () and d.del_rcpts == ()


def test_mail_to_nobody_watched_is_not_inspected():
    # secrets.scope = "helpdesk" (the default): untouched, the milter steps out early
    assert POLICY.steps_out(["someone@elsewhere.example"])
    d = decide(["someone@elsewhere.example"],
               headers={"X-Helpdesk-Routed": "to=evil@example.net; mode=copy"})
    assert not d.inspected and d.add_headers == () and d.strip_headers == ()


def test_mail_to_nobody_watched_loses_forged_headers_with_scope_all():
    config = replace(_CONFIG, secrets=replace(_CONFIG.secrets, scope="all"))
    policy = Policy(config, rules=RULES, model=None)
    assert not policy.steps_out(["someone@elsewhere.example"])
    d = decide(["someone@elsewhere.example"], policy=policy,
               headers={"X-Helpdesk-Routed": "to=evil@example.net; mode=copy"})
    assert not d.inspected and d.add_headers == ()
    assert d.strip_headers == (("X-Helpdesk-Routed", 1),)


@pytest.mark.parametrize("rcpts", [["alice@example.org"], ["<contact@example.org>"],
                                   ["someone@elsewhere.example", "mairie-exemple@"
                                    "assistance.example.org"],
                                   ["accueil@assistance.example.org"]])
def test_the_helpdesks_mail_never_steps_out(rcpts):
    assert POLICY.is_helpdesk_mail(rcpts) and not POLICY.steps_out(rcpts)


def test_forged_helpdesk_headers_are_removed_highest_index_first():
    msg = make_message(headers={"X-Helpdesk-Routed": "to=evil@example.net; mode=copy"})
    msg["X-HELPDESK-Request"] = "support; structure=evil"
    msg["X-Helpdesk-Routed"] = "second"
    env = Envelope(mail_from=CLIENT, rcpts=("alice@example.org",))
    d = POLICY.decide(env, ParsedMessage(as_bytes(msg)))
    assert d.strip_headers == (("X-HELPDESK-Request", 1), ("X-Helpdesk-Routed", 2),
                               ("X-Helpdesk-Routed", 1))


def test_same_transaction_with_assistance_is_a_duplicate_never_added_again():
    d = decide(["alice@example.org", ASSIST], message_id="<req-1@mairie-exemple.fr>")
    assert d.action == "duplicate" and d.add_rcpts == () and d.del_rcpts == ()
    assert header(d, "X-Helpdesk-Duplicate") == (
        "of=<req-1@mairie-exemple.fr>; match=same-transaction; action=tag")
    assert header(d, "X-Helpdesk-Routed") is None


def test_assistance_in_the_envelope_makes_it_a_request_whatever_the_text():
    """The sender wrote to assistance and a watched address: they said it is a
    request, so the watched copy is a same-transaction duplicate even when the text
    scores low (here, no rule fires at all)."""
    body = "Bonjour, pouvez-vous regarder ceci quand vous aurez un moment ? Merci."
    alone = decide(["alice@example.org"], body=body)
    assert alone.verdict == "other" and alone.action == "none"
    d = decide(["alice@example.org", ASSIST], body=body, message_id="<r2@mairie-exemple.fr>")
    assert d.verdict == "support" and d.action == "duplicate"
    assert "assistance-rcpt" in d.rules and d.add_rcpts == ()
    assert header(d, "X-Helpdesk-Duplicate") == (
        "of=<r2@mairie-exemple.fr>; match=same-transaction; action=tag")
    assert header(d, "X-Helpdesk-Request").startswith("support; structure=mairie-exemple;")
    # only to assistance: nothing to route, and the text decides the verdict as before
    only = decide([ASSIST], body=body)
    assert only.verdict == "other" and only.action == "none"


def test_same_transaction_drop_removes_watched_but_keeps_assistance():
    text = re.sub(r'(\[dedup\][^\[]*?)action = "tag"', r'\1action = "drop"',
                  (ROOT / "config" / "helpdesk-milter.toml").read_text())
    assert 'action = "drop"' in text
    policy = Policy(parse_config(text, base_dir=ROOT / "config"), rules=RULES, model=None)
    d = decide(["contact@example.org", "alice@example.org", ASSIST], policy=policy)
    assert d.del_rcpts == ("contact@example.org", "alice@example.org")
    assert d.add_rcpts == ()
    assert header(d, "X-Helpdesk-Duplicate").endswith("action=drop")


def test_tag_mode_changes_no_recipient():
    policy = Policy(parse_config('[[watch]]\nname = "t"\naddresses = ["*@example.org"]\n'
                                 'mode = "tag"\n[clients]\n"mairie-exemple.fr" = "m"\n'),
                    rules=RULES, model=None)
    d = decide(["alice@example.org"], policy=policy)
    assert d.verdict == "support" and d.action == "tag"
    assert d.add_rcpts == () and d.del_rcpts == ()
    assert header(d, "X-Helpdesk-Routed") is None


@pytest.mark.parametrize("rcpts", [
    ["alice@example.org"], ["contact@example.org"], ["contact@example.org", "bob@example.org"],
    ["commercial@example.org", "contact@example.org"]])
def test_a_recipient_is_only_removed_when_assistance_is_added(rcpts):
    d = decide(rcpts)
    if d.del_rcpts:
        assert d.add_rcpts, d
    assert not set(map(str.lower, d.add_rcpts)) & set(map(str.lower, rcpts))


def test_first_matching_watch_group_wins():
    assert POLICY.watch_group("contact@example.org").name == "contact"
    assert POLICY.watch_group("alice@example.org").name == "team"
    assert POLICY.watch_group(ASSIST) is None
    assert POLICY.watch_group("accueil@assistance.example.org") is None


def test_a_recipient_is_judged_the_same_however_often_and_however_written():
    # the answers are remembered per address (Policy._recipient): brackets and case
    # must not make one address two, nor an assistance address a watched one
    for _ in range(2):
        for spelled in ("<Contact@Example.org>", "contact@example.org", "CONTACT@EXAMPLE.ORG"):
            assert POLICY.watch_group(spelled).name == "contact"
            assert not POLICY.is_assistance(spelled)
        for spelled in (f"<{ASSIST.upper()}>", ASSIST, "accueil@assistance.example.org"):
            assert POLICY.is_assistance(spelled) and POLICY.watch_group(spelled) is None
        assert POLICY.watch_group("someone@elsewhere.example") is None
        assert not POLICY.is_helpdesk_mail(["someone@elsewhere.example"])


def test_incoming_helpdesk_headers_indexes_per_name():
    names = ["Received", "X-Helpdesk-Routed", "Subject", "x-helpdesk-routed"]
    assert incoming_helpdesk_headers(names) == (("x-helpdesk-routed", 2),
                                                ("X-Helpdesk-Routed", 1))


@pytest.mark.parametrize("head", [
    b"X-HELPDESK-Request: support\r\n", b"x-helpdesk-routed: to=x\r\n",
    b"X-A: a\rX-Helpdesk-Request: y\r\n",                 # bare CR: one field for Postfix
    b"From foo@bar Mon Jan  1 00:00:00 2024\r\nX-Helpdesk-Request: z\r\n",   # mbox line
    b"Authentication-Results: mx.example.org; dkim=pass\r\n", b""])
def test_the_quick_look_for_our_headers_finds_what_the_full_one_does(head):
    """Policy looks for forged X-Helpdesk-* and own Authentication-Results fields only
    when the header block's bytes mention them: the same fields go either way."""
    raw = (b"From: <jean@mairie-exemple.fr>\r\n" + head + b"Subject: panne\r\n\r\nbody\r\n")
    msg = ParsedMessage(raw)
    full = incoming_helpdesk_headers(msg.header_fields(), "mx.example.org")
    quick = full if msg.header_block_mentions(b"x-helpdesk-", b"authentication-results") \
        else ()
    assert quick == full
    env = Envelope(mail_from=CLIENT, rcpts=("alice@example.org",))
    assert POLICY.decide(env, msg).strip_headers == full


def test_broken_message_still_gets_a_decision():
    env = Envelope(mail_from=CLIENT, rcpts=("alice@example.org",))
    raw = (b"From: =?bogus?q?x?= <\xff\xfe@\r\nSubject: =?utf-8?b?!!!?=\r\n"
           b"Content-Type: multipart/mixed; boundary=\"nope\"\r\n\r\n\x00\xff garbage")
    d = POLICY.decide(env, ParsedMessage(raw))
    assert d.verdict in ("support", "other")
    assert d.del_rcpts == ()
