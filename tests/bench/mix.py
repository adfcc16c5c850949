"""The benchmark's message mix: realistic generated mail, seeded and reproducible.

``generate(n, seed)`` returns ``n`` messages (with their SMTP envelope) that look
like what reaches the MX of the service company in the SPEC: French and English,
plain text or multipart/alternative with HTML, quoted history, signatures and
disclaimers, some attachments; support requests sent to team members or to
``contact@``/``commercial@`` (watched), requests sent correctly to assistance, both
at once (same-transaction duplicates), resends and forwards of an earlier request
(cross-transaction duplicates), ticket follow-ups, commercial mail, newsletters,
auto-replies, internal mail and bounces; a share of them carry a secret
("mot de passe : Soleil2024!", a private key, a token, credentials in a URL).

The same ``(n, seed)`` always gives the same bytes (``random.Random(seed)``; no
clock, no ``make_msgid``), so runs on different days and machines compare. The
average size is about 5 KB (``describe()`` prints the actual figures).

With a ``signer`` (``dkim_signer(key)``), mail from the domains of
``SIGNING_DOMAINS`` (about four fifths of the mix, as today's mail) carries a
DKIM signature of its From domain, selector ``bench``; the benchmark publishes the
key on a local DNS server (``support.dns``) so that the milter verifies them as it
would in production. The signatures are the only bytes that change from run to run
(a key is made for each run; their ``t=`` is fixed).

``sized(size, shape)`` builds one support request of about ``size`` bytes, as text
(``shape="text"``: a long text/plain part) or as an attachment (``"attachment"``: a
short request with a base64 attachment), for the size-scaling measurements.
"""

from __future__ import annotations

import base64
import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from types import SimpleNamespace
from unittest import mock

import dkim

# --- the world (the example config's: config/helpdesk-milter.toml + clients.csv) ----

# (sender address, display name, structure); structure None = not in the directory
CLIENT_SENDERS: tuple[tuple[str, str, str | None], ...] = (
    ("secretariat@mairie-exemple.fr", "Jérôme Martin", "mairie-exemple"),
    ("n.girard@mairie-exemple.fr", "Nathalie Girard", "mairie-exemple"),
    ("s.moreau@mairie-exemple.fr", "Sylvie Moreau", "mairie-exemple"),
    ("tresorier@asso-velo.org", "Paul Lefèvre", "asso-velo"),
    ("jean.dupont@webmail.example", "Jean Dupont", "asso-velo"),
    ("direction@ecole-des-pins.fr", "Claire Fontaine", "ecole-des-pins"),
    ("vie-scolaire@ecole-des-pins.fr", "Karim Benali", "ecole-des-pins"),
    ("p.martin@cabinet-martin.fr", "Pierre Martin", "cabinet-martin"),
    ("marie.leroy@laposte.example", "Marie Leroy", "cabinet-martin"),
    ("regie@theatre-du-port.org", "Lucie Garnier", "theatre-du-port"),
    ("sophie.bernard@free.example", "Sophie Bernard", "theatre-du-port"),
    ("accueil@bibliotheque-ville.fr", "Hélène Roux", "bibliotheque"),
    ("direction@ccas-exemple.fr", "Thomas Petit", "ccas"),
    ("it@greenhouse.example.com", "Emily Clarke", "greenhouse"),
    ("ops@greenhouse.example.com", "Daniel Brooks", "greenhouse"),
)
UNKNOWN_SENDERS: tuple[tuple[str, str, str | None], ...] = (
    ("michel.blanc@orange.example", "Michel Blanc", None),
    ("contact@boulangerie-dupain.example", "Boulangerie Dupain", None),
    ("anna.schmidt@mailbox.example", "Anna Schmidt", None),
    ("president@club-echecs.example", "Gérard Lambert", None),
)
VENDORS = ("ventes@copieurs-pro.example", "news@saas-cloud.example",
           "partenariats@libre-hebergeurs.example", "facturation@fournisseur.example")
TEAM = ("alice@example.org", "bob@example.org", "marc@example.org", "julie@example.org")
CONTACT = ("contact@example.org", "commercial@example.org")
INTERNAL_SENDERS = ("bob@example.org", "julie@example.org", "marc@example.org")
ASSISTANCE = "{structure}@assistance.example.org"
FALLBACK = "accueil@assistance.example.org"

# --- text banks ---------------------------------------------------------------------

TOOLS_FR = ("Nextcloud", "l'imprimante du secrétariat", "la messagerie", "le VPN",
            "Dolibarr", "le site web", "le partage de fichiers", "l'agenda partagé",
            "le scanner", "la sauvegarde", "le wifi de la salle du conseil", "Thunderbird")
