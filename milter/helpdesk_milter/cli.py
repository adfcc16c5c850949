"""The ``helpdesk-milter`` command: run, check-config, try, report.

Every sub-command exits 0 on success, 1 when the input is wrong (bad config,
unreadable message) with a message that says what to fix, and 2 on usage
errors (argparse).  No traceback reaches the user for a bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, build
from .classify import RulesError, RuleSet
from .config import Config, ConfigError, LoggingSettings, load_config, parse_duration
from .message import Envelope, strip_brackets

if TYPE_CHECKING:
    from .auth import ArcSealer

# engine/store/app are imported inside the commands: sqlite-utils imports numpy
# when it is installed, and numpy's OpenBLAS starts threads at import time; the
# daemon must block its signals before any thread exists (see cmd_run).

DEFAULT_CONFIG = "/etc/helpdesk-milter/config.toml"

EPILOG = """\
examples:
  helpdesk-milter check-config --config /etc/helpdesk-milter/config.toml
  helpdesk-milter try --config config.toml --rcpt contact@example.org request.eml
  helpdesk-milter run --config /etc/helpdesk-milter/config.toml
  helpdesk-milter report --config /etc/helpdesk-milter/config.toml --since 7d
"""


def _load(path: str) -> tuple[Config, RuleSet]:
    config = load_config(path)
    rules = RuleSet.load(config.classifier.rules_file or None, config.classifier.weights)
    from .model import ModelError, load_model
    try:
        load_model(config.classifier.model)
    except ModelError as exc:
        raise ConfigError([f"classifier.model: {exc}"]) from None
    if config.autoreply.templates_dir:
        from .guidance import TemplateError, check_templates
        try:
            check_templates(config.autoreply.templates_dir)
        except TemplateError as exc:
            raise ConfigError([f"autoreply.templates_dir: {line}"
                               for line in str(exc).splitlines()]) from None
    return config, rules


def _policy_and_learning(config: Config, rules: RuleSet, *, readonly: bool = False
                         ) -> tuple[Any, Any]:
    """The policy, reading the site's learned deltas from the state database, and the
    learned state itself (None without a model, or read-only with no database)."""
    from .learn import Learning
    from .model import load_model
    from .policy import Policy
    model = load_model(config.classifier.model)
    if model is None or (readonly and not Path(config.milter.database).is_file()):
        return Policy(config, rules=rules, model=model), None
    learning = Learning(config.milter.database, model, rules,
                        threshold=config.classifier.threshold,
                        max_examples=config.learning.max_examples, readonly=readonly)
    # open (and migrate) the learned state now, not at the first message: a problem
    # shows at start, and the process keeps the same files open from then on
    learning.site()
    return Policy(config, rules=rules, model=model, site=learning.site), learning


def _fail(message: str) -> int:
    print(f"helpdesk-milter: {message}", file=sys.stderr)
    return 1


def _config_problem(exc: ConfigError | RulesError) -> int:
    problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
    print(f"helpdesk-milter: the configuration has {len(problems)} problem"
          f"{'s' if len(problems) != 1 else ''}:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1


def setup_logging(level: str = "info", settings: LoggingSettings | None = None) -> None:
    """stderr or syslog, text or JSON ([logging]); see logs.py."""
    from .logs import setup_logging as setup
    setup(level, settings)


# --- run ---------------------------------------------------------------------------


def _arc_sealer(config: Config) -> ArcSealer | None:
    """The ARC sealer ``[arc]`` asks for (None when off); a key that cannot be read is
    a ConfigError naming ``arc.private_key``.  (dkimpy's ARC code loads only then.)"""
    if not config.arc.enabled:
        return None
    from .auth import ArcError, ArcSealer
    try:
        return ArcSealer.from_file(config.arc.domain, config.arc.selector,
                                   config.arc.private_key, config.milter.authserv_id)
    except ArcError as exc:
        raise ConfigError([f"arc.private_key: {exc}"]) from None

def cmd_run(args: argparse.Namespace) -> int:
    # libmilter catches SIGTERM/SIGINT/SIGHUP with sigwait() in its own thread.
    # That only works if no other thread can take them, so block them before
    # any thread starts (our store writer, libmilter's workers, or threads a C
    # extension starts at import): threads inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    try:
        config, rules = _load(args.config)
    except (ConfigError, RulesError) as exc:
        return _config_problem(exc)
    unsafe = unsafe_permissions(Path(args.config), config)
    if unsafe:
        for problem in unsafe:
            print(f"helpdesk-milter: refusing to start: {problem}", file=sys.stderr)
        return 1
    if args.socket or args.database:
        from dataclasses import replace
        config = replace(config, milter=replace(
            config.milter, socket=args.socket or config.milter.socket,
            database=args.database or config.milter.database))
    setup_logging(config.milter.log_level, config.logging)
    for doubt in config.doubts:
        logging.getLogger("helpdesk_milter").warning("configuration: %s", doubt)
    from .app import SocketInUse, claim_socket, serve  # pymilter: only run needs it
    from .engine import Engine
    from .store import SQLiteStore, Store
    try:
        # first: a second instance must not open the state or send guidance mail
        socket_lock = claim_socket(config.milter.socket)
    except SocketInUse as exc:
        return _fail(f"refusing to start: {exc}")
    except OSError as exc:
        # the socket's folder is missing and cannot be made, or not writable by us
        return _fail(f"cannot prepare the socket {config.milter.socket}: "
                     f"{exc.strerror or exc} ({exc.filename or 'its folder'}); create the "
                     "folder, owned by the milter's user (README: Install on Debian)")
    try:
        sealer = _arc_sealer(config)
    except ConfigError as exc:
        return _config_problem(exc)
    try:
        if config.state.backend == "redis":       # redis-py only then (0.15 s to import)
            from .redis_store import open_store
            store: Store = open_store(config)     # Redis beside the SQLite file
        else:
            store = SQLiteStore(config.milter.database, window=config.dedup.window,
                                similarity=config.dedup.similarity)
    except Exception as exc:
        return _fail(f"cannot open the state ({config.milter.database}, backend "
                     f"{config.state.backend}): {exc}")
    policy, learning = _policy_and_learning(config, rules)
    engine = Engine(config, store=store, policy=policy, sealer=sealer, learning=learning)
    from .metrics import make_metrics
    try:
        metrics = make_metrics(config.metrics.listen, observe=engine.observing)
    except OSError as exc:
        store.close()
        return _fail(f"metrics.listen: cannot listen on {config.metrics.listen}: "
                     f"{exc.strerror or exc}")

    def rebuild(running: Config) -> Engine:
        """SIGHUP: the config, client CSVs, rules, model and templates read again and
        checked as at start; raises ConfigError and the running engine stays."""
        from .app import keep_restart_only
        new, rules = _load(args.config)
        unsafe = unsafe_permissions(Path(args.config), new)
        if unsafe:
            raise ConfigError(unsafe)
        new, changed = keep_restart_only(running, new)
        for key in changed:
            logging.getLogger("helpdesk_milter").warning(
                "reload: %s changed; it takes effect at the next restart", key)
        for doubt in new.doubts:
            logging.getLogger("helpdesk_milter").warning("configuration: %s", doubt)
        new_sealer = _arc_sealer(new)
        new_policy, new_learning = _policy_and_learning(new, rules)
        return Engine(new, store=store, policy=new_policy, sealer=new_sealer,
                      learning=new_learning)

    sender = None
    if config.autoreply.enabled:
        from .outbox import OutboxSender
        sender = OutboxSender(config.milter.database, config.autoreply.smtp,
                              give_up=config.autoreply.give_up,
                              retry_after=config.autoreply.retry,
                              on_result=metrics.delivered).start()
    try:
        serve(config, engine, rebuild=rebuild, metrics=metrics, socket_lock=socket_lock)
    except Exception as exc:
        logging.getLogger("helpdesk_milter").error("cannot serve on %s: %s",
                                                  config.milter.socket, exc)
        return 1
    finally:
        if sender is not None:
            sender.stop()
        metrics.close()
        store.close()
    return 0


def unsafe_permissions(config_path: Path, config: Config) -> list[str]:
    """Files and directories anyone could change to take over routing or the socket.

    The config, the files it reads (client CSVs, rules, ARC key), the state
    database, their directories, and a unix socket's directory, must not be
    world-writable.  A world-writable directory with the sticky bit (``/tmp``)
    is safe for them: only a file's owner (or root) may remove or rename what
    is in it, so nobody else can swap our files.
    """
    paths = {config_path, *(Path(p) for p in config.client_files)}
    if config.classifier.rules_file:
        paths.add(Path(config.classifier.rules_file))
    if config.arc.private_key:
        paths.add(Path(config.arc.private_key))
    database = Path(config.milter.database)
    paths.add(database)          # whoever can write it can forge state (rate limits, dedup)
    checked = set(paths) | {p.resolve().parent for p in paths}
    socket = config.milter.socket
    if socket.startswith(("unix:", "local:")):
        checked.add(Path(socket.split(":", 1)[1]).parent)
    problems = []
    for path in sorted(checked):
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if mode & 0o002 and not (stat.S_ISDIR(mode) and mode & stat.S_ISVTX):
            problems.append(f"{path} is world-writable (mode {mode & 0o7777:04o}); "
                            f"fix it with: chmod o-w {path}")
    for path in sorted(paths):
        # In a sticky world-writable directory anyone may create a file first: one
        # of ours found there must belong to us (or root), not to whoever made it.
        try:
            parent, owner = path.resolve().parent.stat(), path.stat().st_uid
        except OSError:
            continue
        if parent.st_mode & 0o002 and owner not in (0, os.geteuid()):
            problems.append(f"{path} is in a world-writable directory and belongs to "
                            f"uid {owner}, not to the milter's user (uid {os.geteuid()}); "
                            "anyone could have created it there: move it to a directory "
                            "of its own")
    return problems


# --- check-config --------------------------------------------------------------------

def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config, rules = _load(args.config)
    except (ConfigError, RulesError) as exc:
        return _config_problem(exc)
    from .policy import Policy
    unsafe = unsafe_permissions(Path(args.config), config)
    if unsafe or config.doubts:
        # the doubts first, in file line order: valid settings that do not do what
        # an admin means (run starts with them, logging a warning each)
        return _config_problem(ConfigError([*config.doubts, *(
            f"{p} (the milter refuses to start)" for p in unsafe)]))
    policy = Policy(config, rules=rules)
    print(f"{args.config}: OK")
    print(f"  socket        {config.milter.socket}")
    print(f"  database      {config.milter.database}")
    print(f"  on error      {config.milter.on_error}")
    if config.milter.mode == "observe":
        print("  mode          observe: decisions are logged and recorded, no message is "
              "changed")
    listen = config.metrics.listen
    print(f"  metrics       {f'http://{listen}/metrics' if listen else 'off'}")
    if config.state.backend == "redis":
        from .redis_store import describe_url
        print(f"  shared state  redis {describe_url(config.state.redis_url)} "
              f"(prefix {config.state.key_prefix!r}; decisions stay in the database)")
    print(f"  assistance    {config.addresses.assistance} (unknown senders: "
          f"{config.addresses.fallback})")
    print(f"  internal      {', '.join(config.addresses.internal_domains) or '(none)'}")
    for group in config.watch:
        print(f"  watch         {group.name}: {group.mode}: {', '.join(group.addresses)}")
    print(f"  clients       {len(policy.directory)} entries")
    model = policy.classifier.model
    print(f"  classifier    {len(rules.rules)} rules, "
          + (f"model {config.classifier.model} ({len(model.weights)} weights)"
             if model is not None else "no model (rules only)")
          + f", threshold {config.classifier.threshold}")
    print(f"  follow-ups    subject matches {config.ticket_pattern}")
    if config.autoreply.enabled:
        print(f"  guidance      on, via {config.autoreply.smtp}, trust {config.autoreply.trust}, "
              f"at most one per sender per {config.autoreply.every / 86400:g} day(s)"
              + (f", templates from {config.autoreply.templates_dir}"
                 if config.autoreply.templates_dir else ""))
    else:
        print("  guidance      off")
    warnings = _warnings(config, policy)
    for warning in warnings:
        print(f"  warning: {warning}")
    return 0


def _warnings(config: Config, policy: Any) -> list[str]:
    out = []
    if not config.watch:
        out.append("no [[watch]] group: the milter will only tag mail sent to assistance")
    for group in config.watch:
        for address in group.addresses:
            if "*" not in address and policy.is_assistance(address):
                out.append(f"watch group {group.name!r} lists {address}, which is an "
                           "assistance address; it is never treated as watched")
    if not config.clients:
        out.append("the client directory is empty: every request goes to the fallback "
                   "address")
    if config.watch and not config.addresses.internal_domains:
        out.append("addresses.internal_domains is empty: staff's own mail to a watched "
                   "address is treated as client mail (list the domains staff write from)")
    return out


# --- try -----------------------------------------------------------------------------

def cmd_try(args: argparse.Namespace) -> int:
    try:
        config, rules = _load(args.config)
    except (ConfigError, RulesError) as exc:
        return _config_problem(exc)
    try:
        raw = Path(args.message).read_bytes() if args.message != "-" \
            else sys.stdin.buffer.read()
    except OSError as exc:
        return _fail(f"cannot read {args.message}: {exc.strerror}")
    from .engine import Engine, rewrite_raw
    from .store import SQLiteStore
    # Duplicates are looked up in the state database when there is one; `try`
    # never writes to it.
    store = SQLiteStore(config.milter.database, window=config.dedup.window,
                        similarity=config.dedup.similarity, readonly=True) \
        if Path(config.milter.database).is_file() else None
    # the site's learned model counts in `try` too; `try` never learns
    policy, _learning = _policy_and_learning(config, rules, readonly=True)
    engine = Engine(config, policy=policy, store=store)
    size = len(raw)
    too_large = size > config.milter.max_scan_size
    sender = args.sender
    if sender is None:
        from .message import ParsedMessage
        sender = ParsedMessage(raw).from_addr
    env = Envelope(mail_from=strip_brackets(sender), rcpts=tuple(args.rcpt),
                   auth_user=args.auth_user, queue_id="TRY")
    logging.disable(logging.CRITICAL)   # the summary below says it all
    outcome = engine.process_raw(env, raw, size=size, too_large=too_large)
    logging.disable(logging.NOTSET)
    d, msg = outcome.decision, outcome.message
    if args.output:
        try:
            Path(args.output).write_bytes(rewrite_raw(raw, d))
        except OSError as exc:
            return _fail(f"cannot write {args.output}: {exc.strerror}")
    if args.json:
        print(json.dumps(_decision_json(env, d, msg.message_id), indent=2))
        return 0
    weights = {rule.name: w for rule in rules.rules
               if (w := policy.classifier.rule_weight(rule.name)) is not None}
    model = policy.classifier.model
    weights["known-client"] = config.classifier.known_client_weight + (
        model.weights.get("k:known-client", 0.0) if model is not None else 0.0)
    print(f"message     {msg.message_id or '(no Message-ID)'} from <{env.mail_from}> "
          f"({size} bytes)")
    print(f"recipients  {', '.join(env.rcpts)}")
    if not d.inspected:
        print("inspected   no: no recipient is watched or an assistance address")
    else:
        threshold = config.classifier.threshold
        print(f"verdict     {d.verdict} (score {d.score:.1f}, threshold {threshold:.1f})")
        print(f"structure   {d.structure or 'unknown'}")
        print("rules       " + (", ".join(
            f"{r} ({weights[r]:+.2f})" if r in weights else r for r in d.rules) or "(none)"))
        print(f"action      {d.action}" + (f" ({d.skip_reason})" if d.skip_reason else "")
              + (f", watch group {d.group}" if d.group else ""))
        if args.explain:
            _print_explanation(policy, msg, d, config)
    if d.secrets:
        print(f"secrets     {d.secrets} found, "
              f"{'redacted' if d.changes_content else 'tagged only'}: "
              + ", ".join(f"{kind} in {where}" for where, kind in d.secret_where))
    if d.dkim:
        print(f"dkim        {d.dkim} (the original message, checked before the change)")
    if d.hints:
        print(f"hints       {', '.join(d.hints)}")
    if d.guidance:
        word = "would be sent" if d.guidance == "queued" else d.guidance.replace(":", ": ")
        print(f"guidance    {word} ({', '.join(d.guidance_cases)})")
    for rcpt in d.add_rcpts:
        print(f"  + rcpt    {rcpt}")
    for rcpt in d.del_rcpts:
        print(f"  - rcpt    {rcpt}")
    for name, index in d.strip_headers:
        print(f"  - header  {name} (occurrence {index}, arrived with the message)")
    for name, _index, value in d.change_headers:
        print(f"  ~ header  {name}: {value}")
    for name, value in d.prepend_headers:
        print(f"  + header  {name}: {value}  (on top)")
    for name, value in d.add_headers:
        print(f"  + header  {name}: {value}")
    if d.new_body is not None:
        print(f"  ~ body    rewritten ({len(d.new_body)} bytes)")
    if args.output:
        print(f"written     {args.output}")
    return 0


def _print_explanation(policy: Any, msg: Any, d: Any, config: Config) -> None:
    """``try --explain``: how the score was made, feature by feature."""
    from .classify import SCORE_OFFSET
    from .model import feature_label
    classifier = policy.classifier
    if d.action == "skip" or d.ticket is not None:
        print("explain     decided by structure, before the classifier: "
              + ", ".join(d.rules))
        return
    contributions = classifier.explain(msg.subject, msg.text)
    model = classifier.model
    base = SCORE_OFFSET + (model.bias if model is not None else -SCORE_OFFSET)
    print(f"explain     score {d.score:.2f} = {base:+.2f} (start"
          + (", the model's bias + 5" if model is not None else "") + ")"
          + (f" {config.classifier.known_client_weight:+.2f} (known-client)"
             if "known-client" in d.rules else "")
          + f" {sum(c for _, c in contributions):+.2f} (the features below, in all)")
    for title, sign in (("for a request", 1), ("against", -1)):
        side = [(k, c) for k, c in contributions if c * sign > 0][:10]
        print(f"  {title}:" + ("" if side else " (none)"))
        for key, contribution in side:
            kind = "rule" if key.startswith("r:") else "model"
            print(f"    {contribution:+6.2f}  {feature_label(key):<32} ({kind})")
    if "assistance-rcpt" in d.rules:
        print("  the envelope: an assistance address is among the recipients, so the "
              "watched copy is a request whatever the text says")


def _decision_json(env: Envelope, d: Any, message_id: str) -> dict[str, Any]:
    return {
        "message_id": message_id, "mail_from": env.mail_from, "rcpts": list(env.rcpts),
        "inspected": d.inspected, "verdict": d.verdict, "structure": d.structure,
        "score": round(d.score, 2), "rules": list(d.rules), "action": d.action,
        "skip_reason": d.skip_reason, "group": d.group, "ticket": d.ticket,
        "add_rcpts": list(d.add_rcpts), "del_rcpts": list(d.del_rcpts),
        "remove_headers": [list(h) for h in d.strip_headers],
        "add_headers": [list(h) for h in d.add_headers], "duplicate": d.duplicate,
        "duplicate_of": d.duplicate_of,
        "change_headers": [list(h) for h in d.change_headers],
        "prepend_headers": [list(h) for h in d.prepend_headers],
        "secrets": d.secrets, "secret_kinds": list(d.secret_kinds),
        "secret_where": [{"where": w, "kind": k} for w, k in d.secret_where],
        "body_rewritten": d.new_body is not None, "dkim": d.dkim, "hints": list(d.hints),
        "guidance": d.guidance, "guidance_cases": list(d.guidance_cases),
    }


# --- report --------------------------------------------------------------------------

def cmd_report(args: argparse.Namespace) -> int:
    database = args.database
    if database is None:
        try:
            database = load_config(args.config).milter.database
        except ConfigError as exc:
            return _config_problem(exc)
    if not Path(database).exists():
        return _fail(f"no state database at {database} (has the milter run yet?)")
    if args.queue_id is not None or args.message_id is not None or args.sender is not None:
        return _report_trace(args, database)
    try:
        since_seconds = parse_duration(args.since)
    except ValueError as exc:
        return _fail(f"--since: {exc}")
    from .learn import learning_report
    from .store import open_database, report
    try:
        db = open_database(database, readonly=True)
        data = report(db, since=time.time() - since_seconds, limit=args.limit)
        data["learning"] = learning_report(db, since=time.time() - since_seconds)
        from .store import observed_report
        data["observe"] = observed_report(db, since=time.time() - since_seconds,
                                          limit=args.limit)
    except Exception as exc:
        return _fail(f"cannot read {database}: {exc}")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"helpdesk-milter report: {data['total']} inspected message(s) in the last "
          f"{args.since} ({database})")
    _table("action", ["action", "messages"], list(data["by_action"].items()))
    _table("verdict", ["verdict", "messages"], list(data["by_verdict"].items()))
    _table("requests per structure", ["structure", "requests", "routed", "duplicates"],
           [(r["structure"], r["requests"], r["routed"], r["duplicates"])
            for r in data["by_structure"]])
    _table("senders writing to a watched address instead of assistance",
           ["sender", "structure", "messages"],
           [(r["sender"], r["structure"], r["messages"]) for r in data["wrong_address_senders"]])
    _table("duplicates caught, by match", ["match", "messages"],
           list(data["duplicates"].items()))
    guidance = data.get("guidance") or {}
    if guidance:
        outbox = guidance.get("outbox", {})
        _table("guidance mail", ["outcome", "messages"],
               [("sent", outbox.get("sent", 0)), ("pending (queued, not sent yet)",
                                                  outbox.get("pending", 0)),
                ("failed (given up)", outbox.get("failed", 0))]
               + [(f"suppressed: {reason}", n)
                  for reason, n in guidance.get("suppressed", {}).items()])
    _table("messages with secrets, by kind (values are never stored)",
           ["kind", "messages"], [(k, v["messages"]) for k, v in data["secrets"].items()])
    learning = data["learning"]
    _table(f"learning from the site ({learning['examples']} label(s) kept): production "
           "recall, per week",
           ["week", "staff forwarded", "had routed", "missed", "not seen",
            "routed by learning", "routed, then labelled not a request"],
           [(w, n["forwarded"], n["routed"], n["missed"], n["unseen"],
             n["routed_by_learning"], n["not_request_after_routing"])
            for w, n in learning["weeks"].items()])
    _table(f"last {args.limit} decisions",
           ["time", "queue id", "from", "verdict", "action", "added", "removed"],
           [(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"])), r["queue_id"],
             r["mail_from"], r["verdict"], r["action"], r["added"], r["removed"])
            for r in data["last"]])
    _print_observed(data["observe"], args.limit)
    return 0


