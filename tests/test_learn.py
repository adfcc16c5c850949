"""Learning from the site: labels from staff forwards and from ``learn``, the learned
deltas, what is (never) stored, and the production-recall report.  Real SQLite files;
the end-to-end version through Postfix is in test_e2e_learning.py."""

from __future__ import annotations

import mailbox
import math
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

import helpdesk_milter.learn as learn
from helpdesk_milter.classify import RuleSet
from helpdesk_milter.cli import main
from helpdesk_milter.config import load_config
from helpdesk_milter.engine import Engine
from helpdesk_milter.learn import Example, Learning, carried_forward, read_messages
from helpdesk_milter.message import Envelope, ParsedMessage
from helpdesk_milter.model import load_model
from helpdesk_milter.policy import Policy
from helpdesk_milter.store import SQLiteStore
from support import spanish
from support.mail import as_bytes, make_message
from support.world import EXAMPLE_CONFIG

RULES = RuleSet.load()
MODEL = load_model("shipped")
SECRET = "Xk9#pLm2qR7v"


@pytest.fixture(autouse=True)
def no_refresh_delay(monkeypatch):
    monkeypatch.setattr(learn, "REFRESH", 0.0)


class Site:
    """An engine as the milter builds it: store, learned state, policy, one database."""

    def __init__(self, tmp_path: Path):
        self.db = tmp_path / "state.db"
        config = load_config(EXAMPLE_CONFIG)
        self.config = replace(config, milter=replace(config.milter, database=str(self.db)))
        self.store = SQLiteStore(self.db, window=config.dedup.window,
                                 similarity=config.dedup.similarity)
        self.learning = Learning(self.db, MODEL, RULES)
        self.policy = Policy(self.config, rules=RULES, model=MODEL, site=self.learning.site)
        self.engine = Engine(self.config, store=self.store, policy=self.policy,
                             learning=self.learning, dnsfunc=lambda *a, **k: None)
        self.n = 0

    def send(self, msg, rcpts, mail_from=None):
        self.n += 1
        raw = as_bytes(msg)
        env = Envelope(mail_from=mail_from or ParsedMessage(raw).from_addr,
                       rcpts=tuple(rcpts), queue_id=f"Q{self.n}")
        d = self.engine.process_raw(env, raw).decision
        self.store.flush()
        return d

    def close(self):
        self.store.close()
        self.learning.close()


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.close()


def routed(d):
    return d.verdict == "support" and d.action in ("copy", "redirect")


def test_spanish_requests_are_missed_then_learned_from_five_forwards(site):
    threshold = site.config.classifier.threshold
    originals = [spanish.request(s, b, n) for n, (s, b) in enumerate(spanish.TEACH)]
    for msg in originals:
        assert not routed(site.send(msg, ["alice@example.org"]))      # measured: missed
    for subject, body in spanish.TEST:                               # and these too
        assert site.policy.classifier.score(subject, body, known_client=False).score \
            < threshold
    for n, msg in enumerate(originals):
        forward = spanish.forward_as_attachment(msg) if n % 2 else spanish.forward_inline(msg)
        d = site.send(forward, [spanish.ASSISTANCE], "alice@example.org")
        assert d.skip_reason == "internal"
    rows = site.learning.examples()
    assert len(rows) == 5 and all(r["label"] == "support" and r["source"] == "forward"
                                  for r in rows)
    assert [r["routed"] for r in rows] == [0] * 5          # each one was a miss
    for n, (subject, body) in enumerate(spanish.TEST):
        d = site.send(spanish.request(subject, body, 10 + n), ["alice@example.org"])
        assert routed(d), d
        assert "site-learned" in d.rules and d.add_rcpts == (spanish.ASSISTANCE,)
    report = site.learning.report(since=0)
    week = next(iter(report["weeks"].values()))
    assert week["forwarded"] == 5 and week["missed"] == 5 and week["routed"] == 0
    assert week["routed_by_learning"] == len(spanish.TEST)