TOOLS_EN = ("Nextcloud", "the printer", "email", "the VPN", "the website",
            "the file share", "the shared calendar", "the backup job", "Outlook")
PROBLEMS_FR = (
    "{tool} ne fonctionne plus depuis ce matin",
    "impossible de me connecter à {tool}",
    "{tool} affiche une erreur 503 quand on essaie d'ouvrir un dossier",
    "nous n'avons plus accès à {tool}",
    "{tool} est très lent depuis la mise à jour de la semaine dernière",
    "{tool} ne synchronise plus les fichiers du secrétariat",
    "le compte de notre stagiaire est bloqué sur {tool}",
    "{tool} refuse de s'ouvrir et affiche « accès refusé »",
)
PROBLEMS_EN = (
    "{tool} stopped working this morning",
    "I cannot log in to {tool} anymore",
    "{tool} shows an error 500 when we open a folder",
    "we lost access to {tool} since yesterday",
    "{tool} is extremely slow since last week's update",
    "{tool} does not sync the office files any more",
)
DETAILS_FR = (
    "Le problème concerne trois postes de l'accueil, sous Windows 11.",
    "Nous avons déjà redémarré les ordinateurs et la box, sans effet.",
    "Le message exact est : « Le serveur a rencontré une erreur interne ».",
    "Cela bloque la préparation du conseil municipal de jeudi.",
    "Depuis hier soir, les collègues en télétravail sont aussi concernés.",
    "J'ai essayé avec Firefox et avec Edge, le résultat est le même.",
    "La dernière modification que nous avons faite date de lundi (ajout d'un poste).",
    "Nous sommes joignables au 04 12 34 56 78 toute la journée.",
    "Pouvez-vous regarder rapidement ? Merci de nous tenir informés.",
    "Pourriez-vous nous rappeler pour faire le point ?",
)
DETAILS_EN = (
    "It affects the three computers at the front desk, running Windows 11.",
    "We already restarted the computers and the router, with no effect.",
    "The exact message is: \"The server encountered an internal error\".",
    "This blocks the preparation of Thursday's board meeting.",
    "Colleagues working from home are affected as well since last night.",
    "Could you please have a look as soon as possible? Thanks for keeping us posted.",
)
OTHER_FR = (
    ("Facture du mois de mars", "Pourriez-vous nous renvoyer la facture de mars ? "
     "Notre comptable ne la retrouve pas dans le dossier partagé. "
     "Merci de l'adresser aussi à la trésorière."),
    ("Renouvellement du contrat de maintenance", "Notre contrat arrive à échéance le "
     "30 juin. Pouvez-vous nous faire une proposition de renouvellement pour trois ans, "
     "avec l'option hébergement du site ?"),
    ("Merci !", "Un grand merci à Alice pour son intervention de mardi, tout fonctionne "
     "parfaitement et l'équipe est ravie de la nouvelle organisation des dossiers."),
    ("Invitation : inauguration de la médiathèque", "Nous avons le plaisir de vous "
     "inviter à l'inauguration de la nouvelle médiathèque le samedi 14 à 11 h, suivie "
     "d'un apéritif dans le jardin."),
    ("Demande de devis hébergement", "Nous souhaiterions héberger notre site et nos "
     "boîtes aux lettres chez vous à partir de septembre. Quel serait le tarif pour "
     "quinze comptes ?"),
)
OTHER_EN = (
    ("Partnership proposal", "We are a cloud reseller looking for partners in France. "
     "Would you be open to a short call next week to discuss a referral agreement?"),
    ("Thank you", "Many thanks to Bob for the quick help yesterday, everything works "
     "again and the team is very happy."),
)
NEWSLETTER_SUBJECTS = ("Nextcloud Hub : les nouveautés de la version 28",
                       "Webinar: securing your SaaS stack", "Offre spéciale copieurs",
                       "La lettre des hébergeurs libres - mars")
LOREM_FR = (
    "Les associations adhérentes ont été nombreuses à répondre à notre enquête annuelle. "
    "Vous trouverez ci-dessous les principaux enseignements, les dates des prochains "
    "ateliers et un retour sur la journée des hébergeurs libres qui s'est tenue à Lyon. "
    "Comme chaque année, nous rappelons que les sauvegardes doivent être testées, que "
    "les mots de passe partagés n'ont pas leur place dans un courriel et que la "
    "documentation de vos services mérite une relecture au printemps. ")
