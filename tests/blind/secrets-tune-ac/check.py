#!/usr/bin/env python3
"""Verify snippets.toml and messages/ of this test set; print counts."""
import email
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
    while i != -1:
        out.append((i, i + len(s)))
        i = text.find(s, i + 1)
    return out


def check_item(name, texts, secrets, keep, per_part=False):
    """texts: list of strings. Snippets: a secret occurs exactly once. Messages (per_part):
    a secret occurs at most once in each decoded part and in at least one part (an
    alternative HTML part may repeat it)."""
    secret_spans = []
    for sec in secrets:
        if sec.get("kind") not in KINDS:
            err(f"{name}: bad kind {sec.get('kind')!r}")
        v = sec.get("value", "")
        if not v:
            err(f"{name}: empty secret value")
            continue
        total = 0
        for ti, t in enumerate(texts):
            sp = spans(t, v)
            total += len(sp)
            secret_spans += [(ti, a, b) for a, b in sp]
        if per_part:
            if total < 1 or any(len(spans(t, v)) > 1 for t in texts):
                err(f"{name}: secret {v[:40]!r} occurs {total} times (or twice in one part)")
        elif total != 1:
            err(f"{name}: secret {v[:40]!r} occurs {total} times")
    for k in keep:
        if not k:
            err(f"{name}: empty keep")
            continue
        found = False
        for ti, t in enumerate(texts):
            for a, b in spans(t, k):
                found = True
                for (sti, sa, sb) in secret_spans:
                    if sti == ti and a < sb and sa < b:
                        err(f"{name}: keep {k[:40]!r} overlaps a secret")
        if not found:
            err(f"{name}: keep {k[:40]!r} not found")
        for sec in secrets:
            if k in sec.get("value", "") or sec.get("value", "") in k:
                err(f"{name}: keep {k[:40]!r} contains or is inside a secret")


# ---- snippets
with open(os.path.join(HERE, "snippets.toml"), "rb") as f:
    snip = tomllib.load(f)["snippet"]
ids = Counter(s["id"] for s in snip)
for i, n in ids.items():
    if n > 1:
        err(f"duplicate snippet id {i}")
s_lang = Counter()
n_sec = n_keep = 0
sec_lang, keep_lang = Counter(), Counter()
kinds = Counter()
for s in snip:
    name = "snippet " + s["id"]
    if s.get("lang") not in ("fr", "en"):
        err(f"{name}: bad lang")
    if s.get("where") not in ("body", "subject"):
        err(f"{name}: bad where")
    if s.get("where") == "subject" and "\n" in s["text"].strip("\n"):
        err(f"{name}: subject on several lines")
    secrets, keep = s.get("secrets", []), s.get("keep", [])
    if not secrets and not keep:
        err(f"{name}: no secret and no keep")
    check_item(name, [s["text"]], secrets, keep)
    s_lang[s["lang"]] += 1
    n_sec += len(secrets)
    n_keep += len(keep)
    sec_lang[s["lang"]] += len(secrets)
    keep_lang[s["lang"]] += len(keep)
    kinds.update(x["kind"] for x in secrets)


# ---- messages
def decoded_texts(msg):
    out = []
    for part in msg.walk():
        subj = part.get("Subject")
        if subj is not None:
            out.append(str(subj))
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype.startswith("text/"):
            try:
                out.append(part.get_content())
            except Exception:
                payload = part.get_payload(decode=True) or b""
                out.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
        else:
            payload = part.get_payload(decode=True) or b""
            try:
                t = payload.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if "\x00" not in t:
                out.append(t)  # a text file sent as application/octet-stream
    return out


mdir = os.path.join(HERE, "messages")
with open(os.path.join(mdir, "manifest.toml"), "rb") as f:
    man = tomllib.load(f).get("message", [])
files = sorted(f for f in os.listdir(mdir) if f.endswith(".eml"))
listed = [m["file"] for m in man]
if sorted(listed) != files or len(set(listed)) != len(listed):
    err(f"manifest/files mismatch: {set(listed) ^ set(files)}")
m_lang = Counter()
m_sec = m_keep = 0
for m in man:
    name = "message " + m["file"]
    path = os.path.join(mdir, m["file"])
    if not os.path.exists(path):
        continue
    with open(path, "rb") as f:
        raw = f.read()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    if msg.defects:
        err(f"{name}: defects {msg.defects}")
    for part in msg.walk():
        if part.defects:
            err(f"{name}: part defects {part.defects}")
    for h in ("From", "To", "Date", "Message-ID", "Subject"):
        if msg.get(h) is None:
            err(f"{name}: missing {h}")
    texts = decoded_texts(msg)
    check_item(name, texts, m.get("secrets", []), m.get("keep", []), per_part=True)
    lang = m.get("lang", "fr")
    if lang not in ("fr", "en"):
        err(f"{name}: bad lang")
    m_lang[lang] += 1
    m_sec += len(m.get("secrets", []))
    m_keep += len(m.get("keep", []))
    sec_lang[lang] += len(m.get("secrets", []))
    keep_lang[lang] += len(m.get("keep", []))
    kinds.update(x["kind"] for x in m.get("secrets", []))

for e in errors:
    print("ERROR", e)
print(f"snippets: {len(snip)} ({dict(s_lang)}), secrets {n_sec}, decoys {n_keep}")
print(f"messages: {len(man)} ({dict(m_lang)}), secrets {m_sec}, decoys {m_keep}")
print(f"total secrets {n_sec + m_sec} by lang {dict(sec_lang)}; total decoys {n_keep + m_keep} by lang {dict(keep_lang)}")
print(f"secret kinds: {dict(kinds)}")
print(f"snippets with no secret: {sum(1 for s in snip if not s.get('secrets'))}; subjects: {sum(1 for s in snip if s['where']=='subject')}")
sys.exit(1 if errors else 0)