def _print_observed(observed: dict[str, Any], limit: int) -> None:
    """The report's observe-mode part: what the milter would have done (nothing was)."""
    if not observed["total"]:
        return
    print()
    print(f"observe mode (milter.mode = \"observe\"): {observed['total']} decision(s) "
          "recorded, no message changed; this is what enforce mode would have done")
    _table("observe: would have, by action", ["action", "messages"],
           list(observed["by_action"].items()))
    _table("observe: would have routed", ["structure", "to", "mode", "messages"],
           [(r["structure"], r["assistance"], r["action"], r["messages"])
            for r in observed["routed"]])
    _table("observe: other changes it would have made", ["change", "messages"],
           [("watched recipients removed", observed["would_remove"]),
            *((f"duplicate ({match})", n) for match, n in observed["duplicates"].items()),
            *((f"secret redacted: {kind}", n) for kind, n in observed["secrets"].items()),
            *((f"guidance {outcome}", n) for outcome, n in observed["guidance"].items())])
    _table(f"observe: last {limit} decisions",
           ["time", "queue id", "from", "verdict", "would", "add", "remove"],
           [(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"])), r["queue_id"],
             r["mail_from"], r["verdict"], r["action"], r["added"], r["removed"])
            for r in observed["last"]])


def _report_trace(args: argparse.Namespace, database: str) -> int:
    """``report --queue-id/--message-id/--sender``: every decision recorded for one
    message (or one sender's messages), newest first."""
    from .store import open_database, trace
    try:
        db = open_database(database, readonly=True)
        rows = trace(db, queue_id=args.queue_id, message_id=args.message_id,
                     sender=args.sender, limit=args.limit)
    except Exception as exc:
        return _fail(f"cannot read {database}: {exc}")
    what = (f"queue id {args.queue_id}" if args.queue_id is not None
            else f"Message-ID {args.message_id}" if args.message_id is not None
            else f"sender {args.sender}")
    if args.json:
        print(json.dumps({"query": what, "decisions": rows}, indent=2))
        return 0 if rows else 1
    if not rows:
        print(f"helpdesk-milter: no decision recorded for {what} in {database}. Only the "
              "helpdesk's mail (a watched or assistance recipient) is recorded; other mail "
              "is accepted at the end of the envelope and only logged.", file=sys.stderr)
        return 1

    def listed(values: list[str] | None) -> str:
        return "(not recorded)" if values is None else ", ".join(values) or "-"

    for n, r in enumerate(rows):
        if n:
            print()
        print(f"queue id     {r['queue_id'] or '-'}")
        if r["mode"] == "observe":
            print("mode         observe: nothing was changed; the action, added and removed "
                  "are what enforce mode would have done")
        print(f"time         {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(r['time']))}")
        print(f"message-id   {r['message_id'] or '-'}")
        print(f"sender       <{r['mail_from']}>"
              + (f" (From: {r['from_addr']})" if r["from_addr"] else ""))
        print(f"recipients   {listed(r['rcpts'])}")
        print(f"final        {listed(r['final_rcpts'])}"
              + (f"  (added {', '.join(r['added'])})" if r["added"] else "")
              + (f"  (removed {', '.join(r['removed'])})" if r["removed"] else ""))
        print(f"verdict      {r['verdict']} (score {r['score']:.1f}), structure "
              f"{r['structure'] or 'unknown'}")
        print(f"rules        {', '.join(r['rules'] or []) or '-'}")
        print(f"action       {r['action']}"
              + (f" ({r['skip_reason']})" if r["skip_reason"] else "")
              + (f", watch group {r['watch_group']}" if r["watch_group"] else "")
              + (f", assistance {r['assistance']}" if r["assistance"] else ""))
        if r["duplicate"]:
            print(f"duplicate    of {r['duplicate_of'] or 'an earlier copy'} "
                  f"(match {r['duplicate']})")
        print(f"secrets      {r['secrets'] or 0}"
              + (f" ({', '.join(r['secret_kinds'])}; values are never stored)"
                 if r["secret_kinds"] else ""))
    return 0