_VOCABULARY = tuple(sorted(set(LOREM_FR.replace(",", "").replace(".", "").split())))
SIGNATURES = (
    "--\n{name}\nSecrétariat général\nTél. 04 12 34 56 78\n",
    "--\n{name}\nChargée de communication\n12 rue des Lilas, 69000 Lyon\n",
    "Cordialement,\n{name}\n",
    "Best regards,\n{name}\nOperations\n",
)
DISCLAIMER = (
    "\nCe message et toutes les pièces jointes sont confidentiels et établis à "
    "l'intention exclusive de ses destinataires. Toute utilisation ou diffusion non "
    "autorisée est interdite. Si vous avez reçu ce message par erreur, merci de le "
    "détruire et d'en avertir immédiatement l'expéditeur. L'intégrité de ce message ne "
    "pouvant être garantie sur Internet, la responsabilité de l'expéditeur ne saurait "
    "être engagée.\n")
SECRETS = (
    "mot de passe : Soleil2024!",
    "identifiant : jdupont / mdp : Azerty123!",
    "le nouveau mot de passe du compte admin est Chaton#1987",
    "password: Hunter2-Summer24",
    "https://admin:Sup3rS3cret@cloud.mairie-exemple.fr/index.php/login",
    "AWS key AKIA4HQ2JX7KZP3MW6RT secret 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",
    "token ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R",
    ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
     "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
     "QyNTUxOQAAACBqYmVuY2htYXJrLXRlc3Qta2V5LW5vdC1yZWFsLWF0LWFsbAAAAJgAAAAA\n"
     "-----END OPENSSH PRIVATE KEY-----"),
)
ATTACHMENTS = (("capture.png", "image", "png"), ("facture.pdf", "application", "pdf"),
               ("rapport-erreur.txt", "text", "plain"), ("journal.log", "text", "plain"),
               ("devis.docx", "application",
                "vnd.openxmlformats-officedocument.wordprocessingml.document"))

# Shares of each kind of mail (they add up to 1).
KINDS: tuple[tuple[str, float], ...] = (
    ("support-watched", 0.34),      # a request sent to a team member or contact@
    ("support-assistance", 0.14),   # sent where it should be
    ("support-both", 0.05),         # to assistance and a watched address at once
    ("resend", 0.05),               # the same request again (same Message-ID, or TR:)
    ("followup", 0.07),             # "RE: [example #1234] ..."
    ("other", 0.17),                # commercial, thanks, invitations, invoices
    ("newsletter", 0.08),           # List-Id / Precedence: bulk
    ("autoreply", 0.03),            # Auto-Submitted: auto-replied
    ("internal", 0.05),             # from example.org
    ("bounce", 0.02),               # null sender, multipart/report
)
SECRET_SHARE = 0.12                 # of the support requests
HTML_SHARE = 0.6
ATTACHMENT_SHARE = 0.12
EPOCH = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

# Domains that DKIM-sign their mail (the others, and bounces, do not).
SIGNING_DOMAINS = frozenset({
    "mairie-exemple.fr", "asso-velo.org", "ecole-des-pins.fr", "cabinet-martin.fr",
    "laposte.example", "theatre-du-port.org", "free.example", "bibliotheque-ville.fr",
    "greenhouse.example.com", "orange.example", "mailbox.example", "example.org",
    "copieurs-pro.example", "saas-cloud.example", "libre-hebergeurs.example",
    "fournisseur.example"})
DKIM_SELECTOR = "bench"
DKIM_TIME = 1_700_000_000            # t= of every signature (in the past: never "future")

Signer = Callable[[bytes, str], bytes]          # (raw, domain) -> raw with DKIM-Signature


def dkim_signer(private_pem: bytes, selector: str = DKIM_SELECTOR) -> Signer:
    """A signer with this RSA key (relaxed/relaxed, dkimpy's default header list)."""
    def sign(raw: bytes, domain: str) -> bytes:
        # dkimpy stamps t= from time.time(): pin it, for reproducible bytes.
        with mock.patch.object(dkim, "time", SimpleNamespace(time=lambda: DKIM_TIME)):
            signature = dkim.sign(raw, selector.encode(), domain.encode(), private_pem,
                                  canonicalize=(b"relaxed", b"relaxed"))
        return signature + raw
    return sign


@dataclass(frozen=True)
class MixMessage:
    """One message of the mix with its envelope; ``raw`` has CRLF line ends."""

    index: int
    kind: str
    lang: str
    mail_from: str                       # "" for a bounce
    rcpts: tuple[str, ...]
    raw: bytes
    message_id: str                      # without angle brackets
    secret: bool = False
    attachment: bool = False
    duplicate_of: int | None = None      # index of the message this one repeats
    dkim: bool = False                   # carries a DKIM signature of its sender's domain

    @property
    def size(self) -> int:
        return len(self.raw)


