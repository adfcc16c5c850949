"""The guidance mail's content: what a request lacks, in which language to answer, and
the RFC 3834 auto-reply that tells a client, kindly, where to write next time.

This module decides *what the mail says*, never *whether* it is sent (trust, rate
limits, the outbox and the SMTP worker live elsewhere).  Everything here is pure: no
network, no logging, no global mutable state; the only inputs from outside are the
template files (read on each :func:`compose`, so an admin's edit applies without a
restart) and, in :func:`build_message`, the clock and a random Message-ID unless the
caller injects them.

``detect_language(subject, text)``
    ``"fr"`` (the default) or ``"en"``, from counts of French and English function
    words, elisions, contractions and accented letters in the sender's own text (quoted
    history, signatures and disclaimers removed by :func:`text.own_text`; of a
    forward, only what the forwarder wrote, when they wrote anything).  English needs
    at least :data:`MIN_ENGLISH_EVIDENCE` points and strictly more than French: a tie,
    an empty or a very short text answer in French.

``hints(subject, text)``
    Stable names of what the request lacks, for the ``X-Helpdesk-Hints`` header and
    for the tip paragraph: ``vague-subject`` (after reply/forward prefixes and
    bracketed tags, fewer than two words that say something -- words like urgent,
    help, problème, question, bonjour, demande say nothing), ``no-when`` (no date,
    time, weekday, "depuis", "hier", "since", "ago"...), ``no-what`` (a short text
    that names no tool, object, error, address, file or code; conservative: a body of
    :data:`WHAT_WORDS_ENOUGH` words or more is taken as a description).

``compose(...)`` -> :class:`Guidance`
    Subject and text/plain body from template pieces, in the requested language.
    Subject: ``Auto: <original subject>`` -- RFC 3834 section 3.1.5 asks for "a brief
    indication that the message is an automatic response, followed by contents of the
    Subject field ... from the subject message" and offers the language-independent
    "Auto:" prefix (the default of Sieve vacation, RFC 5230 section 5.3).  Not "Re:":
    that claims a human reply, and helpdesks and clients thread it as one.  The
    original subject is kept whole (ticket tag included) so the client recognises it.

``build_message(g, ...)`` -> :class:`email.message.EmailMessage`
    The RFC 3834 response, see its docstring for each header and why.

Templates
    ``templates/<lang>/<piece>.txt`` in this package (``string.Template``, ``$name``
    placeholders, ``$$`` for a dollar sign), overridable piece by piece from a
    directory with the same layout.  An override that is unreadable, not UTF-8, uses
    an unknown placeholder or lacks a required one falls back to the shipped piece;
    :func:`compose` reports it in :attr:`Guidance.fallbacks`, and
    :func:`check_templates` (for ``check-config``) raises :class:`TemplateError`
    naming every problem.  An *empty* override drops that paragraph (for instance an
    empty ``tips.txt``), except for the pieces with required placeholders.  Each line
    of a template is a paragraph or a list item (``- ...``); lines are wrapped at
    :data:`WRAP` columns after substitution, never inside an address or a URL; in
    French, the space before ``: ; ! ? »`` and after ``«`` becomes a no-break space.
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template

from .classify import (
    BODY_SCAN_LIMIT,
    TEXT_SCAN_LIMIT,
    fold,
    is_forward_subject,
    prepare,
    prepared_body,
)
from .text import own_text, strip_subject_prefixes

__all__ = [
    "CASES", "DEFAULT_LANGUAGE", "HINTS", "LANGUAGES", "PIECES", "Guidance", "TemplateError",
    "build_message", "check_templates", "compose", "detect_language", "hints",
]

LANGUAGES: tuple[str, ...] = ("fr", "en")
DEFAULT_LANGUAGE = "fr"
CASES: tuple[str, ...] = ("rerouted", "followup", "secret")
HINTS: tuple[str, ...] = ("vague-subject", "no-when", "no-what")
# Hints that call for the tip paragraph (all of them, today).
TIP_HINTS = frozenset(HINTS)

# The pieces, in the order a mail uses them.  "no-subject" stands in for an empty
# original subject; "followup-noticket" is "followup" when the ticket is unknown.
PIECES: tuple[str, ...] = (
    "subject", "no-subject", "greeting", "rerouted", "followup", "followup-noticket",
    "secret", "tips", "signature",
)
_COMMON = frozenset({"assistance", "paste_url", "original_subject"})
ALLOWED_PLACEHOLDERS: Mapping[str, frozenset[str]] = {
    **{piece: _COMMON for piece in PIECES},
    "no-subject": frozenset(),          # it *is* the value of $original_subject
    "followup": _COMMON | {"ticket"},   # the only piece that knows the ticket
}
REQUIRED_PLACEHOLDERS: Mapping[str, frozenset[str]] = {
    "subject": frozenset({"original_subject"}),       # RFC 3834 3.1.5
    "rerouted": frozenset({"assistance"}),            # where the request went
    "followup": frozenset({"assistance", "ticket"}),
    "followup-noticket": frozenset({"assistance"}),
    "secret": frozenset({"paste_url"}),               # where secrets go instead
}
_SINGLE_LINE = frozenset({"subject", "no-subject"})

WRAP = 72                       # body line width (RFC 5322 recommends at most 78)
SUBJECT_KEEP = 180              # characters of the original subject quoted back
TEMPLATE_MAX = 8_000            # characters; a larger override is refused
MIN_ENGLISH_EVIDENCE = 2
WHAT_WORDS_ENOUGH = 40
_SCAN_CHARS = TEXT_SCAN_LIMIT   # of the body given to own_text (as the classifier)
_LANG_CHARS = 4_000             # of the sender's own text read for the language
_HINT_CHARS = BODY_SCAN_LIMIT   # of the own text searched for hints (as the classifier)
_WHAT_CHARS = 2_000             # of a short text searched for its "what"
_REFERENCES_KEEP = 20           # message ids kept in References (first + last ones)


class TemplateError(ValueError):
    """A template override cannot be used; ``problems`` lists every reason, one a line."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__("guidance templates:\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class Guidance:
    """A composed guidance mail, ready for :func:`build_message`.

    ``subject`` is one line; ``text`` is the whole text/plain body (lines of at most
    :data:`WRAP` characters unless a single word is longer, ending with a newline);
    ``lang`` the language it is written in; ``cases`` the cases it covers, in
    :data:`CASES` order; ``fallbacks`` one line per override that could not be used
    (the shipped piece was used instead): for the log, empty when all is well.
    """

    subject: str
    text: str
    lang: str
    cases: tuple[str, ...]
    fallbacks: tuple[str, ...] = ()


