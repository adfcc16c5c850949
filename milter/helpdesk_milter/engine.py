"""One message in, one decision out: parse, decide, log, record.

``Engine`` is what the milter adapter and the ``try`` command share.  It owns
no per-message state, so one instance serves every milter thread.  It logs
one line per message, with Postfix's queue id, and never a Subject or body
(they can hold secrets): only addresses, the verdict and the action.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from email.policy import SMTP as SMTP_POLICY

from .auth import (
    ArcError,
    ArcSealer,
    DkimResult,
    DnsFunc,
    authentication_results,
    make_dnsfunc,
    verify_arc,
    verify_dkim,
)
from .config import Config
from .dedup import Fingerprint, Match, fingerprint
from .directory import domain_of, in_domains
from .guidance import build_message, compose, detect_language
from .learn import Example, Forward, Learning, carried_forward, without_secrets
from .logs import write_info
from .message import Envelope, ParsedMessage, build_raw, strip_brackets
from .policy import Decision, Policy
from .stages import stage
from .store import (
    DecisionRecord,
    GuidanceEvent,
    NullStore,
    ObservedRecord,
    OutboxRow,
    Pending,
    Plan,
    Store,
)

log = logging.getLogger("helpdesk_milter")


def log_info(line: str) -> None:
    """Log one INFO line the short way: no caller lookup (``findCaller`` walks the
    stack on every ``log.info``), no %-formatting: the line is built once, and when
    logging is set up simply, written straight to its stream (``logs.write_info``)."""
    if log.isEnabledFor(logging.INFO) and not write_info(log, line):
        log.handle(log.makeRecord(log.name, logging.INFO, "", 0, line, (), None))


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    message: ParsedMessage
    # the state this message leaves, until the milter says it went through
    pending: Pending = field(default_factory=Pending, compare=False, repr=False)
    # a staff forward to assistance: the label it teaches, learned once it went through
    lesson: Callable[[], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class _Deferred:
    """The store as the policy sees it for one message: writes held in ``pending``."""

    store: Store
    pending: Pending

    def check_and_remember(self, fp: Fingerprint, plan: Plan) -> Match | None:
        return self.store.check_and_remember(fp, plan, pending=self.pending)


class Engine:
    """Shared by every milter thread; holds only immutable or thread-safe parts.

    ``dnsfunc`` (DKIM key lookups) and ``sealer`` (ARC) are injected, as dkimpy
    does, so tests control DNS and keys.  Without a ``dnsfunc`` the system's
    resolvers are used, through a bounded cache.
    """

    def __init__(self, config: Config, *, store: Store | None = None,
                 clock: Callable[[], float] = time.time, policy: Policy | None = None,
                 dnsfunc: DnsFunc | None = None, sealer: ArcSealer | None = None,
                 learning: Learning | None = None):
        self.config = config
        self.learning = learning
        self.policy = policy or Policy(config)
        self.store: Store = store or NullStore()
        self.clock = clock
        self.dnsfunc = dnsfunc or make_dnsfunc(config.dns.resolver, config.dns.timeout,
                                               config.dns.cache_ttl)
        self.sealer = sealer
        # milter.mode = "observe": decide, log and record, change nothing (see observe)
        self.observing = config.milter.mode == "observe"

    def steps_out(self, rcpts: Sequence[str]) -> bool:
        """True when a message for ``rcpts`` is accepted untouched at the end of the
        envelope, its content unread (``Policy.steps_out``); then ``stepped_out`` logs it."""
        return self.policy.steps_out(rcpts)

    @staticmethod
    def stepped_out(queue_id: str | None, mail_from: str, nrcpt: int) -> None:
        log_info(f"{queue_id or 'NOQUEUE'}: not watched: from=<{mail_from}> nrcpt={nrcpt} "
                 "accepted at end of envelope")

    def process(self, env: Envelope, headers: Sequence[tuple[str, bytes | str]], body: bytes,
                *, size: int | None = None, too_large: bool = False,
                leading_space: bool = False, defer: bool = False) -> Outcome:
        """Decide on one message given as milter header fields and body bytes."""
        raw = build_raw(headers, body, leading_space=leading_space)
        return self.process_raw(env, raw, size=size, too_large=too_large, defer=defer)

    def process_raw(self, env: Envelope, raw: bytes, *, size: int | None = None,
                    too_large: bool = False, defer: bool = False) -> Outcome:
        """Decide; with ``defer``, what the message leaves in the state (fingerprint,
        guidance mail, decision row) waits for ``commit`` or ``abort``."""
        pending = Pending()
        try:
            with stage("parse"):
                msg = ParsedMessage(raw)
                # parse lazily-computed fields here, so "parse" holds all parsing
                _ = msg.subject, msg.from_addr
            decision = self.policy.decide(env, msg, too_large=too_large,
                                          state=_Deferred(self.store, pending))
            if decision.changes_content:
                decision = self._authenticate(msg, decision)
            if decision.guidance_cases:
                decision = self._guidance(env, msg, decision, pending)
            size = len(raw) if size is None else size
            self._log(env, msg, decision, size, observe=self.observing)
            if decision.recorded:
                with stage("store"):
                    self.store.record(self._record(env, msg, decision, size),
                                      pending=pending)
        except BaseException:
            self.store.abort(pending)
            raise
        outcome = Outcome(decision, msg, pending, lesson=self._lesson(env, msg, decision))
        if not defer:
            self.commit(outcome)
        return outcome

    def commit(self, outcome: Outcome) -> None:
        """The message went through as decided: keep its state (and learn from it)."""
        self.store.commit(outcome.pending)
        if outcome.lesson is not None:
            outcome.lesson()

    def _lesson(self, env: Envelope, msg: ParsedMessage,
                decision: Decision) -> Callable[[], None] | None:
        """For a staff member's forward of an outside mail to an assistance address:
        the label it teaches (``learning.forwards``), to learn once it went through.
        Cheap checks first: most mail stops at the first line."""
        learning = self.learning
        if learning is None or not self.config.learning.forwards \
                or decision.skip_reason not in ("internal", "authenticated") \
                or not any(self.policy.is_assistance(strip_brackets(r)) for r in env.rcpts):
            return None
        try:
            forward = carried_forward(msg)
        except Exception:
            log.exception("%s: cannot read a forward; not learned from", env.queue_id or "-")
            return None
        if forward is None or not forward.original_from \
                or self.policy.is_internal(forward.original_from):
            return None  # a staff member's own text is not a client request

        def learn() -> None:
            try:
                self._learn_forward(env, msg, forward, learning)
            except Exception:
                log.exception("%s: learning from a forward failed (the mail went through)",
                              env.queue_id or "-")

        return learn

    def _learn_forward(self, env: Envelope, msg: ParsedMessage, forward: Forward,
                       learning: Learning) -> None:
        policy = self.policy
        structure = policy.directory.lookup(forward.original_from)
        fp = fingerprint(msg, sender=forward.original_from, structure=structure)
        original = learning.find_original(forward, fp, now=self.clock(),
                                          window=self.config.dedup.window,
                                          threshold=self.config.dedup.similarity)
        marker = self.config.secrets.marker
        example = Example.of(without_secrets(forward.subject, policy.scanner, marker),
                             without_secrets(forward.text, policy.scanner, marker), policy.rules,
                             policy.classifier.model, label="support",
                             known_client=structure is not None)
        routed = None if original is None else (
            True if original.routed else False if original.watched else None)
        learning.learn(example, source="forward",
                       message_id=original.message_id if original else forward.original_id,
                       routed=routed, original_time=original.time if original else None)
        log.info("%s: learned a request from a staff forward (original %s)",
                 env.queue_id or "-", "not seen" if routed is None
                 else "routed" if routed else "missed: it reached a watched address and "
                 "was not routed")

    def abort(self, outcome: Outcome) -> None:
        """The decision was not applied: forget it, so a retry starts afresh."""
        self.store.abort(outcome.pending)

    def observe(self, outcome: Outcome, rcpts: Sequence[str] = ()) -> None:
        """Observe mode: the message went through unchanged.  Keep only what the
        decision would have done, as an ``observed`` row; forget its fingerprint (a
        later copy must not be dropped as the duplicate of a copy that never reached
        assistance) and its guidance mail (never sent), and learn nothing."""
        records = [item for item in outcome.pending.items if isinstance(item, DecisionRecord)]
        self.store.abort(outcome.pending)
        d = outcome.decision
        for rec in records:
            outcome.pending.items.append(ObservedRecord(
                time=rec.time, queue_id=rec.queue_id, message_id=rec.message_id,
                mail_from=rec.mail_from, from_addr=rec.from_addr,
                rcpts=",".join(strip_brackets(r) for r in rcpts), structure=rec.structure,
                verdict=rec.verdict, score=rec.score, rules=rec.rules, action=rec.action,
                skip_reason=rec.skip_reason, watch_group=rec.watch_group,
                assistance=rec.assistance, added=rec.added, removed=rec.removed,
                duplicate=rec.duplicate, size=rec.size, secrets=rec.secrets,
                secret_kinds=rec.secret_kinds, guidance=d.guidance or ""))
        self.store.commit(outcome.pending)

    def _verify_dkim(self, msg: ParsedMessage) -> tuple[DkimResult, ...]:
        with stage("dkim"):
            return verify_dkim(msg.raw, self.dnsfunc,
                               from_domain=domain_of(msg.from_addr) or None,
                               timeout=self.config.dns.timeout)

    def _authenticate(self, msg: ParsedMessage, decision: Decision) -> Decision:
        """Record the original's DKIM result before we change it, and ARC-seal the change.

        RFC 8601: Authentication-Results goes on top.  With ARC, the seal covers
        the message as it will be delivered (our header changes and new body).
        """
        authserv_id = self.config.milter.authserv_id
        results = self._verify_dkim(msg)
        with stage("dkim"):
            arc = verify_arc(msg.raw, self.dnsfunc, timeout=self.config.dns.timeout) \
                if self.sealer else None
        ar = authentication_results(authserv_id, results, arc=arc)
        prepend: tuple[tuple[str, str], ...] = (("Authentication-Results", ar),)
        decision = replace(decision, prepend_headers=prepend,
                           dkim=",".join(r.result for r in results),
                           dkim_trusted=any(r.trusted for r in results))
        if self.sealer is None:
            return decision
        with stage("arc"):
            try:
                seal = self.sealer.seal(rewrite_raw(msg.raw, decision), ar)
            except ArcError as exc:
                log.warning("ARC sealing skipped: %s", exc)
                return decision
        return replace(decision, prepend_headers=(*seal, *prepend))

    def _guidance(self, env: Envelope, msg: ParsedMessage, d: Decision,
                  pending: Pending) -> Decision:
        """Queue one guidance mail to the sender, unless a rule, a limit or trust says no.

        Checked cheapest first: the policy's message rules, then the rate limits
        (one mail per sender per ``every``, a global cap per hour), then trust
        (``known-dkim``: a DKIM pass aligned with From, or a trusted relay).
        Only a row is written here; the outbox thread sends it.
        """
        settings = self.config.autoreply
        to_addr = strip_brackets(env.mail_from)
        reason = d.guidance_block
        if reason is None and not self.store.limits_in_claim:
            reason = self.store.guidance_allowed(to_addr, every=settings.every,
                                                 per_hour=settings.max_per_hour)
        if reason is None and settings.trust == "known-dkim" \
                and (env.client_addr or "") not in settings.trusted_relays:
            trusted = d.dkim_trusted
            if trusted is None:
                trusted = any(r.trusted for r in self._verify_dkim(msg))
            # DKIM vouches for From; the guidance goes to the envelope sender, which
            # must then be in the same domain.
            sender_domain, from_domain = domain_of(to_addr), domain_of(msg.from_addr)
            if not trusted:
                reason = "dkim-not-aligned"
            elif not (in_domains(sender_domain, (from_domain,))
                      or in_domains(from_domain, (sender_domain,))):
                reason = "sender-not-from"
        if reason is not None:
            self.store.record_guidance_event(GuidanceEvent(
                time=self.clock(), to_addr=to_addr.lower(), queue_id=env.queue_id or "",
                outcome="suppressed", reason=reason), pending=pending)
            return replace(d, guidance=f"suppressed:{reason}")

        def build() -> OutboxRow:
            return self._compose(env, msg, d, to_addr)

        outcome = self.store.queue_guidance(to_addr, build, every=settings.every,
                                            per_hour=settings.max_per_hour,
                                            queue_id=env.queue_id or "", pending=pending)
        return replace(d, guidance=outcome if outcome == "queued" else f"suppressed:{outcome}")

    def _compose(self, env: Envelope, msg: ParsedMessage, d: Decision,
                 to_addr: str) -> OutboxRow:
        settings = self.config.autoreply
        # msg.subject and msg.text have their secrets replaced (Policy.decide)
        lang = detect_language(msg.subject, msg.text)
        assistance = d.assistance or self.config.addresses.assistance_for(d.structure)
        # the whole tag ("[example #1234]"): that is what the client must keep
        tag = self.policy.ticket_re.search(msg.subject) if d.ticket else None
        guide = compose(cases=d.guidance_cases, lang=lang, assistance=assistance,
                        original_subject=msg.subject, hints=d.hints,
                        paste_url=settings.paste_url, ticket=tag.group(0) if tag else None,
                        templates_dir=settings.templates_dir or None)
        for problem in guide.fallbacks:
            log.warning("guidance template override not used: %s", problem)
        references = " ".join(filter(None, (msg.header("References"), msg.message_id)))
        mail = build_message(guide, sender=settings.sender, to=to_addr,
                             in_reply_to=msg.message_id or None,
                             references=references or None,
                             message_id_domain=domain_of(settings.sender) or "localhost")
        return OutboxRow(created=self.clock(), to_addr=to_addr.lower(),
                         queue_id=env.queue_id or "", lang=lang,
                         cases=",".join(d.guidance_cases),
                         message=mail.as_bytes(policy=SMTP_POLICY))   # CRLF, as SMTP wants

    def _record(self, env: Envelope, msg: ParsedMessage, d: Decision,
                size: int) -> DecisionRecord:
        rcpts = [strip_brackets(r) for r in env.rcpts]
        return DecisionRecord(
            time=self.clock(), queue_id=env.queue_id or "", message_id=msg.message_id,
            mail_from=env.mail_from.lower(), from_addr=msg.from_addr, structure=d.structure,
            verdict=d.verdict, score=round(d.score, 2), rules=",".join(d.rules),
            action=d.action, skip_reason=d.skip_reason, watch_group=d.group,
            assistance=d.assistance, added=",".join(d.add_rcpts),
            removed=",".join(d.del_rcpts), duplicate=d.duplicate, size=size,
            secrets=d.secrets, secret_kinds=",".join(d.secret_kinds),
            rcpts=",".join(rcpts), final_rcpts=",".join(_final_rcpts(rcpts, d)),
            duplicate_of=d.duplicate_of)

    @staticmethod
    def _log(env: Envelope, msg: ParsedMessage, d: Decision, size: int, *,
             observe: bool = False) -> None:
        qid = env.queue_id or "NOQUEUE"
        secrets = " mode=observe" if observe else ""
        if d.not_inspected:
            secrets += f" not-inspected={len(d.not_inspected)}"
        if d.secrets:
            secrets += (f" secrets={d.secrets} secret-kinds={','.join(d.secret_kinds)}"
                        f" secret-action={'redact' if d.changes_content else 'tag'}")
            if d.dkim:
                secrets += f" dkim={d.dkim}"
        if not d.inspected:
            if d.guidance:
                secrets += f" guidance={d.guidance}"
            log_info(f"{qid}: not watched: from=<{env.mail_from}> nrcpt={len(env.rcpts)} "
                     f"size={size}{secrets}"
                     + (f" removed-forged-headers={len(d.strip_headers)}"
                        if d.strip_headers else ""))
            return
        parts = [f"{qid}:", f"verdict={d.verdict}", f"action={d.action}",
                 f"structure={d.structure or 'unknown'}", f"score={d.score:.1f}",
                 f"from=<{env.mail_from}>", f"nrcpt={len(env.rcpts)}", f"size={size}"]
        if d.skip_reason:
            parts.append(f"skipped={d.skip_reason}")
        if d.group:
            parts.append(f"group={d.group}")
        if d.add_rcpts:
            parts.append("added=" + ",".join(f"<{r}>" for r in d.add_rcpts))
        if d.del_rcpts:
            parts.append("removed=" + ",".join(f"<{r}>" for r in d.del_rcpts))
        if d.duplicate:
            parts.append(f"duplicate={d.duplicate}")
        if d.ticket:
            parts.append(f"ticket={d.ticket}")
        if secrets:
            parts.append(secrets.strip())
        if d.hints:
            parts.append(f"hints={','.join(d.hints)}")
        if d.guidance:
            parts.append(f"guidance={d.guidance}")
        if d.strip_headers:
            parts.append(f"removed-forged-headers={len(d.strip_headers)}")
        parts.append(f"rules={','.join(d.rules) or '-'}")
        if msg.message_id:
            parts.append(f"message-id={msg.message_id}")
        log_info(" ".join(parts))


def _final_rcpts(rcpts: Sequence[str], d: Decision) -> list[str]:
    """The recipients the message leaves with: those it came with, minus the removed
    ones, plus the added ones (what Postfix delivers to once the milter is done)."""
    if not d.changes_envelope:
        return list(rcpts)
    removed = {r.lower() for r in d.del_rcpts}
    return [r for r in rcpts if r.lower() not in removed] + list(d.add_rcpts)


def rewrite_raw(raw: bytes, decision: Decision) -> bytes:
    """Apply a decision's header and body changes to raw message bytes (``try --output``).

    Mirrors what the milter asks Postfix to do: remove the listed header
    occurrences, append the new headers at the end of the header block, and
    replace the body when the decision has a new one.
    """
    first = raw.find(b"\n")
    newline = b"\r\n" if first > 0 and raw[first - 1:first] == b"\r" else b"\n"
    head, sep, body = raw.partition(newline + newline)
    if not sep:                      # a header-only message
        head, body = raw.rstrip(b"\r\n"), b""
    # group physical lines into fields (continuation lines start with blanks)
    fields: list[list[bytes]] = []
    for line in head.split(newline):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    drop = {(name.lower(), index) for name, index in decision.strip_headers}
    change = {(name.lower(), index): value for name, index, value in decision.change_headers}
    counts: dict[str, int] = {}
    kept: list[bytes] = [_field(name, value, newline) for name, value in
                         decision.prepend_headers]
    for lines in fields:
        name = lines[0].split(b":", 1)[0].decode("ascii", "replace").strip().lower()
        counts[name] = counts.get(name, 0) + 1
        if (name, counts[name]) in drop:
            continue
        if (name, counts[name]) in change:
            original = lines[0].split(b":", 1)[0].decode("ascii", "replace")
            kept.append(_field(original, change[(name, counts[name])], newline))
            continue
        kept.append(newline.join(lines))
    for name, value in decision.add_headers:
        kept.append(_field(name, value, newline))
    new_body = decision.new_body if decision.new_body is not None else body
    if decision.new_body is not None and newline == b"\n":
        new_body = new_body.replace(b"\r\n", b"\n")
    return newline.join(kept) + newline + newline + new_body


def _field(name: str, value: str, newline: bytes) -> bytes:
    # Values may be folded with bare LF (what Postfix expects from a milter).
    folded = value.replace("\r\n", "\n").replace("\n", newline.decode())
    return f"{name}: {folded}".encode("utf-8", "surrogateescape")