def _to_crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class _Writer:
    """Builds the messages of one mix from one random generator."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.clock = EPOCH

    def pick(self, seq: tuple, k: int = 1) -> list:
        return self.rng.sample(seq, k)

    def msgid(self, domain: str) -> str:
        return f"{self.rng.getrandbits(64):016x}.{self.rng.randrange(10**6):06d}@{domain}"

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=self.rng.randrange(5, 240))
        return self.clock

    def headers(self, msg: EmailMessage, sender: tuple[str, str, str | None], to: list[str],
                subject: str, message_id: str, *, cc: list[str] | None = None) -> None:
        addr, name, _ = sender
        domain = addr.split("@", 1)[1]
        when = self.tick()
        msg["Received"] = (f"from mail.{domain} (mail.{domain} [192.0.2."
                           f"{self.rng.randrange(1, 254)}]) by mx.{domain} (Postfix) with "
                           f"ESMTPSA id {self.rng.getrandbits(40):010X} for <{to[0]}>; "
                           f"{when.strftime('%a, %d %b %Y %H:%M:%S +0000')}")
        msg["Message-ID"] = f"<{message_id}>"
        msg["Date"] = when.strftime("%a, %d %b %Y %H:%M:%S +0100")
        local, _, dom = addr.partition("@")
        msg["From"] = Address(name, local, dom)
        msg["To"] = ", ".join(to)
        if cc:
            msg["Cc"] = ", ".join(cc)
        msg["Subject"] = subject
        self.outlook = self.rng.random() < 0.4
        if self.outlook:
            msg["Thread-Topic"] = subject
            msg["Thread-Index"] = base64.b64encode(self.rng.randbytes(22)).decode()
            msg["X-MS-Has-Attach"] = ""
            msg["X-MS-TNEF-Correlator"] = ""
            msg["X-Originating-IP"] = f"[198.51.100.{self.rng.randrange(1, 254)}]"
            msg["X-Mailer"] = "Microsoft Outlook 16.0"
        else:
            msg["User-Agent"] = self.rng.choice((
                "Mozilla Thunderbird", "Roundcube Webmail/1.6.5", "Apple Mail (2.3774)",
                "SOGoMail 5.9.1"))

    def body(self, msg: EmailMessage, text: str, *, html: bool, attachment: bool) -> None:
        msg.set_content(text, cte="quoted-printable" if self.rng.random() < 0.5 else "8bit")
        if html:
            msg.add_alternative(self.html(text), subtype="html", cte="quoted-printable")
        if attachment:
            filename, maintype, subtype = self.rng.choice(ATTACHMENTS)
            size = int(self.rng.lognormvariate(9.2, 0.6))          # median ~10 KB
            if maintype == "text":
                data = ("\n".join(f"2026-03-02 08:{i % 60:02d}:{i % 7:02d} ERROR sync: "
                                  f"request {self.rng.getrandbits(32):08x} failed (503)"
                                  for i in range(size // 70))).encode()
                msg.add_attachment(data, maintype=maintype, subtype=subtype,
                                   filename=filename)
            else:
                msg.add_attachment(self.rng.randbytes(size), maintype=maintype,
                                   subtype=subtype, filename=filename)

    def html(self, text: str) -> str:
        """The HTML alternative of ``text``: Outlook's heavy markup or a light one."""
        if self.outlook:
            lines = "".join(
                "<p class=MsoNormal><span style='font-size:11.0pt;font-family:\"Calibri\","
                f"sans-serif;color:#1F497D'>{line or '&nbsp;'}<o:p></o:p></span></p>\n"
                for line in text.split("\n"))
            return ("<html xmlns:v=\"urn:schemas-microsoft-com:vml\" xmlns:o=\"urn:"
                    "schemas-microsoft-com:office:office\" xmlns:w=\"urn:schemas-microsoft-"
                    "com:office:word\"><head><meta http-equiv=Content-Type content=\"text/"
                    "html; charset=utf-8\"><style><!--\n/* Font Definitions */\n"
                    "@font-face {font-family:\"Cambria Math\"; panose-1:2 4 5 3 5 4 6 3 2 4;}"
                    "\n@font-face {font-family:Calibri; panose-1:2 15 5 2 2 2 4 3 2 4;}\n"
                    "p.MsoNormal, li.MsoNormal, div.MsoNormal {margin:0cm; font-size:11.0pt;"
                    " font-family:\"Calibri\",sans-serif;}\na:link, span.MsoHyperlink "
                    "{mso-style-priority:99; color:#0563C1; text-decoration:underline;}\n"
                    "span.EmailStyle17 {mso-style-type:personal-compose; font-family:"
                    "\"Calibri\",sans-serif; color:windowtext;}\n.MsoChpDefault {mso-style-"
                    "type:export-only; font-family:\"Calibri\",sans-serif;}\n@page "
                    "WordSection1 {size:612.0pt 792.0pt; margin:70.85pt 70.85pt 70.85pt "
                    "70.85pt;}\ndiv.WordSection1 {page:WordSection1;}\n--></style></head>"
                    f"<body lang=FR link=\"#0563C1\" vlink=\"#954F72\">"
                    f"<div class=WordSection1>\n{lines}</div></body></html>\n")
        paragraphs = "".join(f"<p>{p.replace(chr(10), '<br>')}</p>\n"
                             for p in text.split("\n\n"))
        return ("<!DOCTYPE html><html><head><meta http-equiv=\"Content-Type\" "
                "content=\"text/html; charset=UTF-8\"></head>\n<body>\n"
                f"<div class=\"moz-text-html\" lang=\"fr\">\n{paragraphs}</div>\n"
                "</body></html>\n")

    # --- texts ----------------------------------------------------------------------

    def request_text(self, lang: str, name: str, *, secret: bool) -> tuple[str, str]:
        rng = self.rng
        if lang == "fr":
            tool = rng.choice(TOOLS_FR)
            problem = rng.choice(PROBLEMS_FR).format(tool=tool)
            subject = rng.choice((problem[:1].upper() + problem[1:60],
                                  f"Problème avec {tool}", f"Urgent : {tool}",
                                  f"{tool} en panne"))
            lines = ["Bonjour,", "", problem[:1].upper() + problem[1:] + "."]
            lines += self.pick(DETAILS_FR, rng.randrange(2, 5))
            if secret:
                lines += ["", "Pour vous faciliter la tâche, voici nos accès :",
                          rng.choice(SECRETS)]
            lines += ["", "Merci d'avance pour votre aide,", ""]
        else:
            tool = rng.choice(TOOLS_EN)
            problem = rng.choice(PROBLEMS_EN).format(tool=tool)
            subject = rng.choice((problem[:1].upper() + problem[1:60],
                                  f"Problem with {tool}", f"Urgent: {tool} down"))
            lines = ["Hello,", "", problem[:1].upper() + problem[1:] + "."]
            lines += self.pick(DETAILS_EN, rng.randrange(2, 5))
            if secret:
                lines += ["", "To make it easier, here are our credentials:",
                          rng.choice(SECRETS)]
            lines += ["", "Thanks in advance,", ""]
        text = "\n".join(lines) + rng.choice(SIGNATURES).format(name=name)
        if rng.random() < 0.6:
            text += DISCLAIMER
        if rng.random() < 0.35:
            text += self.quoted_history(lang)
        return subject, text

    def quoted_history(self, lang: str) -> str:
        rng = self.rng
        intro = ("Le {d}, Alice a écrit :" if lang == "fr" else "On {d}, Alice wrote:")
        old = rng.sample(DETAILS_FR if lang == "fr" else DETAILS_EN, 3)
        quoted = "\n".join("> " + line for line in ["Bonjour,", "", *old, "", "Alice"])
        return "\n" + intro.format(d="28/02/2026 à 17:42") + "\n" + quoted + "\n"

    def newsletter_text(self) -> str:
        n = self.rng.randrange(3, 7)
        return ("Bonjour,\n\n" + "\n\n".join(LOREM_FR for _ in range(n))
                + "\n\nPour vous désinscrire : https://lists.example.net/unsubscribe\n")