# ---------------------------------------------------------------- text helpers

# Where a forwarded message starts: its banner, or an Outlook "De : / From:" block.
_FORWARD_START = re.compile(
    r"^[ \t>]*(?:-{2,}|_{2,}|=+)?[ \t]*(?:forwarded\s+message|message\s+transf[ée]r[ée]"
    r"|mail\s+transf[ée]r[ée]|courriel\s+transf[ée]r[ée]|message\s+transmis|original\s+message"
    r"|message\s+d'origine|begin\s+forwarded\s+message|d[ée]but\s+du\s+message\s+r[ée]exp[ée]di[ée])"
    r"|^[ \t]*\*?(?:de|from)[ \t]*:\*?[ \t]*\S.*\n[ \t]*\*?(?:envoy[ée]|sent|date|[àa]|to|objet"
    r"|subject)[ \t]*:",
    re.IGNORECASE | re.MULTILINE)


def _own(subject: str, text: str) -> str:
    """The sender's own words in ``text`` (bounded: the first :data:`_SCAN_CHARS`)."""
    return own_text((text or "")[:_SCAN_CHARS], forwarded=is_forward_subject(subject))


# ---------------------------------------------------------------- language

# Words that are French and not English, or English and not French, spelt as
# classify.prepare() leaves them (accents folded, lower case).  Ambiguous ones ("a",
# "on", "me", "in", "help") are left out on purpose; greetings and sign-offs that only
# one language's speakers write weigh two.
def _weights(words: str, heavy: str) -> dict[str, int]:
    table = dict.fromkeys(prepare(words).split(), 1)
    table.update(dict.fromkeys(prepare(heavy).split(), 2))
    return table


_FR_WORDS = _weights(
    "le la les des du de un une et est sont pas ne je nous vous il ils elle elles que qui "
    "quoi pour dans sur avec mais plus au aux ce cet cette ces mon ma mes notre nos votre "
    "vos leur leurs son sa ses ça où très été était avons avez ont ai suis sommes êtes "
    "fait peux peut pouvez pourriez pourrais faire bien encore toujours rien quand comment "
    "hier matin soir nuit aujourd'hui demain oui non lorsque alors donc car comme tout tous "
    "toute toutes même déjà chez entre sans sous par après avant depuis vers voici voir ci "
    "jour semaine madame monsieur svp stp bonne journée en se moi lui aussi marche "
    "fonctionne erreur problème souci imprimante ordinateur compte mot passe adresse boîte "
    "réseau fichier fichiers dossier partage connexion connecter envoyer recevoir besoin "
    "aide demande ajouter créer nouveau nouvelle nouvel y puis quelques plusieurs trop peu",
    "bonjour bonsoir salut merci cordialement")
