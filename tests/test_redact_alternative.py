"""The HTML alternative of a plain part that held no secret (redact._said_in).

The walk skips extracting and scanning an HTML alternative when everything it can show
is already in its plain part, which held no secret.  Each test here is a way the HTML
can show more than the plain part, and must still be read; the last one runs the
walk with and without the shortcut over every whole message of the corpora, the
public test mail and the blind tuning sets, and requires identical results.
"""

from __future__ import annotations

import random
import re
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from helpdesk_milter import redact
from helpdesk_milter.redact import redact_message
from helpdesk_milter.secrets import SecretScanner
from support.whole_mail import whole_messages

SCANNER = SecretScanner()

PLAIN = """Bonjour Mme Lefèvre,

Depuis la mise à jour de lundi, l'agenda partagé de la mairie ne se synchronise
plus sur les téléphones des élus. Le message affiché est « Compte non vérifié ».
Pourriez-vous regarder ? Le mot de passe du compte n'a pas changé.

Cordialement,
Hélène Martin
Secrétariat de mairie — 03 84 52 17 90
"""

HTML = """<html><head><style>p {{ margin: 0; font-family: Calibri, sans-serif }}</style>
</head><body><div class="WordSection1">
<p class="MsoNormal">Bonjour Mme Lef&egrave;vre,</p>
<p class="MsoNormal">&nbsp;</p>
<p class="MsoNormal">Depuis la mise &agrave; jour de lundi, l'agenda partag&eacute; de la
mairie ne se synchronise plus sur les t&eacute;l&eacute;phones des &eacute;lus. Le message
affich&eacute; est &laquo;&nbsp;Compte non v&eacute;rifi&eacute;&nbsp;&raquo;.
Pourriez-vous regarder&nbsp;? Le mot de passe du compte n'a pas chang&eacute;.</p>
{extra}<p class="MsoNormal">Cordialement,<br>H&eacute;l&egrave;ne Martin<br>
<span style="color:#1F497D">Secr&eacute;tariat de mairie &mdash;
03&nbsp;84&nbsp;52&nbsp;17&nbsp;90</span></p>
</div></body></html>
"""