def _pick_kind(rng: random.Random) -> str:
    x = rng.random()
    for kind, share in KINDS:
        if x < share:
            return kind
        x -= share
    return KINDS[-1][0]


def generate(n: int, seed: int = 1, signer: Signer | None = None) -> list[MixMessage]:
    """``n`` messages of the mix, the same bytes for the same ``(n, seed)``; signed
    (see the module docstring) with a ``signer``."""
    rng = random.Random(seed)
    w = _Writer(rng)
    out: list[MixMessage] = []
    requests: list[int] = []            # indexes of support requests (for resends)
    for i in range(n):
        kind = _pick_kind(rng)
        if kind == "resend" and not requests:
            kind = "support-watched"
        m = _make(i, kind, w, out, requests)
        # A resend of the very same bytes keeps its original's signature.
        if m.duplicate_of is None or m.raw is not out[m.duplicate_of].raw:
            m = _signed(m, signer)
        out.append(m)
        if m.kind.startswith("support"):
            requests.append(i)
    return out


# Mailboxes on the same MX that nobody watches: the client structures' own mail,
# hosted by the company (addresses that match no [[watch]] group of the example
# configuration and no assistance address).
UNWATCHED = tuple(f"{local}@{domain}" for domain in (
    "mairie-exemple.fr", "asso-velo.org", "ecole-des-pins.fr", "cabinet-martin.fr",
    "theatre-du-port.org", "bibliotheque-ville.fr", "ccas-exemple.fr")
    for local in ("accueil", "direction", "compta", "secretariat", "m.durand", "l.petit"))
