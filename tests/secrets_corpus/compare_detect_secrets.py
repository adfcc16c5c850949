#!/usr/bin/env python3
"""Compare helpdesk-milter's secret detection with Yelp's detect-secrets on our corpus.

detect-secrets is NOT a dependency of the project or of ``make test``; install it in a
throw-away virtualenv and point this script at that interpreter::

    python3 -m venv /tmp/ds-venv && /tmp/ds-venv/bin/pip install detect-secrets
    .venv/bin/python tests/secrets_corpus/compare_detect_secrets.py [--ds-python PATH]

What it reports, for both tools on the same inputs:

- recall on the labelled secrets of ``snippets.toml`` and of the whole messages in
  ``messages/`` (for detect-secrets, the decoded Subject and text parts are written to a
  ``.txt`` file and scanned with its default plugins and filters, as
  ``detect-secrets scan`` would; a detection counts when its value overlaps the labelled
  value);
- false findings: detections that overlap no labelled secret, and how many of them hit a
  look-alike listed under ``keep``;
- cost per 10 KB message (median, p99): one 10 KB multipart/alternative message (French
  support prose, text and HTML) per snippet, and as many without any secret.  Ours is
  :func:`helpdesk_milter.redact.redact_message` on the raw message (MIME walk, decoding,
  scan and redaction); detect-secrets is ``scan_file`` on the decoded text, timed inside
  its own process (scan only: it neither parses MIME nor redacts).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
import tomllib
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from pathlib import Path

from helpdesk_milter.redact import redact_message
from helpdesk_milter.secrets import SecretScanner

HERE = Path(__file__).parent

DS_HELPER = r"""
import json, os, sys, tempfile, time
from detect_secrets.core import scan
from detect_secrets.settings import default_settings
texts = json.load(sys.stdin)
out = []
with default_settings(), tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "message.txt")
    for text in texts:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        start = time.perf_counter()
        found = [[s.type, s.secret_value or "", s.line_number] for s in scan.scan_file(path)]
        out.append({"seconds": time.perf_counter() - start, "found": found})