_EN_WORDS = _weights(
    "the and is are to of for not no with it this that these those there what when where "
    "why how which who i you your we our they their he she my his her its have has had be "
    "been was were am do does did done can could would should will get got still also "
    "again now up out from by about into after before since but so just any some all "
    "please thanks thank hello hi cheers best kind yesterday today morning night last week "
    "error problem issue printer computer account password address mailbox network file "
    "files folder shared working works work send receive received need request add create "
    "new anymore keeps stopped if or as at an",
    "dear regards")
_FR_ELISIONS = frozenset({"l", "d", "j", "n", "qu", "c", "m", "s", "t", "jusqu", "lorsqu",
                          "puisqu", "quelqu"})
_EN_CONTRACTIONS = frozenset({"t", "s", "re", "ve", "ll", "m", "d"})
_FR_ACCENTS = "éèêëàâîïôûùüçœ"

# What the sender quotes or pastes is not their language: error messages in quotes
# (Outlook affiche « Cannot connect to the server ») and log lines.  A single quote
# only opens after a non-letter and closes before one, so elisions (l'imprimante) and
# contractions (can't) are never taken for quotes.  Each pattern starts with its
# literal quote character (a fast scan) and stops at the next opening one, so each
# character is looked at a bounded number of times.
_QUOTES = (("«", re.compile(r"«[^«»\n]{0,300}»")), ('"', re.compile(r'"[^"\n]{0,300}"')),
           ("“", re.compile(r"“[^“”\n]{0,300}”")), ("‘", re.compile(r"‘[^‘’\n]{0,300}’")),
           ("'", re.compile(r"'(?<!\w')[^'\n]{6,300}'(?!\w)")))
_LOG_LINE = re.compile(
    r"[ \t>]*(?:\[?\d{1,4}[-/:.]\d{2}"
    r"|(?:error|erreur|warn(?:ing)?|info|debug|fatal|critical|exception|traceback|caused by)"
    r"\b[ \t]*[:\]\-]|at [\w.$]+\(|file \")", re.IGNORECASE)


def _prose(text: str) -> str:
    """``text`` without quoted spans and log lines."""
    for char, pattern in _QUOTES:
        if char in text:
            text = pattern.sub(" ", text)
    return "\n".join(line for line in text.split("\n") if not _LOG_LINE.match(line))


def _language_scores(text: str) -> tuple[int, int]:
    """(French, English) evidence in ``text``."""
    fr = sum(map(text.lower().count, _FR_ACCENTS))
    en = 0
    for word, n in Counter(prepare(text).replace("-", " ").split()).items():
        in_fr, in_en = _FR_WORDS.get(word, 0), _EN_WORDS.get(word, 0)
        if in_fr or in_en:
            fr += n * in_fr
            en += n * in_en
        elif "'" in word:
            head, _, rest = word.partition("'")
            if head in _FR_ELISIONS:                  # l'imprimante, n'arrive, qu'il
                fr += n * (1 + _FR_WORDS.get(rest, 0))
            elif word.rpartition("'")[2] in _EN_CONTRACTIONS:   # can't, it's, John's
                en += n * (1 + _EN_WORDS.get(head, 0))
    return fr, en


def _sender_text(subject: str, text: str) -> str:
    """The sender's own words; of a forward, only what the forwarder wrote above the
    forwarded message when they wrote anything (the banner is found in the raw text:
    :func:`text.own_text` drops it)."""
    text = (text or "")[:_SCAN_CHARS]
    m = _FORWARD_START.search(text)
    if m:
        head = own_text(text[:m.start()])
        if head.strip():
            return head
    return _own(subject, text)


def detect_language(subject: str, text: str) -> str:
    """``"en"`` when the sender wrote in English, else ``"fr"`` (the default).

    ``subject`` is the decoded Subject; ``text`` the body's readable text (quoted
    history, signatures and disclaimers are removed here, see :func:`text.own_text`;
    forwarded content counts only when the forwarder wrote nothing of their own).
    Scores: one point per French or English function word (greetings and sign-offs
    that only one language uses weigh two), per French elision (``l'``, ``n'``...), per
    English contraction (``n't``, ``'s``...) and per French accented letter; quoted
    spans and log lines (pasted error messages) are not counted.  English wins with
    at least :data:`MIN_ENGLISH_EVIDENCE` points and strictly more than French.
    Total; linear in the input, of which the first :data:`_LANG_CHARS` characters of
    the sender's own text are read.
    """
    own = _sender_text(subject, text)[:_LANG_CHARS]
    fr, en = _language_scores(_prose(strip_subject_prefixes(subject or "") + "\n" + own))
    return "en" if en >= MIN_ENGLISH_EVIDENCE and en > fr else DEFAULT_LANGUAGE