#: The helpdesk's share of a realistic MX's mail (SPEC: 80 % is for unwatched mailboxes).
MX_HELPDESK_SHARE = 0.2


def mx_mix(n: int, seed: int = 1, signer: Signer | None = None) -> list[MixMessage]:
    """A realistic MX: ``n`` messages, one in five the helpdesk's (the first messages
    of ``generate(.., seed)``, in order, so its duplicates stay duplicates), the others
    the same kinds of mail (from another seed) for mailboxes nobody watches, with 1 to
    3 recipients each.  Indexes are positions in the returned list."""
    helpdesk = generate(round(n * MX_HELPDESK_SHARE), seed, signer)
    others = generate(n - len(helpdesk), seed + 7919, signer)
    rng = random.Random(seed + 104729)
    out: list[MixMessage] = []
    moved: dict[int, int] = {}
    h = iter(helpdesk)
    o = iter(others)
    every = max(1, round(1 / MX_HELPDESK_SHARE))
    for i in range(n):
        m = next(h, None) if i % every == 0 else None
        if m is not None:
            moved[m.index] = i
            dup = moved.get(m.duplicate_of) if m.duplicate_of is not None else None
            out.append(replace(m, index=i, duplicate_of=dup))
            continue
        m = next(o, None) or next(h)
        k = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
        out.append(replace(m, index=i, kind="unwatched", duplicate_of=None,
                           rcpts=tuple(rng.sample(UNWATCHED, k))))
    return out


def _signed(m: MixMessage, signer: Signer | None) -> MixMessage:
    domain = m.mail_from.rpartition("@")[2].lower()
    if signer is None or domain not in SIGNING_DOMAINS:
        return m
    return replace(m, raw=signer(m.raw, domain), dkim=True)


def _assistance(structure: str | None) -> str:
    return ASSISTANCE.format(structure=structure) if structure else FALLBACK