json.dump(out, sys.stdout)
"""

FILLER = (
    "Bonjour, depuis la mise à jour de ce matin le serveur Nextcloud de la mairie ne répond "
    "plus et les agents du service état civil ne peuvent plus accéder aux documents "
    "partagés. Nous avons redémarré les postes et vidé le cache du navigateur sans succès. "
    "Le message affiché est « erreur interne du serveur », ticket 48213, version 28.0.4. "
    "Pourriez-vous regarder rapidement ? Nous avons une réunion du conseil municipal "
    "jeudi à 18 h et les convocations doivent partir demain. Merci d'avance, cordialement. "
)


def load(name: str, key: str) -> list[dict]:
    with open(HERE / name, "rb") as fh:
        return tomllib.load(fh)[key]


def decoded_text(raw: bytes) -> str:
    """Subject and decoded text parts: what detect-secrets gets to scan.

    In a delivery report the returned original is left out, as the milter leaves it.
    """
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    out = [str(msg.get("Subject", ""))]
    bounce = msg.get_content_type() == "multipart/report"

    def visit(part: Message) -> None:
        ctype = part.get_content_type()
        if bounce and ctype in ("message/rfc822", "text/rfc822-headers",
                                "message/delivery-status"):
            return
        if part.is_multipart():
            for child in part.get_payload():
                visit(child)
            return
        if part.get_content_maintype() == "text" or ctype == "application/json":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    out.append(payload.decode(charset, "replace"))
                except LookupError:
                    out.append(payload.decode("utf-8", "replace"))

    visit(msg)
    return "\n".join(out)


def ten_kb(snippet: str | None) -> bytes:
    text = FILLER * 12
    text = text[:5000] + "\n\n" + (snippet or "Merci pour votre aide.") + "\n\nJérôme\n"
    html = "<html><body>" + "".join(f"<p>{FILLER}</p>" for _ in range(5)) + \
        "<p>" + (snippet or "").replace("\n", "<br>\n") + "</p></body></html>"
    msg = EmailMessage()
    msg["From"] = "Jérôme Martin <secretariat@mairie-exemple.fr>"
    msg["To"] = "alice@example.org"
    msg["Subject"] = "Problème d'accès au serveur"
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg.as_bytes(policy=policy.default).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def run_detect_secrets(python: str, texts: list[str]) -> list[dict]:
    proc = subprocess.run([python, "-c", DS_HELPER], input=json.dumps(texts), text=True,
                          capture_output=True, check=True)
    return json.loads(proc.stdout)


def overlaps(found: str, value: str) -> bool:
    found = found.strip().strip("'\"")
    return bool(found) and len(found) >= 3 and (found in value or value in found)


def score_ds(results: list[dict], items: list[tuple[list[str], list[str]]]) -> dict[str, int]:
    """items: (secret values, keep strings) per text, aligned with results."""
    tally = {"secrets": 0, "found": 0, "false": 0, "lookalike": 0}
    for result, (secrets, keeps) in zip(results, items, strict=True):
        tally["secrets"] += len(secrets)
        tally["found"] += sum(1 for v in secrets if any(overlaps(f[1], v)
                                                        for f in result["found"]))
        false = {(f[2], f[1]) for f in result["found"]
                 if not any(overlaps(f[1], v) for v in secrets)}
        tally["false"] += len(false)
        tally["lookalike"] += sum(1 for _, value in false
                                  if any(value and value in k for k in keeps))
    return tally


def score_ours_snippets(scanner: SecretScanner, snippets: list[dict]) -> dict[str, int]:
    tally = {"secrets": 0, "found": 0, "false": 0, "lookalike": 0}
    for s in snippets:
        text = s["text"]
        findings = scanner.scan(text)
        spans = []
        for secret in s["secrets"]:
            start = text.index(secret["value"])
            spans.append((start, start + len(secret["value"])))
        tally["secrets"] += len(spans)
        tally["found"] += sum(1 for a, b in spans
                              if any(f.start < b and f.end > a for f in findings))
        for f in findings:
            if not any(f.start < b and f.end > a for a, b in spans):
                tally["false"] += 1
                if any(text[f.start:f.end] in k for k in s.get("keep", [])):
                    tally["lookalike"] += 1
    return tally


def score_ours_messages(scanner: SecretScanner, messages: list[dict]) -> dict[str, int]:
    tally = {"secrets": 0, "found": 0, "false": 0, "lookalike": 0}
    for m in messages:
        raw = (HERE / "messages" / m["file"]).read_bytes()
        r = redact_message(raw, scanner, is_bounce=m.get("bounce", False))
        end = raw.index(b"\r\n\r\n") + 4
        head, body = raw[:end], (r.body if r.body is not None else raw[end:])
        if r.subject is not None:      # what the milter's chgheader does
            field = b"Subject: " + r.subject.encode() + b"\r\n"
            head = re.sub(rb"(?mi)^Subject:.*(?:\r\n[ \t].*)*\r\n",
                          lambda _, field=field: field, head, count=1)
        out = head + body
        text = decoded_text(out)
        tally["secrets"] += len(m["secrets"])
        tally["found"] += sum(1 for s in m["secrets"] if s["value"] not in text)
        tally["false"] += max(0, r.count - m["count"])
        tally["lookalike"] += sum(1 for k in m["keep"] if k not in text and k.encode() not in out)
    return tally


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1e3, p99 * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds-python", default="/tmp/ds-venv/bin/python",
                        help="interpreter of the virtualenv where detect-secrets is installed")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timing runs per message for our scanner (the best is kept)")
    args = parser.parse_args()

    scanner = SecretScanner()
    snippets = load("snippets.toml", "snippet")
    messages = load("messages/manifest.toml", "message")

    ours_snip = score_ours_snippets(scanner, snippets)
    ours_msg = score_ours_messages(scanner, messages)

    snippet_texts = [s["text"] for s in snippets]
    message_texts = [decoded_text((HERE / "messages" / m["file"]).read_bytes())
                     for m in messages]
    ds_snip = score_ds(run_detect_secrets(args.ds_python, snippet_texts),
                       [([x["value"] for x in s["secrets"]], s.get("keep", []))
                        for s in snippets])
    ds_msg = score_ds(run_detect_secrets(args.ds_python, message_texts),
                      [([x["value"] for x in m["secrets"]], m["keep"]) for m in messages])

    bench = [ten_kb(s["text"]) for s in snippets] + [ten_kb(None) for _ in snippets]
    sizes = [len(b) for b in bench]
    ours_cost: list[float] = []
    ours_clean: list[float] = []
    for i, raw in enumerate(bench):
        best = min(_timed(lambda raw=raw: redact_message(raw, scanner))
                   for _ in range(args.repeat))
        ours_cost.append(best)
        if i >= len(snippets):
            ours_clean.append(best)
    ds_results = run_detect_secrets(args.ds_python, [decoded_text(b) for b in bench])
    ds_cost = [r["seconds"] for r in ds_results]
    ds_clean = ds_cost[len(snippets):]

    def line(name: str, t: dict[str, int]) -> str:
        recall = t["found"] / t["secrets"] if t["secrets"] else 1.0
        return (f"  {name:<26} {t['found']:>4}/{t['secrets']:<4} recall {recall:5.2f}   "
                f"false findings {t['false']:>4} (on look-alikes {t['lookalike']})")

    both_ours = {k: ours_snip[k] + ours_msg[k] for k in ours_snip}
    both_ds = {k: ds_snip[k] + ds_msg[k] for k in ds_snip}
    print(f"corpus: {len(snippets)} snippets, {len(messages)} messages\n")
    print("helpdesk-milter")
    print(line("snippets", ours_snip))
    print(line("messages", ours_msg))
    print(line("all", both_ours))
    print("detect-secrets (default plugins and filters)")
    print(line("snippets", ds_snip))
    print(line("messages", ds_msg))
    print(line("all", both_ds))
    print(f"\ncost per message ({min(sizes) // 1000}-{max(sizes) // 1000} KB, "
          f"{len(bench)} messages, half without secrets), milliseconds:")
    for name, values in (("helpdesk-milter, all", ours_cost),
                         ("helpdesk-milter, clean", ours_clean),
                         ("detect-secrets, all", ds_cost),
                         ("detect-secrets, clean", ds_clean)):
        median, p99 = percentiles(values)
        print(f"  {name:<24} median {median:7.3f}   p99 {p99:7.3f}")
    return 0


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