# ---------------------------------------------------------------- hints

# Subject words that say nothing about the request (as prepare() spells them).
_VAGUE_WORDS = frozenset(prepare(
    "urgent urgente urgents urgentes urgence urgentissime très very help aide aidez aider "
    "sos secours problème problèmes pb pbs pbm prob souci soucis question questions "
    "bonjour bonsoir salut coucou hello hi demande demandes request requests bug bugs "
    "bogue issue issues problem problems trouble please svp stp plz important importante "
    "importantes info infos information informations support assistance ticket suite "
    "suivi relance rappel reminder followup follow again encore toujours still merci "
    "thanks thank petit petite petits gros grosse quick small big rapide vite asap besoin "
    "need needed needs intervention dépannage technique techniques technical informatique "
    "it tech objet subject sans no none message appel call"
).split())
# Words that carry no meaning of their own.
_FILLER_WORDS = frozenset(prepare(
    "le la les de des du un une et ou au aux en pour par sur avec dans mon ma mes notre "
    "nos votre vos son sa ses ce cet cette ces je il on nous vous me moi y the an and or "
    "of for to with in on at my our your his her its this that is are we us from by about "
    "re fw fwd tr rv aw wg a i"
).split())
_SUBJECT_TOKEN = re.compile(r"[^\s@]*@[^\s@]*|[a-z0-9]+")
_BRACKETED = re.compile(r"\[[^\]\n]{0,60}\]")


def _vague_subject(subject: str) -> bool:
    stripped = _BRACKETED.sub(" ", strip_subject_prefixes(subject or ""))
    meaningful = 0
    for token in _SUBJECT_TOKEN.findall(fold(stripped).lower()):
        if "@" in token:
            meaningful += 1             # an address always says something
        elif len(token) > 1 and token not in _VAGUE_WORDS and token not in _FILLER_WORDS:
            meaningful += 1
        if meaningful >= 2:
            return False
    return True


# A time reference: a word of _WHEN_WORDS, a phrase of _WHEN_PHRASES (looked for only
# when its key word is there), "il y a" + a duration, or digits that make a time, a
# date or a duration.  Words and phrases as prepare() spells them.
_WHEN_WORDS = frozenset(prepare(
    "depuis hier avant-hier aujourd'hui récemment dernièrement parfois souvent "
    "régulièrement pendant since ago yesterday today tonight earlier recently sometimes "
    "often lundi mardi mercredi jeudi vendredi samedi dimanche lundis mardis mercredis "
    "jeudis vendredis monday tuesday wednesday thursday friday saturday sunday mondays "
    "janvier février mars avril mai juin juillet août septembre octobre novembre décembre "
    "january february march april june july august september october november december"
).split())
_WHEN_PHRASES: Mapping[str, tuple[str, ...]] = {
    "matin": ("ce matin", "le matin", "tous les matins"),
    "apres-midi": ("cet apres-midi", "l'apres-midi"),
    "soir": ("ce soir", "le soir", "tous les soirs"),
    "nuit": ("cette nuit", "la nuit"),
    "semaine": ("cette semaine", "la semaine derniere", "la semaine passee"),
    "week-end": ("ce week-end", "le week-end"),
    "weekend": ("ce weekend", "le weekend", "this weekend", "last weekend", "the weekend"),
    "mois": ("le mois dernier", "ce mois"),
    "fois": ("chaque fois", "des fois", "la derniere fois"),
    "jours": ("tous les jours",),
    "l'heure": ("tout a l'heure",),
    "l'instant": ("a l'instant",),
    "coup": ("tout a coup", "tout d'un coup"),
    "temps": ("de temps en temps",),
    "moments": ("par moments",),
    "apres": ("apres la ", "apres le ", "apres l'", "apres les ", "apres une ", "apres un ",
              "apres votre ", "apres notre ", "apres mon ", "apres ma ", "apres avoir "),
    "lors": ("lors de ", "lors d'", "lors du "),
    "morning": ("this morning", "every morning", "in the morning"),
    "afternoon": ("this afternoon", "in the afternoon"),
    "evening": ("this evening", "every evening", "in the evening"),
    "night": ("last night", "at night"),
    "week": ("this week", "last week"),
    "month": ("this month", "last month"),
    "time": ("every time", "each time", "last time", "from time to time"),
    "now": ("just now",),
    "after": ("after the ", "after a ", "after an ", "after my ", "after our ", "after we ",
              "after i "),
    "during": ("during the ", "during a ", "during our ", "during my "),
    "day": ("every day",),
    "y": ("il y a ",),
    "may": ("may ",),
}
_AGO = re.compile(r"\bil y a (?:\d+|un|une|deux|trois|quatre|cinq|six|dix|quelques|plusieurs)"
                  r" (?:minutes?|heures?|h|jours?|semaines?|mois|ans?)\b|\bmay \d")