def alternative(plain: str, html: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Hélène Martin <secretariat@mairie-exemple.fr>"
    msg["To"] = "alice@example.org"
    msg["Subject"] = "Agenda partagé qui ne se synchronise plus"
    msg["Message-ID"] = "<alt-1@mairie-exemple.fr>"
    msg.set_content(plain, cte="quoted-printable")
    msg.add_alternative(html, subtype="html", cte="quoted-printable")
    return msg.as_bytes(policy=SMTP)


@pytest.fixture
def spared(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each call of the check answered."""
    answers: list[bool] = []
    check = redact._said_in

    def counting(markup: str, plain: str, scanner: SecretScanner) -> bool:
        answers.append(check(markup, plain, scanner))
        return answers[-1]
    monkeypatch.setattr(redact, "alternative_check", counting)
    return answers


def test_html_saying_what_the_plain_part_says_is_spared(spared: list[bool]) -> None:
    r = redact_message(alternative(PLAIN, HTML.format(extra="")), SCANNER)
    assert spared == [True]
    assert r.count == 0 and r.body is None


def test_a_secret_only_in_the_html_is_found(spared: list[bool]) -> None:
    # the plain part written first, the HTML edited after (or forged): it says more
    extra = '<p class="MsoNormal">PS : le nouveau mot de passe est Tr3fle-Vert!82</p>\n'
    r = redact_message(alternative(PLAIN, HTML.format(extra=extra)), SCANNER)
    assert spared == [False]
    assert r.count == 1 and r.body is not None
    assert b"Tr3fle-Vert!82" not in r.body and b"Tr3fle" not in r.body


def test_a_table_is_always_read() -> None:
    # the plain rendering of a table loses which column a value sits in: even when
    # every word of it is in the plain part, the HTML is read
    table = ("<table><tr><th>Identifiant</th><th>Code</th></tr>"
             "<tr><td>compta</td><td>Kx7mW2q</td></tr></table>")
    plain = "Identifiant Code\ncompta Kx7mW2q\n"
    assert not redact._said_in(HTML.format(extra=table), PLAIN + plain, SCANNER)
    assert redact._said_in(HTML.format(extra=table.replace("<td>", "<span>")
                                       .replace("</td>", "</span>").replace("th>", "b>")),
                           PLAIN + plain, SCANNER)


def test_a_secret_in_a_link_the_plain_part_leaves_out_is_found(spared: list[bool]) -> None:
    # Gmail's plain part keeps a link's text, not its address
    extra = ('<p><a href="https://admin:S3cr3t-Tr0mbone@nas.mairie-exemple.fr/">'
             'le NAS</a></p>\n')
    plain = PLAIN + "\nle NAS\n"
    r = redact_message(alternative(plain, HTML.format(extra=extra)), SCANNER)
    assert spared == [False]
    assert r.count == 1 and r.body is not None and b"S3cr3t-Tr0mbone" not in r.body


def test_a_secret_in_the_plain_part_is_removed_from_both(spared: list[bool]) -> None:
    extra = '<p class="MsoNormal">Le mot de passe provisoire est Gr4nit-Lune!7</p>\n'
    plain = PLAIN + "\nLe mot de passe provisoire est Gr4nit-Lune!7\n"
    r = redact_message(alternative(plain, HTML.format(extra=extra)), SCANNER)
    assert spared == []                     # the plain part held one: the HTML is read
    assert r.count == 2 and r.body is not None and b"Gr4nit" not in r.body


def test_html_first_is_read_in_full(spared: list[bool]) -> None:
    msg = EmailMessage()
    msg["From"] = "secretariat@mairie-exemple.fr"
    msg["Subject"] = "agenda"
    msg.set_content(HTML.format(extra=""), subtype="html")
    msg.add_alternative(PLAIN)
    redact_message(msg.as_bytes(policy=SMTP), SCANNER)
    assert spared == []


def test_same_redactions_with_and_without_the_shortcut(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    messages = list(whole_messages())
    assert len(messages) > 1000
    check = redact._said_in
    spared = 0

    def counting(markup: str, plain: str, scanner: SecretScanner) -> bool:
        nonlocal spared
        yes = check(markup, plain, scanner)
        spared += yes
        return yes
    differ = []
    for name, raw in messages:
        results = []
        for fn in (lambda m, p, s: False, counting):
            monkeypatch.setattr(redact, "alternative_check", fn)
            r = redact_message(raw, SCANNER)
            results.append((r.count, r.kinds, r.body, r.subject, r.where))
        if results[0] != results[1]:
            differ.append(name)
    assert differ == []
    assert spared > 100                     # the shortcut is taken, not only allowed


def test_the_check_is_bounded() -> None:
    # a long plain part or HTML: not tried (the word set and the searches would cost
    # more than they spare); many words found only by searching the plain text: stops
    plain = "mot " * (redact._SAID_IN_MAX // 4 + 1)
    assert not redact._said_in("<p>mot</p>", plain, SCANNER)
    assert not redact._said_in("<p>" + "mot " * (redact._SAID_IN_MAX // 4 + 1) + "</p>",
                               "mot", SCANNER)
    glued = " ".join(f"x{n}y" for n in range(200))          # "x1y x2y ..."
    few = "<p>" + " ".join(f"{n}" for n in range(redact._SAID_IN_SEARCHES)) + "</p>"
    many = "<p>" + " ".join(f"{n}" for n in range(200)) + "</p>"
    assert redact._said_in(few, glued, SCANNER)              # each found inside a word
    assert not redact._said_in(many, glued, SCANNER)


def test_hidden_parts_are_what_the_lazy_pattern_finds():
    """``_HIDDEN`` (comments, scripts, styles) is spelt for speed; it removes exactly
    what the plain lazy pattern removes, end marks in any case, unclosed blocks, and
    look-alike letters (long s, dotted I) included."""
    lazy = re.compile(r"<!--.*?(?:-->|\Z)|<(script|style|xmp|textarea)\b.*?(?:</\1\s*>|\Z)",
                      re.I | re.S)
    tokens = ["<", ">", "/", "!", "-", "--", "<!--", "-->", "<style", "</style>", "</STYLE >",
              "<ScRiPt", "</script\n>", "</scr\u0130pt>", "<\u017ftyle", "</\u017ftyle>", "<xmp>",
              "</xmp>", "<textarea", "</textarea\t>", " ", "\n", "a", "é", "<b>", "</b>",
              "styles", "<style-", "<stylex", "\u2028", "\u212a"]
    rng = random.Random(5)
    for _ in range(20_000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randrange(0, 14)))
        assert redact._HIDDEN.sub(" ", text) == lazy.sub(" ", text), text
