"""Who wrote the request a copy carries, and which earlier copy it names.

Three behaviours measured on the blind duplicate sets (``scripts/eval-dedup.py``):
a forward is filed under its original's sender (a colleague's forward meets the
client's first copy); a name after a title ("M. Tran") is an identifier (two
instances of one template differ there); a resend addressed to assistance and a
watched address at once names the copy assistance already has.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import make_msgid

from helpdesk_milter import dedup
from helpdesk_milter.config import parse_config
from helpdesk_milter.engine import Engine
from helpdesk_milter.message import Envelope, ParsedMessage
from helpdesk_milter.store import SQLiteStore
from support.world import EXAMPLE_CONFIG

REQUEST = (
    "Bonjour,\n\n"
    "Depuis ce matin je n'arrive plus à ouvrir les documents du partage Finances sur "
    "le Nextcloud : le message « Impossible de charger le document » s'affiche pour "
    "chaque fichier .docx. Pouvez-vous regarder rapidement ? Le conseil se réunit "
    "jeudi et j'ai besoin des délibérations.\n\n"
    "Merci d'avance,\nBernard Royer\nService finances\n")


def mail(sender: str, to: str, subject: str, body: str, message_id: str | None = None
         ) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Tue, 03 Mar 2026 09:12:00 +0100"
    msg["Message-ID"] = message_id or make_msgid(domain=sender.split("@")[1])
    msg.set_content(body)
    return msg.as_bytes()


def forward_by_colleague() -> bytes:
    return mail(
        "Claire Petit <claire.petit@orange.example>", "mairie-exemple@assistance.example.org",
        "TR: Documents du partage Finances",
        "Je vous transfère la demande de Bernard.\n\n"
        "-------- Message transféré --------\n"
        "De : Bernard Royer <b.royer@mairie-exemple.fr>\n"
        "Date : mar. 3 mars 2026 09:12\n"
        "Objet : Documents du partage Finances\n"
        "À : alice@example.org\n\n" + REQUEST)


def test_a_forward_is_filed_under_its_original_sender():
    original = dedup.fingerprint(
        ParsedMessage(mail("b.royer@mairie-exemple.fr", "alice@example.org",
                           "Documents du partage Finances", REQUEST)),
        sender="b.royer@mairie-exemple.fr", structure="mairie-exemple")
    clients = {"b.royer@mairie-exemple.fr": "mairie-exemple"}
    forward = dedup.fingerprint(ParsedMessage(forward_by_colleague()),
                                sender="claire.petit@orange.example", structure=None,
                                resolve=clients.get)
    assert forward.forward
    assert (forward.sender, forward.structure) == ("b.royer@mairie-exemple.fr",
                                                   "mairie-exemple")
    assert forward.scope == original.scope and forward.text_hash == original.text_hash
    # without the directory (the old behaviour), the forwarder's own scope
    alone = dedup.fingerprint(ParsedMessage(forward_by_colleague()),
                              sender="claire.petit@orange.example", structure=None)
    assert alone.scope == "a:claire.petit@orange.example"


def test_a_name_after_a_title_tells_two_template_requests_apart():
    template = ("Bonjour,\n\n{who} a oublié son mot de passe de messagerie et ne peut plus "
                "se connecter au webmail depuis chez {pronoun}. Pourriez-vous le "
                "réinitialiser et me communiquer le nouveau par téléphone ?\n\n"
                "Merci d'avance,\nNadia Benoît\nAccueil - Cabinet Martin\n")
    a = dedup.fingerprint_text("Réinitialisation mot de passe - Mme Joly",
                               template.format(who="Mme Joly", pronoun="elle"),
                               sender="accueil@cabinet-martin.fr", structure="cabinet-martin")
    b = dedup.fingerprint_text("Réinitialisation mot de passe - M. Tran",
                               template.format(who="M. Tran", pronoun="lui"),
                               sender="accueil@cabinet-martin.fr", structure="cabinet-martin")
    assert dedup.similarity(a, b) >= 0.7            # the words are nearly the same...
    assert dedup.identifiers_conflict(a.idents, b.idents)   # ...the people are not
    assert dedup.near_score(b, a, 0.7) is None


def test_a_resend_to_assistance_and_a_watched_address_names_the_earlier_copy(tmp_path):
    config = parse_config(EXAMPLE_CONFIG.read_text(), base_dir=EXAMPLE_CONFIG.parent)
    now = [1_800_000_000.0]
    store = SQLiteStore(tmp_path / "state.db", window=config.dedup.window,
                        similarity=config.dedup.similarity, clock=lambda: now[0])
    engine = Engine(config, store=store, clock=lambda: now[0], dnsfunc=lambda *a, **k: None)
    try:
        first_id = "<finances-1@mairie-exemple.fr>"
        first = engine.process_raw(
            Envelope(mail_from="b.royer@mairie-exemple.fr", rcpts=("alice@example.org",),
                     queue_id="Q1"),
            mail("b.royer@mairie-exemple.fr", "alice@example.org",
                 "Documents du partage Finances", REQUEST, first_id)).decision
        assert first.action == "copy"               # routed: assistance has it now
        now[0] += 3600
        resend = engine.process_raw(
            Envelope(mail_from="b.royer@mairie-exemple.fr",
                     rcpts=("alice@example.org", "mairie-exemple@assistance.example.org"),
                     queue_id="Q2"),
            mail("b.royer@mairie-exemple.fr",
                 "alice@example.org, mairie-exemple@assistance.example.org",
                 "URGENT Documents du partage Finances", REQUEST)).decision
        assert resend.action == "duplicate" and resend.duplicate == "text"
        assert dict(resend.add_headers)["X-Helpdesk-Duplicate"].startswith(f"of={first_id};")
        assert not resend.add_rcpts and not resend.del_rcpts   # tag: nothing removed
        # a new request to both at once stays a same-transaction duplicate of itself
        other = engine.process_raw(
            Envelope(mail_from="b.royer@mairie-exemple.fr",
                     rcpts=("alice@example.org", "mairie-exemple@assistance.example.org"),
                     queue_id="Q3"),
            mail("b.royer@mairie-exemple.fr",
                 "alice@example.org, mairie-exemple@assistance.example.org",
                 "Imprimante du rez-de-chaussée",
                 "Bonjour,\n\nL'imprimante du rez-de-chaussée affiche une erreur de "
                 "bourrage alors que le bac est vide, et plus personne ne peut imprimer "
                 "depuis hier soir. Pouvez-vous passer ?\n\nBernard Royer\n")).decision
        assert other.duplicate == "same-transaction"
    finally:
        store.close()