def test_a_forward_of_a_routed_request_counts_as_routed(site):
    msg = make_message(to="alice@example.org")        # the printer request: routed
    assert routed(site.send(msg, ["alice@example.org"]))
    site.send(spanish.forward_as_attachment(msg), ["mairie-exemple@assistance.example.org"],
              "alice@example.org")
    assert [r["routed"] for r in site.learning.examples()] == [1]


def test_a_staff_members_own_text_is_not_a_request(site):
    inner = make_message(sender="Bob <bob@example.org>", to="alice@example.org")
    site.send(spanish.forward_as_attachment(inner), ["accueil@assistance.example.org"],
              "alice@example.org")
    # forwarded by an outsider: not a staff forward either
    outsider = spanish.forward_as_attachment(make_message())
    del outsider["From"]
    outsider["From"] = "Jean <jean@asso-velo.org>"
    site.send(outsider, ["asso-velo@assistance.example.org"], "jean@asso-velo.org")
    assert site.learning.examples() == []


def test_nothing_of_the_text_and_no_secret_is_stored(site, tmp_path):
    body = (f"Hola,\n\nel servidor de ficheros quedó bloqueado tras la actualización. "
            f"La contraseña del administrador es {SECRET} por si la necesitáis.\n\nIñaki\n")
    msg = spanish.request("Servidor bloqueado", body, 99)
    site.send(msg, ["alice@example.org"])
    site.send(spanish.forward_as_attachment(msg), [spanish.ASSISTANCE], "alice@example.org")
    assert len(site.learning.examples()) == 1
    site.close()
    data = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    for word in (SECRET, "contraseña", "contrase", "servidor", "ficheros", "bloqueado",
                 "actualizaci", "administrador", "quedó bloqueado", "Iñaki"):
        assert word.encode() not in data, word
        assert word.lower().encode() not in data, word
    con = sqlite3.connect(tmp_path / "state.db")
    columns = [r[1] for r in con.execute("pragma table_info(learned_examples)")]
    assert not {"subject", "text", "body"} & set(columns)


def test_forget_and_reset_relearn_from_what_is_kept(site):
    examples = [Example.of(s, b, RULES, MODEL, label="support", known_client=False)
                for s, b in spanish.TEACH]
    ids = [site.learning.learn(e, source="learn") for e in examples]
    with_all = dict(site.learning.site().deltas)
    site.learning.forget(ids[-1])
    fresh = Learning(site.db.parent / "fresh.db", MODEL, RULES)
    for e in examples[:-1]:
        fresh.learn(e, source="learn")
    assert site.learning.site().deltas == pytest.approx(fresh.site().deltas)
    assert site.learning.site().deltas != with_all
    assert site.learning.reset() == len(ids) - 1
    assert not site.learning.site()
    fresh.close()


def test_not_support_labels_push_the_other_way(site):
    subject, body = spanish.TEST[0]
    before = site.policy.classifier.score(subject, body, known_client=False).score
    site.learning.learn(Example.of(subject, body, RULES, MODEL, label="other",
                                   known_client=False), source="learn")
    after = site.policy.classifier.score(subject, body, known_client=False).score
    assert after < before and after <= 5.0 - learn.MARGIN + 0.01


def test_the_learned_state_is_bounded(tmp_path, monkeypatch):
    learning = Learning(tmp_path / "b.db", MODEL, RULES, max_examples=3)
    monkeypatch.setattr(learn, "MAX_FEATURES", 50)
    for s, b in spanish.TEACH:
        learning.learn(Example.of(s, b, RULES, MODEL, label="support", known_client=False),
                       source="learn")
    assert learning.size() == {"examples": 3, "features": 50}
    learning.close()