# --- learn ---------------------------------------------------------------------------

def cmd_learn(args: argparse.Namespace) -> int:
    try:
        config, rules = _load(args.config)
    except (ConfigError, RulesError) as exc:
        return _config_problem(exc)
    labelling = args.support or args.not_support
    if labelling and not args.paths:
        return _fail("learn: give the .eml files, Maildir folders or mbox files to learn from")
    if not labelling and args.paths:
        return _fail("learn: files are only read with --support or --not-support")
    policy, learning = _policy_and_learning(config, rules)
    if learning is None:
        return _fail("learn: the site learns on top of the model, and classifier.model "
                     "is none")
    try:
        if args.list:
            rows = learning.examples(limit=50)
            _table(f"learned labels (newest first; {learning.size()['examples']} in all)",
                   ["id", "time", "label", "source", "original", "message-id"],
                   [(r["id"], time.strftime("%Y-%m-%d %H:%M", time.localtime(r["time"])),
                     r["label"], r["source"],
                     {1: "routed", 0: "missed"}.get(r["routed"], "-"), r["message_id"] or "-")
                    for r in rows])
            return 0
        if args.forget is not None:
            if not learning.forget(args.forget):
                return _fail(f"learn: no label with id {args.forget} (see learn --list)")
            print(f"forgot label {args.forget}; relearned from the others")
            return 0
        if args.reset:
            print(f"forgot {learning.reset()} label(s): the shipped model decides alone again")
            return 0
        return _learn_files(args, config, policy, learning)
    finally:
        learning.close()