_UNITS = (r"h|heures?|min|minutes?|jours?|semaines?|mois|ans?|hours?|days?|weeks?|months?"
          r"|years?")
_MONTH_ABBREVIATIONS = (r"janv|f[ée]v|mars|avr|mai|juin|juil|ao[uû]|sept|oct|nov|d[ée]c|jan"
                        r"|feb|mar|apr|may|jun|jul|aug|sep")
# Digits that make a time, a date or a duration (first character a digit: fast scan).
_WHEN_DIGITS = re.compile(
    r"[0-9](?<![\w][0-9])[0-9]{0,3}(?:"
    r"\s?(?:" + _UNITS + r")\b(?:\s?[0-5][0-9]\b)?"       # 10h, 10 h 30, 3 jours, 2 hours
    r"|:[0-5][0-9]\b"                                      # 14:30
    r"|\s?(?:am|pm)\b"                                     # 9am, 3 pm
    r"|/[0-9]{1,2}(?:/[0-9]{2,4})?\b"                      # 12/03, 12/03/2025
    r"|[.-][0-9]{1,2}[.-][0-9]{2,4}\b"                     # 12.03.2025, 2025-03-12
    r"|(?:er|st|nd|rd|th)?\s(?:" + _MONTH_ABBREVIATIONS + r"))",   # 3 mars, 3rd March
    re.IGNORECASE)


def _has_when(raw: str, prepared: str) -> bool:
    words = set(prepared.split())
    if not _WHEN_WORDS.isdisjoint(words):
        return True
    padded = f" {prepared} "
    for key in words.intersection(_WHEN_PHRASES):
        for phrase in _WHEN_PHRASES[key]:
            if f" {phrase}" in padded:
                if key in ("y", "may"):
                    if _AGO.search(prepared):
                        return True
                    break
                return True
    return _WHEN_DIGITS.search(raw) is not None


# Names a tool, an object, an error: the "what" of a request (folded, lower case).
_WHAT = re.compile(
    r"\b(?:nextcloud|owncloud|collabora|onlyoffice|libreoffice|office|dolibarr|wordpress"
    r"|thunderbird|outlook|roundcube|zimbra|webmail|sogo|gmail|excel|word|teams|zoom|jitsi"
    r"|visio|imprim|copieur|photocopi|scan|numeris|ordinateur|pc|portable|laptop|computer"
    r"|windows|mac|linux|ubuntu|telephone|smartphone|iphone|android|tablette|tablet|ecran"
    r"|screen|clavier|keyboard|souris|mouse|poste|vpn|wi-?fi|reseau|internet|routeur|box"
    r"|network|router|connexion|connect|login|log in|identifiant|username|mot de passe"
    r"|password|mdp|compte|account|utilisat|user|site|website|page|formulaire|form"
    r"|certificat|https?|domaine|domain|dns|messagerie|mail|courriel|e-?mail|boite"
    r"|mailbox|inbox|smtp|imap|spam|agenda|calendrier|calendar|synchro|sync|partage|share"
    r"|fichier|file|dossier|folder|drive|document|pdf|piece jointe|attachment|sauvegarde"
    r"|backup|serveur|server|disque|disk|stockage|storage|quota|logiciel|software|appli"
    r"|application|app|navigateur|browser|firefox|chrome|safari|lien|link|url|adresse"
    r"|address|alias|redirection|liste|contact|camera|micro|licence|license|mise a jour"
    r"|update|install|acces|access|droit|permission|2fa|authentific|authentication|code"
    r"|erreur|error)"
    r"|@|://|www\.|\b\d{3,}\b|\w\.(?:pdf|docx?|xlsx?|odt|ods|jpe?g|png|zip|csv)\b"
    r"|[«\"“][^«»\"“”\n]{6,}[»\"”]")


def _prepared(subject: str, text: str) -> str:
    """``prepare(subject + "\\n" + own)``, ``own`` the first :data:`_HINT_CHARS`
    characters of the sender's own text, from the classifier's prepared own text
    (:func:`classify.prepared_body`, remembered: not prepared twice).  ``prepare`` maps
    each character on its own and a line break to a space, so the prepared whole is
    the prepared parts joined by a space."""
    return " ".join(filter(None, (prepare(subject or ""),
                                  prepared_body(text or "", is_forward_subject(subject)))))