def test_a_running_milter_picks_up_what_learn_wrote(site, tmp_path):
    other = Learning(site.db, MODEL, RULES)        # as the `learn` command would
    subject, body = spanish.TEST[1]
    before = site.policy.classifier.score(subject, body, known_client=False).score
    for s, b in spanish.TEACH:
        other.learn(Example.of(s, b, RULES, MODEL, label="support", known_client=False),
                    source="learn")
    assert site.policy.classifier.score(subject, body, known_client=False).score > before
    other.close()


def test_carried_forward_attached_inline_and_not(site):
    original = spanish.request(*spanish.TEACH[0], 1)
    attached = carried_forward(ParsedMessage(as_bytes(spanish.forward_as_attachment(original))))
    assert attached is not None and attached.original_from == "voluntario1@correo.example"
    assert attached.original_id == str(original["Message-ID"])
    assert "contabilidad" in attached.text
    inline = carried_forward(ParsedMessage(as_bytes(spanish.forward_inline(original))))
    assert inline is not None and inline.original_from == "voluntario1@correo.example"
    assert "contabilidad" in inline.text and "à traiter" not in inline.text
    assert carried_forward(ParsedMessage(as_bytes(original))) is None


def test_read_messages_from_eml_maildir_and_mbox(tmp_path):
    msgs = [spanish.request(s, b, n) for n, (s, b) in enumerate(spanish.TEACH[:3])]
    eml = tmp_path / "one.eml"
    eml.write_bytes(as_bytes(msgs[0]))
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    mb = mailbox.mbox(tmp_path / "closed.mbox", create=True)
    for m in msgs:
        box.add(as_bytes(m))
        mb.add(as_bytes(m))
    mb.flush()
    assert len(list(read_messages(eml))) == 1
    assert len(list(read_messages(tmp_path / "Maildir"))) == 3
    assert len(list(read_messages(tmp_path / "closed.mbox"))) == 3
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="Maildir"):
        list(read_messages(tmp_path / "plain"))