def _learn_files(args: argparse.Namespace, config: Config, policy: Any, learning: Any) -> int:
    from .learn import Example, carried_forward, read_messages, without_secrets
    from .message import ParsedMessage
    label = "support" if args.support else "other"
    marker = config.secrets.marker

    def clean(text: str) -> str:
        return without_secrets(text, policy.scanner, marker)

    learned = 0
    for path in args.paths:
        try:
            messages = list(read_messages(path))
        except (OSError, ValueError) as exc:
            return _fail(f"learn: {path}: {getattr(exc, 'strerror', None) or exc}")
        for name, raw in messages:
            try:
                msg = ParsedMessage(raw)
                forward = carried_forward(msg)
                if forward is not None and forward.original_from:
                    subject, text, sender = forward.subject, forward.text, forward.original_from
                else:
                    subject, text, sender = msg.subject, msg.text, msg.from_addr
                example = Example.of(clean(subject), clean(text), policy.rules,
                                     policy.classifier.model, label=label,
                                     known_client=policy.directory.lookup(sender) is not None)
            except Exception as exc:
                print(f"helpdesk-milter: learn: {name}: cannot read it ({type(exc).__name__});"
                      " skipped", file=sys.stderr)
                continue
            message_id = msg.message_id
            routed = learning.routed(message_id) if message_id else None
            learning.learn(example, source="learn", message_id=message_id, routed=routed)
            learned += 1
    kind = "support requests" if args.support else "not support requests"
    print(f"learned {learned} message(s) as {kind} "
          f"({learning.size()['examples']} label(s) in all)")
    return 0


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print()
    print(f"{title}:")
    if not rows:
        print("  (none)")
        return
    cells = [[str(c) for c in header]] + [[("" if c is None else str(c)) for c in row]
                                          for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


# --- parser --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helpdesk-milter",
        description="Postfix milter that recognises support requests sent to staff "
                    "addresses and routes them to the client's assistance address.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__}, decision core {build()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", default=DEFAULT_CONFIG, metavar="FILE",
                       help=f"configuration file (default {DEFAULT_CONFIG})")

    p = sub.add_parser("run", help="run the milter daemon",
                       description="Run the milter; it listens on [milter] socket and logs "
                                   "one line per message to stderr. Stops on SIGTERM; "
                                   "on SIGHUP (systemctl reload) re-reads the configuration, "
                                   "client CSVs and templates, and keeps the running "
                                   "configuration if they have a problem. Refuses to start "
                                   "on a unix socket another instance serves.")
    add_config(p)
    p.add_argument("--socket", help="override [milter] socket (libmilter syntax, e.g. "
                                    "inet:8894@127.0.0.1, unix:/run/x.sock, fd:3)")
    p.add_argument("--database", metavar="FILE", help="override [milter] database")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a configuration file and explain it",
                       description="Validate the configuration; print a summary and exit 0, "
                                   "or list every problem with its key and line and exit 1.")
    add_config(p)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("try", help="show what the milter would do with one message",
                       description="Run the whole decision offline on one message and print "
                                   "it: verdict, rules, recipients added and removed, headers, "
                                   "secrets found (kinds and places, never values). Nothing is "
                                   "sent; the state database is read for duplicates, never "
                                   "written.")
    add_config(p)
    p.add_argument("--from", dest="sender", metavar="ADDR",
                   help="envelope sender (default: the From header's address; \"\" for a "
                        "bounce)")
    p.add_argument("--rcpt", action="append", required=True, metavar="ADDR",
                   help="envelope recipient (repeat for several)")
    p.add_argument("--auth-user", metavar="USER",
                   help="pretend the message came by authenticated submission")
    p.add_argument("--output", "-o", metavar="FILE", help="write the rewritten message here")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.add_argument("--explain", action="store_true",
                   help="also print how the score was made: the model's strongest features "
                        "for and against a request, and the rules that fired, with their "
                        "weights")
    p.add_argument("message", metavar="MESSAGE.eml", help="the message file (- for stdin)")
    p.set_defaults(func=cmd_try)

    p = sub.add_parser("report", help="summarise the decisions in the state database",
                       description="Summarise what the milter did: messages per action and "
                                   "verdict, requests per structure, senders writing to a "
                                   "watched address, last decisions. With --queue-id, "
                                   "--message-id or --sender: trace one message instead.")
    add_config(p)
    p.add_argument("--database", metavar="FILE", help="state database (default: from config)")
    p.add_argument("--since", default="7d", metavar="DURATION",
                   help="period to cover, e.g. 24h, 7d (default 7d)")
    p.add_argument("--limit", type=int, default=10, metavar="N",
                   help="rows in the top and last lists (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    one = p.add_mutually_exclusive_group()
    one.add_argument("--queue-id", metavar="ID",
                     help="trace one message by its Postfix queue id (as in the mail log): "
                          "recipients as they came and as they left, verdict, rules, "
                          "duplicate of, secrets by kind; exit 1 when none is recorded")
    one.add_argument("--message-id", metavar="ID",
                     help="trace one message by its Message-ID (angle brackets optional)")
    one.add_argument("--sender", metavar="ADDR",
                     help="trace the messages of one sender (envelope or From address), "
                          "newest first, at most --limit")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("learn", help="teach the classifier with this site's mail",
                       description="Label mail as a support request or not, from .eml files, "
                                   "Maildir folders or mbox files; list, forget or reset what "
                                   "was learned.  Staff forwards to an assistance address are "
                                   "learned by the running milter on their own "
                                   "(learning.forwards).  Only hashed features are kept, "
                                   "never text.  A running milter picks the change up within "
                                   "seconds, without a restart.")
    add_config(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--support", action="store_true",
                      help="the messages given are support requests")
    what.add_argument("--not-support", action="store_true",
                      help="the messages given are not support requests (e.g. closed as "
                           "'not a request' by the helpdesk)")
    what.add_argument("--list", action="store_true", help="list the newest labels")
    what.add_argument("--forget", type=int, metavar="ID",
                      help="remove one label (its id from --list) and relearn from the rest")
    what.add_argument("--reset", action="store_true",
                      help="forget every label: back to the shipped model")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help=".eml file, Maildir folder or mbox file (with --support/--not-support)")
    p.set_defaults(func=cmd_learn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