def hints(subject: str, text: str) -> tuple[str, ...]:
    """What the request lacks, as stable names in :data:`HINTS` order.

    ``vague-subject``: the subject, without reply/forward prefixes and bracketed tags
    (a ticket tag included), has fewer than two words that say something; an address
    counts as one.  ``no-when``: no time reference in the subject or the sender's own
    text (dates, times, durations, weekdays, months, "depuis", "hier", "ce matin",
    "il y a deux jours", "since", "ago", "yesterday", frequencies such as "à chaque
    fois").  ``no-what``: the own text is shorter than :data:`WHAT_WORDS_ENOUGH` words
    and neither it nor the subject names a tool, an object, an error, an address, a
    URL, a file, a code of three digits or more, or quotes a message.  Total; linear
    in the input, of which the first :data:`_HINT_CHARS` characters of the sender's own
    text are read.
    """
    own = _own(subject, text)[:_HINT_CHARS]
    raw = (subject or "") + "\n" + own
    found = []
    if _vague_subject(subject):
        found.append("vague-subject")
    if not _has_when(raw, _prepared(subject, text)):
        found.append("no-when")
    # (at most WHAT_WORDS_ENOUGH + 1 pieces: whether there are fewer words than that
    # needs no list of all of a long text's words)
    if len(own.split(maxsplit=WHAT_WORDS_ENOUGH)) < WHAT_WORDS_ENOUGH \
            and not _WHAT.search(fold(raw[:_WHAT_CHARS]).lower()):
        found.append("no-what")
    return tuple(found)


# ---------------------------------------------------------------- templates

@cache
def _shipped(lang: str, piece: str) -> str:
    """A shipped piece (the package is immutable: read once)."""
    path = resources.files("helpdesk_milter").joinpath("templates", lang, f"{piece}.txt")
    text = path.read_text(encoding="utf-8")
    problem = _piece_problem(piece, text)
    if problem:  # a broken package, not an admin's mistake: fail loudly
        raise TemplateError([f"shipped {lang}/{piece}.txt: {problem}"])
    return text


def _piece_problem(piece: str, text: str) -> str | None:
    """Why ``text`` cannot serve as ``piece``, or None."""
    if len(text) > TEMPLATE_MAX:
        return f"longer than {TEMPLATE_MAX} characters"
    template = Template(text)
    if not template.is_valid():
        return ("invalid placeholder (write $name or ${name}; a literal dollar sign "
                "is $$)")
    used = set(template.get_identifiers())
    unknown = used - ALLOWED_PLACEHOLDERS[piece]
    if unknown:
        allowed = ", ".join(f"${n}" for n in sorted(ALLOWED_PLACEHOLDERS[piece])) or "none"
        return (f"unknown placeholder(s) {', '.join('$' + n for n in sorted(unknown))} "
                f"(allowed here: {allowed})")
    missing = REQUIRED_PLACEHOLDERS.get(piece, frozenset()) - used
    if missing:
        return f"must use {', '.join('$' + n for n in sorted(missing))}"
    if piece in _SINGLE_LINE and (len(text.strip().splitlines()) > 1 or not text.strip()):
        return "must be exactly one non-empty line"
    return None


def _read_override(path: Path) -> tuple[str | None, str | None]:
    """(text, problem): the override's text, or why it could not be read."""
    try:
        size = path.stat().st_size
        if size > 4 * TEMPLATE_MAX:
            return None, f"longer than {TEMPLATE_MAX} characters"
        return path.read_bytes().decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 (byte {exc.start})"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"


def _load_piece(lang: str, piece: str, templates_dir: Path | None,
                fallbacks: list[str]) -> str:
    """The override of ``piece`` when there is a usable one, else the shipped piece."""
    if templates_dir is not None:
        path = templates_dir / lang / f"{piece}.txt"
        if path.exists():
            text, problem = _read_override(path)
            if text is not None:
                problem = _piece_problem(piece, text)
                if problem is None:
                    return text
            fallbacks.append(f"{path}: {problem}; using the shipped {lang}/{piece}.txt")
    return _shipped(lang, piece)


