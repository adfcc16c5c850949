#!/usr/bin/env python3
"""Check the secrets-tune-z test set: TOML loads, ids unique, fields valid,
every secret value occurs exactly once and every keep string occurs (outside any
secret) in its text; every .eml parses and its labelled strings occur in the
decoded text of some part or a Subject. Prints counts."""
import email
import email.header
import email.policy
import os
import sys
import tomllib
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = {"password", "private-key", "api-token", "url-credentials", "connection-string"}
errors = []


def err(msg):
    errors.append(msg)


def spans(text, s):
    out, i = [], text.find(s)
    while i >= 0:
        out.append((i, i + len(s)))
        i = text.find(s, i + 1)
    return out


def check_labels(where, texts, secrets, keep, exactly_once):
    """texts: list of decoded strings. Return nothing; record errors."""
    secret_spans = []
    for s in secrets:
        if set(s) - {"kind", "value"}:
            err(f"{where}: unexpected secret fields {sorted(s)}")
        if s.get("kind") not in KINDS:
            err(f"{where}: bad kind {s.get('kind')!r}")
        v = s.get("value", "")
        if not v:
            err(f"{where}: empty secret value")
            continue
        counts = [len(spans(t, v)) for t in texts]
        total = sum(counts)
        if total == 0:
            err(f"{where}: secret not found: {v[:60]!r}")
        elif exactly_once and total != 1:
            err(f"{where}: secret occurs {total} times: {v[:60]!r}")
        for ti, t in enumerate(texts):
            secret_spans += [(ti, a, b) for a, b in spans(t, v)]
    vals = [s.get("value") for s in secrets]
    if len(vals) != len(set(vals)):
        err(f"{where}: duplicate secret values")
    for k in keep:
        if not k:
            err(f"{where}: empty keep string")
            continue
        found = False
        for ti, t in enumerate(texts):
            for a, b in spans(t, k):
                found = True
                for tj, sa, sb in secret_spans:
                    if tj == ti and a < sb and sa < b:
                        err(f"{where}: keep {k[:40]!r} overlaps a secret")
        if not found:
            err(f"{where}: keep not found: {k[:60]!r}")
    for v in vals:
        for k in keep:
            if v and k and (v in k or k in v):
                err(f"{where}: keep {k[:30]!r} and secret {v[:30]!r} contain each other")


# ---------- snippets ----------
with open(os.path.join(HERE, "snippets.toml"), "rb") as f:
    snip = tomllib.load(f)["snippet"]
ids = Counter(s["id"] for s in snip)
for i, n in ids.items():
    if n > 1:
        err(f"duplicate id {i}")
sn_lang = Counter()
sn_sec = Counter()
sn_keep = Counter()
for s in snip:
    w = f"snippet {s.get('id')}"
    if set(s) - {"id", "lang", "where", "text", "secrets", "keep", "note"}:
        err(f"{w}: unexpected fields")
    if s.get("lang") not in ("fr", "en"):
        err(f"{w}: bad lang")
    if s.get("where") not in ("body", "subject"):
        err(f"{w}: bad where")
    text = s.get("text", "")
    if s.get("where") == "subject" and ("\n" in text or "\r" in text):
        err(f"{w}: subject must be one line")
    secrets = s.get("secrets", [])
    keep = s.get("keep", [])
    if not secrets and not keep:
        err(f"{w}: no secret and no keep")
    check_labels(w, [text], secrets, keep, exactly_once=True)
    sn_lang[s["lang"]] += 1
    sn_sec[s["lang"]] += len(secrets)
    sn_keep[s["lang"]] += len(keep)


# ---------- messages ----------
def decoded_texts(msg):
    out = []
    for part in msg.walk():
        subj = part.get("Subject")
        if subj is not None:
            out.append(str(email.header.make_header(email.header.decode_header(str(subj)))))
        if part.is_multipart() or part.get_content_maintype() == "message":
            continue
        payload = part.get_payload(decode=True)
        if payload is None:
            continue
        if part.get_content_maintype() == "image":
            continue
        cs = part.get_content_charset() or "utf-8"
        try:
            out.append(payload.decode(cs))
        except (LookupError, UnicodeDecodeError):
            out.append(payload.decode("utf-8", "replace"))
    return out


mdir = os.path.join(HERE, "messages")
with open(os.path.join(mdir, "manifest.toml"), "rb") as f:
    man = tomllib.load(f).get("message", [])
files = sorted(x for x in os.listdir(mdir) if x.endswith(".eml"))
listed = [m["file"] for m in man]
if sorted(listed) != files or len(set(listed)) != len(listed):
    err(f"manifest/files mismatch: {sorted(set(files) ^ set(listed))}")
if listed != sorted(listed):
    err("manifest not in file order")
ms_lang = Counter()
ms_sec = Counter()
ms_keep = Counter()
for m in man:
    w = f"message {m['file']}"
    if set(m) - {"file", "lang", "secrets", "keep", "note"}:
        err(f"{w}: unexpected fields")
    lang = m.get("lang", "fr")
    if lang not in ("fr", "en"):
        err(f"{w}: bad lang")
    p = os.path.join(mdir, m["file"])
    if not os.path.exists(p):
        continue
    with open(p, "rb") as f:
        raw = f.read()
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        for h in ("From", "To", "Date", "Message-ID", "Subject", "MIME-Version"):
            if msg.get(h) is None:
                err(f"{w}: missing header {h}")
        defects = [d for part in msg.walk() for d in part.defects]
        if defects:
            err(f"{w}: parse defects {defects}")
        texts = decoded_texts(msg)
    except Exception as e:  # noqa: BLE001
        err(f"{w}: does not parse: {e}")
        continue
    secrets = m.get("secrets", [])
    keep = m.get("keep", [])
    if not secrets and not keep:
        err(f"{w}: no secret and no keep")
    check_labels(w, texts, secrets, keep, exactly_once=False)
    # exactly once per decoded part
    for s in secrets:
        for t in texts:
            if t.count(s["value"]) > 1:
                err(f"{w}: secret occurs more than once in one part: {s['value'][:40]!r}")
    ms_lang[lang] += 1
    ms_sec[lang] += len(secrets)
    ms_keep[lang] += len(keep)

if errors:
    print("\n".join(errors))
    print(f"\n{len(errors)} error(s)")
    sys.exit(1)

print(f"snippets: {sum(sn_lang.values())} (fr {sn_lang['fr']}, en {sn_lang['en']}), "
      f"subject {sum(1 for s in snip if s['where'] == 'subject')}, "
      f"without secret {sum(1 for s in snip if not s['secrets'])}")
print(f"  secrets {sum(sn_sec.values())} (fr {sn_sec['fr']}, en {sn_sec['en']}), "
      f"decoys {sum(sn_keep.values())} (fr {sn_keep['fr']}, en {sn_keep['en']})")
print(f"messages: {sum(ms_lang.values())} (fr {ms_lang['fr']}, en {ms_lang['en']})")
print(f"  secrets {sum(ms_sec.values())} (fr {ms_sec['fr']}, en {ms_sec['en']}), "
      f"decoys {sum(ms_keep.values())} (fr {ms_keep['fr']}, en {ms_keep['en']})")
kinds = Counter(x["kind"] for s in snip for x in s["secrets"]) + \
    Counter(x["kind"] for m in man for x in m.get("secrets", []))
print("kinds:", dict(sorted(kinds.items())))
print(f"TOTAL secrets {sum(sn_sec.values()) + sum(ms_sec.values())}, "
      f"decoys {sum(sn_keep.values()) + sum(ms_keep.values())}")
print("OK")