def _make(i: int, kind: str, w: _Writer, done: list[MixMessage],
          requests: list[int]) -> MixMessage:
    rng = w.rng
    lang = "fr" if rng.random() < 0.75 else "en"
    html = rng.random() < HTML_SHARE
    attachment = rng.random() < ATTACHMENT_SHARE
    msg = EmailMessage()

    if kind == "resend":
        # The same request again, later: either the same bytes to another watched
        # address (same Message-ID), or a forward ("TR:") with a new Message-ID.
        orig = done[rng.choice(requests[-50:])]
        watched = rng.choice(TEAM + CONTACT)
        if rng.random() < 0.5:
            return MixMessage(i, kind, orig.lang, orig.mail_from, (watched,), orig.raw,
                              orig.message_id, orig.secret, orig.attachment, orig.index)
        sender = next(s for s in CLIENT_SENDERS + UNKNOWN_SENDERS if s[0] == orig.mail_from)
        inner = orig.raw.split(b"\r\n\r\n", 1)[1].decode("utf-8", "replace")
        text = ("\n-------- Message transféré --------\n" if orig.lang == "fr"
                else "\n---------- Forwarded message ---------\n") + inner[:3000]
        mid = w.msgid(orig.mail_from.split("@", 1)[1])
        w.headers(msg, sender, [watched], f"TR: demande {orig.index}", mid)
        w.body(msg, text, html=False, attachment=False)
        return _done(i, kind, orig.lang, orig.mail_from, (watched,), msg, mid,
                     secret=orig.secret, duplicate_of=orig.index)

    if kind.startswith("support") or kind == "followup":
        sender = rng.choice(CLIENT_SENDERS if rng.random() < 0.85 else UNKNOWN_SENDERS)
        secret = kind != "followup" and rng.random() < SECRET_SHARE
        subject, text = w.request_text(lang, sender[1], secret=secret)
        assistance = _assistance(sender[2])
        if kind == "support-watched":
            rcpts = tuple(rng.sample(TEAM + CONTACT, 1 if rng.random() < 0.8 else 2))
        elif kind == "support-assistance":
            rcpts = (assistance,)
        elif kind == "support-both":
            rcpts = (assistance, rng.choice(TEAM + CONTACT))
        else:
            subject = f"RE: [example #{rng.randrange(1000, 99999)}] {subject}"
            rcpts = (rng.choice(TEAM),)
        mid = w.msgid(sender[0].split("@", 1)[1])
        w.headers(msg, sender, list(rcpts[:1]), subject, mid, cc=list(rcpts[1:]))
        w.body(msg, text, html=html, attachment=attachment)
        return _done(i, kind, lang, sender[0], rcpts, msg, mid, secret=secret,
                     attachment=attachment)

    if kind == "other":
        sender = rng.choice(CLIENT_SENDERS + UNKNOWN_SENDERS
                            + tuple((v, "Service commercial", None) for v in VENDORS))
        subject, para = rng.choice(OTHER_FR if lang == "fr" else OTHER_EN)
        text = ("Bonjour,\n\n" if lang == "fr" else "Hello,\n\n") + para + "\n\n" + \
            rng.choice(SIGNATURES).format(name=sender[1])
        rcpts = (rng.choice(TEAM + CONTACT),)
        mid = w.msgid(sender[0].split("@", 1)[1])
        w.headers(msg, sender, list(rcpts), subject, mid)
        w.body(msg, text, html=html, attachment=attachment)
        return _done(i, kind, lang, sender[0], rcpts, msg, mid, attachment=attachment)

    if kind == "newsletter":
        vendor = rng.choice(VENDORS)
        sender = (vendor, "La lettre", None)
        rcpts = (rng.choice(TEAM + CONTACT),)
        mid = w.msgid(vendor.split("@", 1)[1])
        w.headers(msg, sender, list(rcpts), rng.choice(NEWSLETTER_SUBJECTS), mid)
        msg["List-Id"] = f"<lettre.{vendor.split('@', 1)[1]}>"
        msg["List-Unsubscribe"] = "<https://lists.example.net/unsubscribe>"
        msg["Precedence"] = "bulk"
        w.body(msg, w.newsletter_text(), html=True, attachment=False)
        return _done(i, kind, "fr", vendor, rcpts, msg, mid)

    if kind == "autoreply":
        sender = rng.choice(CLIENT_SENDERS)
        rcpts = (rng.choice(TEAM),)
        mid = w.msgid(sender[0].split("@", 1)[1])
        w.headers(msg, sender, list(rcpts), "Réponse automatique : absence", mid)
        msg["Auto-Submitted"] = "auto-replied"
        w.body(msg, "Bonjour,\n\nJe suis absente jusqu'au 12 mars, sans accès à ma "
               "messagerie. En cas d'urgence, contactez le secrétariat.\n\nCordialement\n",
               html=False, attachment=False)
        return _done(i, kind, "fr", sender[0], rcpts, msg, mid)

    if kind == "internal":
        addr = rng.choice(INTERNAL_SENDERS)
        sender = (addr, addr.split("@")[0].title(), None)
        rcpts = (rng.choice(TEAM + CONTACT),)
        subject, text = w.request_text(lang, sender[1], secret=rng.random() < SECRET_SHARE)
        mid = w.msgid("example.org")
        w.headers(msg, sender, list(rcpts), "TR: " + subject, mid)
        w.body(msg, text, html=html, attachment=attachment)
        return _done(i, kind, lang, addr, rcpts, msg, mid, attachment=attachment)

    # bounce: a DSN about a mail a team member sent (written by hand: the email
    # package cannot generate message/delivery-status parts)
    rcpt = rng.choice(TEAM)
    mid = w.msgid("mx.mairie-exemple.fr")
    when = w.tick().strftime("%a, %d %b %Y %H:%M:%S +0100")
    boundary = f"{rng.getrandbits(48):012X}.{i}/mx.mairie-exemple.fr"
    raw = (
        f"Message-ID: <{mid}>\nDate: {when}\n"
        "From: MAILER-DAEMON@mx.mairie-exemple.fr (Mail Delivery System)\n"
        f"To: {rcpt}\nSubject: Undelivered Mail Returned to Sender\n"
        "Auto-Submitted: auto-replied\nMIME-Version: 1.0\n"
        f"Content-Type: multipart/report; report-type=delivery-status;\n"
        f"\tboundary=\"{boundary}\"\n\n"
        f"--{boundary}\nContent-Description: Notification\n"
        "Content-Type: text/plain; charset=us-ascii\n\n"
        "This is the mail system at host mx.mairie-exemple.fr.\n\n"
        "I'm sorry to have to inform you that your message could not be delivered to "
        "one or more recipients.\n\n<ancien@mairie-exemple.fr>: host mx said: 550 5.1.1 "
        "User unknown\n\n"
        f"--{boundary}\nContent-Description: Delivery report\n"
        "Content-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; mx.mairie-exemple.fr\n\n"
        "Final-Recipient: rfc822; ancien@mairie-exemple.fr\nAction: failed\n"
        "Status: 5.1.1\n\n"
        f"--{boundary}--\n").encode()
    return MixMessage(i, kind, "en", "", (rcpt,), _to_crlf(raw), mid)