def check_templates(templates_dir: str | Path | None) -> tuple[str, ...]:
    """Validate the overrides in ``templates_dir``; return the pieces they replace.

    Raises :class:`TemplateError` listing every problem: the directory missing or not
    a directory, an unknown language directory or piece file (a typo would otherwise
    be silently ignored), a file at the top level, and each override that
    :func:`compose` would refuse (unreadable, not UTF-8, invalid or unknown
    placeholder, missing required placeholder, multi-line subject).  Returns the
    overridden pieces as ``"lang/piece"``, sorted.  With ``None``, checks the shipped
    templates only.  Hidden files (``.name``) are ignored.
    """
    for lang in LANGUAGES:
        for piece in PIECES:
            _shipped(lang, piece)
    if templates_dir is None:
        return ()
    root = Path(templates_dir)
    if not root.is_dir():
        raise TemplateError([f"{root}: not a directory"])
    problems: list[str] = []
    overridden: list[str] = []
    known = ", ".join(f"{p}.txt" for p in PIECES)
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            problems.append(f"{entry}: templates go in a language directory "
                            f"({', '.join(lang + '/' for lang in LANGUAGES)})")
        elif entry.name not in LANGUAGES:
            problems.append(f"{entry}: unknown language (known: {', '.join(LANGUAGES)})")
        else:
            for file in sorted(entry.iterdir()):
                if file.name.startswith("."):
                    continue
                piece = file.name.removesuffix(".txt")
                if not file.name.endswith(".txt") or piece not in PIECES:
                    problems.append(f"{file}: unknown piece (known: {known})")
                    continue
                text, problem = _read_override(file)
                if text is not None:
                    problem = _piece_problem(piece, text)
                if problem:
                    problems.append(f"{file}: {problem}")
                else:
                    overridden.append(f"{entry.name}/{piece}")
    if problems:
        raise TemplateError(problems)
    return tuple(overridden)


# ---------------------------------------------------------------- compose

_FR_NBSP_BEFORE = re.compile(r" (?=[:;!?»])")
_FR_NBSP_AFTER = re.compile(r"(?<=«) ")
_BULLET = re.compile(r"^(\s*(?:[-*•]|\d+[.)])\s+)")


