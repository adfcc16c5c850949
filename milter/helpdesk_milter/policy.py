"""The decision: envelope + message (+ state) -> what to do with it.

Nothing here talks to Postfix, the network or the disk: ``Policy.decide`` is a
pure function of its inputs, and its result, a ``Decision``, says which
headers to remove and add and which recipients to add and remove.  The
adapter (``app.py``) and the ``try`` command both apply the same Decision.

The safety rules kept here, and tested in ``tests/test_policy.py``:

* a recipient is removed only in a decision that also adds its assistance
  address, or when an assistance address is already among the recipients of
  the same transaction (it provably gets a copy);
* a recipient already present is never added again (Postfix would deliver it
  twice);
* ``X-Helpdesk-*`` headers that arrived with the message are always removed
  from the mail the milter reads (the helpdesk's mail, or every message with
  ``secrets.scope = "all"``), so a sender cannot forge our verdict.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .auth import is_own_authentication_results
from .classify import Classifier, RuleSet, SiteDeltas
from .config import Config, WatchGroup
from .dedup import Match, fingerprint
from .directory import ClientDirectory, domain_of, in_domains, split_address
from .guidance import hints as guidance_hints
from .message import Envelope, ParsedMessage, strip_brackets
from .model import TextModel, load_model
from .redact import Redaction, redact_message
from .secrets import SecretScanner
from .stages import stage
from .store import DedupState, Remember

HEADER_PREFIX = "x-helpdesk-"

# Reasons a message is inspected but never rerouted (SPEC, "What is never rerouted").
SKIP_BOUNCE = "bounce"
SKIP_AUTHENTICATED = "authenticated"
SKIP_INTERNAL = "internal"
SKIP_AUTO = "auto-submitted"
SKIP_BULK = "bulk"
SKIP_LIST = "list"
SKIP_TOO_LARGE = "too-large"

_BULK_PRECEDENCE = {"bulk", "list", "junk"}

# Senders that must never get an automatic answer (RFC 3834 section 2 and the
# usual loop brakes of vacation programs).
_NO_REPLY_LOCAL = re.compile(
    r"^(?:no-?reply|do-?not-?reply|mailer-daemon|postmaster|listserv|majordomo|"
    r"owner-.+|.+-request|.+-owner|bounces?(?:[+=-].*)?)$", re.IGNORECASE)


@dataclass(frozen=True)
class Decision:
    """What to do with one message.  Recipients are bare addresses (no brackets)."""

    verdict: str                                  # support | followup | other
    structure: str | None
    score: float
    rules: tuple[str, ...]
    action: str                # none | tag | copy | redirect | duplicate | skip
    skip_reason: str | None = None
    inspected: bool = True                        # False: no watched/assistance recipient
    group: str | None = None                      # first watch group among the recipients
    assistance: str | None = None                 # the sender's assistance address
    ticket: str | None = None
    add_rcpts: tuple[str, ...] = ()
    del_rcpts: tuple[str, ...] = ()
    strip_headers: tuple[tuple[str, int], ...] = ()   # (name, 1-based index among that name)
    add_headers: tuple[tuple[str, str], ...] = ()     # appended at the end of the header block
    change_headers: tuple[tuple[str, int, str], ...] = ()  # (name, index, new value)
    prepend_headers: tuple[tuple[str, str], ...] = ()  # inserted on top, in this order
    new_body: bytes | None = None
    duplicate: str | None = None                  # match kind when a duplicate was recognised
    duplicate_of: str | None = None               # the earlier copy's Message-ID, when known
    secrets: int = 0                              # secrets found (redacted unless action=tag)
    secret_kinds: tuple[str, ...] = ()
    secret_where: tuple[tuple[str, str], ...] = ()    # (location, kind), never a value
    not_inspected: tuple[str, ...] = ()           # parts the secret scan could not read
    dkim: str | None = None                       # original's DKIM results, when checked
    dkim_trusted: bool | None = None              # a DKIM pass aligned with From, when checked
    hints: tuple[str, ...] = ()                   # what a routed request lacks (vague-subject...)
    guidance_cases: tuple[str, ...] = ()          # rerouted | followup | secret
    guidance_block: str | None = None             # why the sender gets no guidance (pure rules)
    guidance: str | None = None                   # outcome: queued, or suppressed:REASON

    @property
    def changes_envelope(self) -> bool:
        return bool(self.add_rcpts or self.del_rcpts)

    @property
    def changes_content(self) -> bool:
        """True when the body or a signed header changes (DKIM breaks: record it first)."""
        return self.new_body is not None or bool(self.change_headers)

    @property
    def recorded(self) -> bool:
        """Whether the state database keeps a row for this decision."""
        return self.inspected or self.secrets > 0 or bool(self.not_inspected)


# Mail that is not the helpdesk's, out of secrets.scope: nothing read, nothing changed.
UNTOUCHED = Decision(verdict="other", structure=None, score=0.0, rules=(), action="none",
                     inspected=False)


def incoming_helpdesk_headers(fields: Sequence[str] | Sequence[tuple[str, str]],
                              authserv_id: str | None = None) -> tuple[tuple[str, int], ...]:
    """(name, index) of every header we must remove, highest index first.

    That is every X-Helpdesk-* header, and every Authentication-Results that
    claims our ``authserv_id`` (a sender must not forge our verdicts).
    ``fields`` are header names, or (name, value) pairs when A-R must be checked.
    libmilter's chgheader() addresses a header by name and 1-based occurrence
    index; deleting from the highest index down keeps the lower indexes valid.
    """
    counts: dict[str, int] = {}
    found: list[tuple[str, int]] = []
    for item in fields:
        name, value = (item, "") if isinstance(item, str) else item
        key = name.lower()
        counts[key] = counts.get(key, 0) + 1
        if key.startswith(HEADER_PREFIX) or (
                authserv_id and key == "authentication-results"
                and is_own_authentication_results(str(value), authserv_id)):
            found.append((name, counts[key]))
    return tuple(sorted(found, key=lambda item: (item[0].lower(), -item[1])))


@dataclass(frozen=True)
class _Route:
    """What routing needs once the verdict is known (internal to Policy)."""

    env: Envelope
    msg: ParsedMessage
    groups: tuple[tuple[str, WatchGroup], ...]
    assistance_rcpts: tuple[str, ...]
    structure: str | None
    verdict: str
    headers: tuple[tuple[str, str], ...]
    base: dict[str, Any]


def _remember(r: _Route, d: Decision) -> Remember | None:
    """What a later copy must be able to find: requests, and anything sent to assistance."""
    if d.verdict == "other" and not r.assistance_rcpts:
        return None
    removed = {a.lower() for a in d.del_rcpts}
    reached = [a for a in (*d.add_rcpts, *r.assistance_rcpts) if a.lower() not in removed]
    return Remember(side="assistance" if reached else "watched",
                    assistance=reached[0] if reached else None,
                    routed=bool(d.add_rcpts), queue_id=r.env.queue_id or "")


def _automatic(msg: ParsedMessage) -> str | None:
    """Why a message is machine-sent (auto-reply, bulk, list), or None for a person.

    The same rules keep such mail from being rerouted and from getting guidance.
    """
    auto = msg.header("Auto-Submitted").strip().lower()
    if auto and auto.split(";")[0].strip() != "no":
        return SKIP_AUTO
    if msg.header("Precedence").strip().lower() in _BULK_PRECEDENCE:
        return SKIP_BULK
    if msg.has_header("List-Id") or msg.has_header("List-Unsubscribe"):
        return SKIP_LIST
    return None


def _is_bounce(env: Envelope, msg: ParsedMessage) -> bool:
    if not strip_brackets(env.mail_from):
        return True
    return msg.content_type == "multipart/report"


def request_header(verdict: str, structure: str | None, score: float,
                   rules: Sequence[str], ticket: str | None = None) -> str:
    value = (f"{verdict}; structure={structure or 'unknown'}; score={score:.1f}; "
             f"rules={','.join(rules)}")
    if ticket:
        value += f"; ticket={ticket}"
    return value


# The rule named in X-Helpdesk-Request when the envelope alone made it a request.
ASSISTANCE_RCPT = "assistance-rcpt"


class Policy:
    """Immutable, precomputed view of the config; ``decide`` is safe from any thread."""

    def __init__(self, config: Config, *, rules: RuleSet | None = None,
                 model: TextModel | str | None = "config",
                 site: Callable[[], SiteDeltas] | None = None):
        self.config = config
        self.directory = ClientDirectory.from_mapping(config.clients)
        self.rules = rules if rules is not None else RuleSet.load(
            config.classifier.rules_file or None, config.classifier.weights)
        if isinstance(model, str):
            model = load_model(config.classifier.model)
        self.classifier = Classifier(self.rules, model,
                                     overridden=frozenset(config.classifier.weights),
                                     site=site)
        self.ticket_re = re.compile(config.ticket_pattern, re.IGNORECASE)
        local, _, domain = config.addresses.assistance.partition("@")
        self._assistance_re = re.compile(
            "^" + re.escape(local).replace(re.escape("{structure}"), "[^@]+")
            + "@" + re.escape(domain) + "$", re.IGNORECASE)
        self._internal = tuple(config.addresses.internal_domains)
        self.scanner = SecretScanner(disabled_kinds=config.secrets.disabled_kinds)
        # Each recipient is looked at four times per message (steps_out, then routing;
        # is_assistance inside watch_group): the answer depends on the address only.
        self._recipient = functools.lru_cache(maxsize=4096)(self._classify_recipient)

    def is_internal(self, address: str) -> bool:
        """True for an address of an internal domain (``addresses.internal_domains``)."""
        return in_domains(split_address(address)[1], self._internal)

    # --- recipients -----------------------------------------------------------

    def is_assistance(self, address: str) -> bool:
        return self._recipient(strip_brackets(address).lower())[0]

    def watch_group(self, address: str) -> WatchGroup | None:
        """The first watch group that lists this address (assistance is never watched)."""
        return self._recipient(strip_brackets(address).lower())[1]

    def _classify_recipient(self, address: str) -> tuple[bool, WatchGroup | None]:
        """(is it an assistance address, its watch group) of a bare, lower-case address."""
        if address == self.config.addresses.fallback or self._assistance_re.match(address):
            return True, None
        for group in self.config.watch:
            if group.matches(address):
                return False, group
        return False, None

    def is_helpdesk_mail(self, rcpts: Sequence[str]) -> bool:
        """True when a recipient is watched or an assistance address: the helpdesk's mail.

        Decided from the envelope alone, so that the milter can step out at the
        end of the envelope for every other message (``secrets.scope = "helpdesk"``).
        """
        return any(self.is_assistance(r) or self.watch_group(r) is not None for r in rcpts)

    def steps_out(self, rcpts: Sequence[str]) -> bool:
        """True when the message is left alone, untouched, whatever its content: not the
        helpdesk's mail, and secrets are only redacted in the helpdesk's mail."""
        return self.config.secrets.scope == "helpdesk" and not self.is_helpdesk_mail(rcpts)

    # --- the decision ---------------------------------------------------------

    def decide(self, env: Envelope, msg: ParsedMessage, *, too_large: bool = False,
               state: DedupState | None = None) -> Decision:
        """Route the message, then redact its secrets (within ``secrets.scope``).

        ``state`` gives duplicate detection across transactions: the earlier
        copy of this request, found and remembered atomically; without it only
        same-transaction duplicates are recognised.  Mail that ``steps_out`` gets
        an empty decision: the milter accepts it before its content arrives.
        """
        if self.steps_out(env.rcpts):
            return UNTOUCHED
        # The secret scan walks and decodes every text part; the classifier and
        # the fingerprint then read its text, secrets already replaced, from that
        # walk instead of parsing the MIME tree again.
        found = self._scan(env, msg, too_large=too_large)
        if found is not None:
            msg.adopt_texts(found.texts, subject=found.subject_text)
        decision = self._route(env, msg, too_large=too_large, state=state)
        decision = self._redact(decision, found, too_large=too_large)
        return self._guide(env, msg, decision)

    def _scan(self, env: Envelope, msg: ParsedMessage, *, too_large: bool) -> Redaction | None:
        action = self.config.secrets.action
        if too_large or action == "off":
            return None
        if env.auth_user and not self.config.secrets.outgoing:
            # Staff's authenticated submission (SPEC: left alone unless configured):
            # a temporary password sent to a client is meant to arrive.
            return None
        with stage("secrets"):
            return redact_message(msg.raw, self.scanner, marker=self.config.secrets.marker,
                                  change=action == "redact", is_bounce=_is_bounce(env, msg))

    @staticmethod
    def _redact(decision: Decision, found: Redaction | None, *,
                too_large: bool = False) -> Decision:
        if too_large:
            return replace(decision, not_inspected=("larger than milter.max_scan_size",),
                           add_headers=(*decision.add_headers, (
                               "X-Helpdesk-Inspected",
                               "no; not inspected: larger than milter.max_scan_size")))
        if found is None:
            return decision
        if found.defects:
            # Parts the walk could not read were left exactly as they came: say so,
            # since a secret in them was not removed.  (Defects name parts and
            # reasons, never content.)
            decision = replace(decision, not_inspected=found.defects, add_headers=(
                *decision.add_headers,
                ("X-Helpdesk-Inspected", "partial; not inspected: "
                 + "; ".join(d.replace(", left unchanged", "") for d in found.defects[:5]))))
        if not found.count:
            return decision
        header = (f"count={found.count}; kinds={','.join(found.kinds)}; "
                  f"action={'redact' if found.body is not None or found.subject else 'tag'}")
        return replace(
            decision,
            add_headers=(*decision.add_headers, ("X-Helpdesk-Redacted", header)),
            new_body=found.body,
            change_headers=(("Subject", 1, found.subject),) if found.subject else (),
            secrets=found.count, secret_kinds=found.kinds, secret_where=found.where)

    def _guide(self, env: Envelope, msg: ParsedMessage, d: Decision) -> Decision:
        """Hints for the helpdesk on routed requests; whether the sender may get guidance.

        The rules here are the message's own (RFC 3834 and loop brakes); rate
        limits and DKIM trust need state and DNS, and are the engine's.
        """
        cases: list[str] = []
        if d.action in ("copy", "redirect"):
            cases.append("followup" if d.verdict == "followup" else "rerouted")
            with stage("hints"):
                hints = guidance_hints(msg.subject, msg.text)
            if hints:
                d = replace(d, hints=hints, add_headers=(
                    *d.add_headers, ("X-Helpdesk-Hints", ", ".join(hints))))
        if d.secrets and d.changes_content:
            cases.append("secret")
        if not cases or not self.config.autoreply.enabled:
            return d
        return replace(d, guidance_cases=tuple(cases),
                       guidance_block=self._guidance_block(env, msg))

    def _guidance_block(self, env: Envelope, msg: ParsedMessage) -> str | None:
        sender = strip_brackets(env.mail_from).lower()
        if not sender:
            return "null-sender"
        if env.auth_user:
            return "authenticated"
        local, domain = split_address(sender)
        if in_domains(domain, self._internal):
            return "internal"
        if _NO_REPLY_LOCAL.match(local):
            return "no-reply-sender"
        automatic = _automatic(msg)
        if automatic:
            return automatic
        if self.config.autoreply.trust != "any" and self.directory.lookup(sender) is None:
            return "unknown-sender"
        return None

    def _route(self, env: Envelope, msg: ParsedMessage, *, too_large: bool,
               state: DedupState | None) -> Decision:
        authserv_id = self.config.milter.authserv_id
        # (most mail has neither kind of field: one search of the bytes says so)
        strip = incoming_helpdesk_headers(msg.header_fields(), authserv_id) \
            if msg.header_block_mentions(HEADER_PREFIX.encode(),
                                         b"authentication-results" if authserv_id else
                                         HEADER_PREFIX.encode()) else ()

        rcpts = [strip_brackets(r) for r in env.rcpts]
        groups: list[tuple[str, WatchGroup]] = []
        assistance_rcpts: list[str] = []
        for rcpt in rcpts:
            if self.is_assistance(rcpt):
                assistance_rcpts.append(rcpt)
                continue
            group = self.watch_group(rcpt)
            if group is not None:
                groups.append((rcpt, group))

        if not groups and not assistance_rcpts:
            # Not our mail: only our forged headers go.
            return Decision(verdict="other", structure=None, score=0.0, rules=(),
                            action="none", inspected=False, strip_headers=strip)

        sender = strip_brackets(env.mail_from).lower()
        structure = self.directory.lookup(msg.from_addr) or self.directory.lookup(sender)
        skip = self._skip_reason(env, msg, sender, too_large=too_large)
        if skip:
            header = request_header("other", structure, 0.0, ("skip-" + skip,))
            return Decision(verdict="other", structure=structure, score=0.0,
                            rules=("skip-" + skip,), action="skip", skip_reason=skip,
                            group=groups[0][1].name if groups else None,
                            strip_headers=strip,
                            add_headers=(("X-Helpdesk-Request", header),))

        ticket = None
        rules: tuple[str, ...]
        match = self.ticket_re.search(msg.subject)
        if match:
            verdict = "followup"
            ticket = match.group(1) if match.groups() else match.group(0)
            score, rules = 0.0, ("ticket-subject",)
        else:
            with stage("classify"):
                result = self.classifier.score(
                    msg.subject, msg.text, known_client=structure is not None,
                    known_client_weight=self.config.classifier.known_client_weight)
            score, rules = result.score, result.rules
            verdict = "support" if score >= self.config.classifier.threshold else "other"
            if verdict == "other" and assistance_rcpts and groups:
                # The sender wrote to assistance *and* a watched address: they said
                # it is a request, whatever the text says.  The watched copy is then
                # a same-transaction duplicate (below).
                verdict = "support"
                rules = (*rules, ASSISTANCE_RCPT)

        headers: list[tuple[str, str]] = [
            ("X-Helpdesk-Request", request_header(verdict, structure, score, rules, ticket))]
        route = _Route(env=env, msg=msg, groups=tuple(groups),
                       assistance_rcpts=tuple(assistance_rcpts), structure=structure,
                       verdict=verdict, headers=tuple(headers),
                       base=dict(verdict=verdict, structure=structure, score=score,
                                 rules=rules, ticket=ticket, strip_headers=strip,
                                 group=groups[0][1].name if groups else None))
        if state is None or (verdict == "other" and not assistance_rcpts):
            # Not a request to a watched address: nothing to compare or remember.
            return self._routing(route, None)
        with stage("dedup"):
            fp = fingerprint(msg, sender=msg.from_addr or sender, structure=structure,
                             resolve=self.directory.lookup)
            decided: list[Decision] = []

            def plan(match: Match | None) -> Remember | None:
                decided.append(self._routing(route, match))
                return _remember(route, decided[-1])

            state.check_and_remember(fp, plan)
        return decided[-1]

    def _routing(self, r: _Route, match: Match | None) -> Decision:
        """Route given the earlier copy of this request, if any (``match``)."""
        headers = list(r.headers)
        base = r.base
        dedup = self.config.dedup

        def duplicate(of: str, kind: str, removed: tuple[str, ...],
                      assistance: str | None) -> Decision:
            headers.append(("X-Helpdesk-Duplicate", f"of={of or 'unknown'}; match={kind}; "
                                                    f"action={'drop' if removed else 'tag'}"))
            return Decision(action="duplicate", assistance=assistance, del_rcpts=removed,
                            add_headers=tuple(headers), duplicate=kind,
                            duplicate_of=of or None, **base)  # type: ignore[arg-type]

        if not r.groups:
            # Addressed to assistance only.  A second arrival of a request that
            # assistance already has is a duplicate; it may be dropped only when
            # the earlier copy provably reached this very address.
            if match is not None and match.assistance_has_it:
                this = r.assistance_rcpts[0]
                drop = (dedup.action == "drop" and match.same_scope
                        and (match.earlier_assistance or "").lower() == this.lower())
                removed = tuple(a for a in r.assistance_rcpts if a.lower() == this.lower()) \
                    if drop else ()
                return duplicate(match.of_message_id, match.kind, removed, this)
            return Decision(action="none", add_headers=tuple(headers),
                            **base)  # type: ignore[arg-type]

        if r.verdict == "other":
            return Decision(action="none", add_headers=tuple(headers),
                            **base)  # type: ignore[arg-type]

        # Recipients of tag-mode groups are never removed, whatever dedup says.
        droppable = tuple(a for a, g in r.groups if g.mode != "tag")
        if r.assistance_rcpts:
            # Same transaction: assistance already gets this copy; the watched side
            # is the duplicate.  Never add a second assistance recipient.  When
            # assistance also has an earlier copy (a resend to both), that copy is
            # the one to name: the helpdesk must see that this one is no new request.
            removed = droppable if dedup.action == "drop" else ()
            if match is not None and match.assistance_has_it:
                return duplicate(match.of_message_id, match.kind, removed,
                                 r.assistance_rcpts[0])
            return duplicate(r.msg.message_id, "same-transaction", removed,
                             r.assistance_rcpts[0])

        if match is not None and match.assistance_has_it:
            # Assistance already has this request (sent there first, or routed
            # there earlier): rerouting it again would open a second ticket.
            removed = droppable if dedup.action == "drop" and match.same_scope else ()
            return duplicate(match.of_message_id, match.kind, removed,
                             match.earlier_assistance)

        target = self.config.addresses.assistance_for(r.structure)
        modes = {g.mode for _, g in r.groups}
        if modes == {"tag"}:
            return Decision(action="tag", assistance=target, add_headers=tuple(headers),
                            **base)  # type: ignore[arg-type]

        # No assistance address is among the recipients (that case returned above),
        # so the target is always added here, and removal is safe.
        removed = tuple(a for a, g in r.groups if g.mode == "redirect")
        mode = "redirect" if removed else "copy"
        headers.append(("X-Helpdesk-Routed", f"to={target}; mode={mode}"))
        return Decision(action=mode, assistance=target, add_rcpts=(target,), del_rcpts=removed,
                        add_headers=tuple(headers), **base)  # type: ignore[arg-type]

    def _skip_reason(self, env: Envelope, msg: ParsedMessage, sender: str, *,
                     too_large: bool) -> str | None:
        if too_large:
            return SKIP_TOO_LARGE
        if not sender or sender == "<>":
            return SKIP_BOUNCE
        if env.auth_user:
            return SKIP_AUTHENTICATED
        if in_domains(domain_of(sender), self._internal) or (
                msg.from_addr and in_domains(domain_of(msg.from_addr), self._internal)):
            return SKIP_INTERNAL
        return _automatic(msg)