def test_learn_command_label_list_forget_reset_and_report(tmp_path, capsys):
    db = tmp_path / "state.db"
    config = tmp_path / "c.toml"
    config.write_text(EXAMPLE_CONFIG.read_text().replace(
        'database = "/var/lib/helpdesk-milter/state.db"', f'database = "{db}"').replace(
        'csv = ["clients.csv"]', f'csv = ["{EXAMPLE_CONFIG.parent / "clients.csv"}"]'))
    box = mailbox.Maildir(tmp_path / "requests", create=True)
    for n, (s, b) in enumerate(spanish.TEACH):
        box.add(as_bytes(spanish.request(s, b, n)))
    closed = tmp_path / "closed.eml"
    closed.write_bytes(as_bytes(make_message(subject="Invitación", body="Os invitamos a la "
                                             "fiesta del viernes.\n")))
    assert main(["learn", "--config", str(config), "--support", str(tmp_path / "requests")]) == 0
    assert "learned 5 message(s) as support requests" in capsys.readouterr().out
    assert main(["learn", "--config", str(config), "--not-support", str(closed)]) == 0
    assert main(["learn", "--config", str(config), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "6 in all" in listing and listing.count("learn ") >= 6
    assert main(["learn", "--config", str(config), "--forget", "6"]) == 0
    assert main(["learn", "--config", str(config), "--forget", "6"]) == 1
    assert main(["report", "--config", str(config), "--json"]) == 0
    assert '"learning"' in capsys.readouterr().out
    assert main(["learn", "--config", str(config), "--reset"]) == 0
    assert "forgot 5 label(s)" in capsys.readouterr().out
    assert main(["learn", "--config", str(config), "--support"]) == 1


def test_learned_state_grows_within_the_bound(tmp_path):
    """2,000 synthetic forwards (tests/bench/learning.py measures 10,000: about 16 MB,
    under the 20 MB bar) stay under a fifth of 20 MB."""
    import random
    rnd = random.Random(3)
    vocab = [f"mot{i}" for i in range(30_000)] + [k[2:] for k in list(MODEL.weights)[:3000]]
    learning = Learning(tmp_path / "big.db", MODEL, RULES)
    for i in range(2000):
        words = " ".join(rnd.choice(vocab) for _ in range(rnd.randint(40, 200)))
        learning.learn(Example.of("demande", words, RULES, MODEL, label="support",
                                  known_client=bool(i % 2)), source="forward")
    learning.close()
    size = sum(p.stat().st_size for p in tmp_path.glob("big.db*"))
    assert size < 20e6 / 5, size


def _contribution_by_names(site: learn.SiteModel, keys: list[str], value: float,
                           other: list[str]) -> float:
    """What the site's deltas add, read by each feature's name: the reference."""
    get = site.deltas.get
    return value * math.fsum(get(learn.feature_hash(k), 0.0) for k in keys) \
        + math.fsum(get(learn.feature_hash(k), 0.0) for k in other)


def test_site_contribution_by_word_groups_is_the_one_by_feature_names():
    """The classifier reads a site's deltas from the model's word groups (a CRC-32 going
    on from each kind's prefix) instead of building every feature's name: the same
    features, hence the same float, on real French and English requests."""
    from helpdesk_milter.classify import EXPLAIN_MIN, Classifier, prepared_texts
    from helpdesk_milter.model import text_keys, text_value, word_groups

    rules, model = RuleSet.load(), load_model("shipped")
    assert model is not None
    texts = [
        ("Impossible de me connecter à Nextcloud",
         "Bonjour,\n\nDepuis ce matin je n'arrive plus à me connecter à Nextcloud, le "
         "mot de passe est refusé alors qu'il marchait hier. Pouvez-vous regarder ?\n\n"
         "Merci d'avance,\nÉlodie Marchal, mairie de Saint-Aubin"),
        ("Printer stuck again!!", "Hi, the printer on the 2nd floor is stuck again, "
         "jobs stay in the queue and nothing comes out. Could someone have a look today?"),
        ("", "ok"),
        ("Re: demande d'accès — nouvelle secrétaire",
         "Pourriez-vous créer un compte pour notre nouvelle secrétaire, Mme Nadia Benali, "
         "avec accès au partage Comptabilité ? Elle commence lundi. " * 20),
    ]
    for subject, text in texts:
        ps, pb = prepared_texts(subject, text)
        keys = text_keys(ps, pb)
        # deltas for every other feature, and a site-only feature the model never had
        deltas = {learn.feature_hash(k): (i % 7 - 3) * 0.173 for i, k in enumerate(keys)
                  if i % 2 == 0}
        deltas[learn.feature_hash("r:greeting")] = 0.5
        deltas[learn.feature_hash("k:known-client")] = -0.25
        site = learn.SiteModel(deltas, version=1)
        other = ["r:greeting", "k:known-client"]
        by_name = _contribution_by_names(site, keys, text_value(keys, model.text_scale),
                                         other)
        groups = word_groups(ps, pb)
        count = sum(map(len, groups))
        assert count == len(keys)
        by_groups = site.contribution(
            groups, model.text_scale / count ** 0.5 if count else 0.0, other)
        assert by_groups == by_name
        if keys:
            assert by_name != 0.0
        # and the classifier adds what the deltas of this text's features and of the
        # rules that fired give, as before
        fired = [r.name for r, hit in zip(rules.rules, rules.fired(ps, pb), strict=True)
                 if hit]
        expected = _contribution_by_names(
            site, keys, text_value(keys, model.text_scale),
            ["r:" + n for n in fired] + ["k:known-client"])
        with_site = Classifier(rules, model, site=lambda site=site: site).score(
            subject, text, known_client=True)
        without = Classifier(rules, model).score(subject, text, known_client=True)
        assert abs(with_site.score - without.score - expected) < 0.0011
        assert (learn.SITE_RULE in with_site.rules) == (abs(expected) >= EXPLAIN_MIN)
        text_part, _ = model.score_text(keys, text_value(keys, model.text_scale), 12)
        groups_part, _ = model.score_groups(groups, 12)
        assert text_part == groups_part