def _typeset(text: str, lang: str) -> str:
    """Wrap each line at :data:`WRAP` columns; French no-break spaces."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.rstrip()
        if lang == "fr":
            line = _FR_NBSP_AFTER.sub("\u00a0", _FR_NBSP_BEFORE.sub("\u00a0", line))
        if len(line) <= WRAP:
            out.append(line)
            continue
        bullet = _BULLET.match(line)
        indent = " " * len(bullet.group(1)) if bullet else ""
        out.extend(textwrap.wrap(line, width=WRAP, subsequent_indent=indent,
                                 break_long_words=False, break_on_hyphens=False))
    return "\n".join(out).strip("\n")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def compose(*, cases: Sequence[str], lang: str, assistance: str, original_subject: str,
            hints: Sequence[str] = (), paste_url: str, ticket: str | None = None,
            templates_dir: str | Path | None = None) -> Guidance:
    """The guidance mail for ``cases``, in ``lang``.

    ``cases``: a non-empty subset of :data:`CASES` (order and repeats do not matter).
    ``"rerouted"``: a new request went to a watched address -- the mail says where it
    went (``assistance``, the exact address) and where to write next time.
    ``"followup"``: a complement to ticket ``ticket`` went to a watched address -- the
    mail says to reply to the ticket mail keeping ``ticket`` in the subject (pass the
    reference as it appears in subjects, e.g. ``"[example #1234]"``; None when
    unknown); it takes the place of the "rerouted" paragraph when both are given.
    ``"secret"``: a secret was removed -- the mail says so, asks to change it now and
    points to ``paste_url``, which appears in no other paragraph.  When ``hints``
    holds any of :data:`TIP_HINTS`, one tip paragraph (a good subject, the
    who/what/where/when/how/how-much checklist); other hint names are ignored.

    ``original_subject`` must already be redacted (this function never sees a secret
    and quotes it as given, whitespace collapsed, cut at :data:`SUBJECT_KEEP`
    characters).  ``templates_dir``: overrides, see the module docstring; broken ones
    are replaced by the shipped piece and reported in :attr:`Guidance.fallbacks`.

    Raises ValueError for an unknown language or case, no case, an empty
    ``assistance``, or ``"secret"`` without ``paste_url``.
    """
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r} (known: {', '.join(LANGUAGES)})")
    wanted = set(cases)
    unknown = wanted - set(CASES)
    if unknown:
        raise ValueError(f"unknown case(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(CASES)})")
    if not wanted:
        raise ValueError("no case: a guidance mail needs at least one of "
                         + ", ".join(CASES))
    if not assistance.strip():
        raise ValueError("empty assistance address")
    if "secret" in wanted and not paste_url.strip():
        raise ValueError("case 'secret' needs paste_url")
    root = Path(templates_dir) if templates_dir is not None else None
    fallbacks: list[str] = []

    def piece(name: str) -> str:
        return _load_piece(lang, name, root, fallbacks)

    subject = _one_line(original_subject or "")
    if len(subject) > SUBJECT_KEEP:
        subject = subject[:SUBJECT_KEEP - 1].rstrip() + "…"
    values = {
        "assistance": assistance.strip(),
        "paste_url": paste_url.strip(),
        "ticket": _one_line(ticket or ""),
        "original_subject": subject or _one_line(piece("no-subject")),
    }
    names = ["greeting"]
    if "followup" in wanted:
        names.append("followup" if values["ticket"] else "followup-noticket")
    elif "rerouted" in wanted:
        names.append("rerouted")
    if "secret" in wanted:
        names.append("secret")
    if TIP_HINTS.intersection(hints):
        names.append("tips")
    names.append("signature")
    paragraphs = [_typeset(Template(piece(name)).substitute(values), lang) for name in names]
    text = "\n\n".join(p for p in paragraphs if p) + "\n"
    return Guidance(
        subject=_one_line(Template(piece("subject")).substitute(values)),
        text=text, lang=lang, cases=tuple(c for c in CASES if c in wanted),
        fallbacks=tuple(fallbacks))


# ---------------------------------------------------------------- the message

_MSG_ID = re.compile(r"<[^<>\s]+>")


def _message_ids(value: str | None) -> list[str]:
    """The ``<id>`` tokens of a Message-ID/References value; a bare ``id@host`` is
    accepted and bracketed; anything else (comments, folding, junk) is dropped."""
    if not value:
        return []
    found = _MSG_ID.findall(value)
    if not found:
        bare = value.strip()
        if "@" in bare and not any(c.isspace() or c in "<>" for c in bare):
            found = [f"<{bare}>"]
    return found


def build_message(g: Guidance, *, sender: str, to: str, in_reply_to: str | None,
                  references: str | None, message_id_domain: str,
                  date: datetime | Callable[[], datetime] | None = None,
                  message_id: str | None = None,
                  precedence: str | None = "bulk") -> EmailMessage:
    """The guidance mail as an RFC 3834 automatic response (``email.policy.default``).

    ``sender``: From (the ``autoreply.from`` address, optionally with a display name);
    ``to``: the original sender; ``in_reply_to``: the original's Message-ID;
    ``references``: the original's References header, or None.  Serialise with
    ``msg.as_bytes(policy=email.policy.SMTP)`` or ``smtplib.send_message``; RFC 3834
    section 3.3 wants the envelope sender of a response to be null (``MAIL FROM:<>``).

    Headers, and why:

    - ``Auto-Submitted: auto-replied`` -- RFC 3834 section 5: responders, list managers
      and our own milter never answer it, which breaks loops.
    - ``In-Reply-To`` and ``References`` -- RFC 3834 3.1.3/3.1.4 and RFC 5322 3.6.4:
      the parent's References (first one and last ones when very long) followed by its
      Message-ID, so the mail threads under the client's message.  Omitted when the
      original had no usable Message-ID.
    - ``X-Auto-Response-Suppress: All`` -- Microsoft's header ([MS-OXCMAIL] 2.1.3.2.20):
      Exchange and Outlook send no out-of-office, auto-reply or read receipt to it;
      the report kinds it also suppresses (DR, NDR) are moot with a null envelope
      sender.  Receivers that do not know it ignore it.
    - ``Precedence: bulk`` (``precedence=None`` omits it) -- RFC 3834 3.1.8 allows it;
      it is the only signal older vacation programs (vacation(1), procmail, mailbot)
      honour, and helpdesks (RT, Zammad) send it on their auto-replies.  It is not a
      standard field (RFC 2076), and some filters file bulk mail apart: pass None if
      that matters more than legacy responders.
    - ``Content-Language`` (RFC 3282), ``Date``, ``Message-ID`` (``date`` and
      ``message_id`` inject the clock and the id for tests; ``date`` may be a datetime
      or a callable returning one), text/plain UTF-8 in quoted-printable.

    Raises ValueError if a header value contains a line break (header injection).
    """
    msg = EmailMessage(policy=email_policy.default)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = g.subject
    when = date() if callable(date) else date
    msg["Date"] = format_datetime(when or datetime.now(UTC))
    msg["Message-ID"] = message_id or make_msgid(domain=message_id_domain)
    parent = _message_ids(in_reply_to)[:1]
    if parent:
        chain = [i for i in _message_ids(references) if i != parent[0]]
        if len(chain) > _REFERENCES_KEEP:
            chain = chain[:1] + chain[-(_REFERENCES_KEEP - 1):]
        msg["In-Reply-To"] = parent[0]
        msg["References"] = " ".join([*chain, parent[0]])
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    if precedence:
        msg["Precedence"] = precedence
    msg.set_content(g.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg["Content-Language"] = g.lang    # after set_content, which clears Content-* fields
    return msg