def _done(i: int, kind: str, lang: str, mail_from: str, rcpts: tuple[str, ...],
          msg: EmailMessage, mid: str, *, secret: bool = False, attachment: bool = False,
          duplicate_of: int | None = None) -> MixMessage:
    _fix_boundaries(msg, mid)
    raw = _to_crlf(msg.as_bytes(policy=SMTP))
    return MixMessage(i, kind, lang, mail_from, rcpts, raw, mid, secret, attachment,
                      duplicate_of)


def _fix_boundaries(msg: EmailMessage, seed: str) -> None:
    # The email package draws MIME boundaries from the global random generator:
    # derive them from the message instead, so that the bytes are reproducible.
    for n, part in enumerate(msg.walk()):
        if part.is_multipart():
            part.set_boundary(f"----=_Part_{n}_{seed.partition('@')[0]}")


def sized(size: int, shape: str = "text", seed: int | str = 7,
          signer: Signer | None = None) -> MixMessage:
    """One support request of about ``size`` bytes (see the module docstring),
    DKIM-signed with a ``signer``."""
    if shape not in ("text", "attachment"):
        raise ValueError(f"unknown shape {shape!r}")
    rng = random.Random(seed)
    w = _Writer(rng)
    sender = CLIENT_SENDERS[0]
    subject, request = w.request_text("fr", sender[1], secret=True)
    mid = f"sized-{shape}-{size}-{seed}@mairie-exemple.fr"
    template = EmailMessage()
    w.headers(template, sender, ["alice@example.org"], subject, mid)
    head = list(template.items())
    if shape == "text":
        # The filler is drawn from the seed: two sizes or seeds never share their text.
        words = rng.choices(_VOCABULARY, k=size // 6 + 10)
        content = request + "\n" + "\n".join(" ".join(words[k:k + 11])
                                              for k in range(0, len(words), 11))
    else:
        payload = rng.randbytes(size)

    def build(n: int) -> bytes:
        m = EmailMessage()
        for name, value in head:
            m[name] = value
        if shape == "text":
            m.set_content(content[:n], cte="quoted-printable")
        else:
            m.set_content(request, cte="quoted-printable")
            m.add_attachment(payload[:n], maintype="application", subtype="pdf",
                             filename="scan.pdf")
        _fix_boundaries(m, mid)
        return _to_crlf(m.as_bytes(policy=SMTP))

    # Encodings (quoted-printable, base64) inflate the content: aim, measure, correct.
    base = len(build(0))
    n = max(0, size - base)
    raw = build(n)
    for _ in range(3):
        grown = len(raw) - base
        if grown <= 0 or abs(len(raw) - size) <= size // 200:
            break
        n = max(0, int(n * (size - base) / grown))
        raw = build(n)
    return _signed(MixMessage(0, f"sized-{shape}", "fr", sender[0], ("alice@example.org",),
                              raw, mid, True, shape == "attachment"), signer)


def describe(mix: list[MixMessage]) -> dict[str, object]:
    """Size and composition figures of a mix (for the report)."""
    sizes = [m.size for m in mix]
    kinds = Counter(m.kind for m in mix)
    return {
        "messages": len(mix),
        "mean_bytes": round(statistics.fmean(sizes)) if sizes else 0,
        "median_bytes": round(statistics.median(sizes)) if sizes else 0,
        "max_bytes": max(sizes, default=0),
        "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "french": sum(m.lang == "fr" for m in mix),
        "html": sum(b"text/html" in m.raw for m in mix),
        "attachments": sum(m.attachment for m in mix),
        "secrets": sum(m.secret for m in mix),
        "dkim_signed": sum(m.dkim for m in mix),
        "duplicates": sum(m.duplicate_of is not None or m.kind == "support-both"
                          for m in mix),
    }


def split(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Header fields (name, value as Postfix sends it: unfolded lines joined by LF)
    and body (CRLF) of a raw message, for the milter protocol."""
    head, _, body = raw.partition(b"\r\n\r\n")
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\n" + line)
        else:
            raw_name, _, value = line.partition(b":")
            fields.append((raw_name.decode("ascii", "replace"), value.lstrip(b" ")))
    return fields, body
