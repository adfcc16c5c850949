#!/usr/bin/env python3
"""Verify the secrets-tune-ab test set (standard library only)."""
import email, email.policy, os, sys, tomllib
from email.header import decode_header, make_header
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = {"password", "private-key", "api-token", "url-credentials", "connection-string"}
errors = []
def err(m): errors.append(m)

# ---- snippets
with open(os.path.join(HERE, "snippets.toml"), "rb") as f:
    snip = tomllib.load(f)["snippet"]
ids = Counter(s["id"] for s in snip)
for i, n in ids.items():
    if n > 1: err(f"duplicate id {i}")
nsec = ndec = 0
by_lang = Counter(); sec_lang = Counter(); dec_lang = Counter()
for s in snip:
    sid = s.get("id"); t = s.get("text", "")
    for k in ("id", "lang", "where", "text", "secrets", "keep"):
        if k not in s: err(f"{sid}: missing {k}")
    if s.get("lang") not in ("fr", "en"): err(f"{sid}: bad lang")
    if s.get("where") not in ("body", "subject"): err(f"{sid}: bad where")
    if s.get("where") == "subject" and ("\n" in t.strip("\n") or "\n" in t): err(f"{sid}: subject not one line")
    if not s["secrets"] and not s["keep"]: err(f"{sid}: no secret and no keep")
    for x in s["secrets"]:
        if x.get("kind") not in KINDS: err(f"{sid}: bad kind {x.get('kind')}")
        c = t.count(x["value"])
        if c != 1: err(f"{sid}: secret {x['value'][:40]!r} occurs {c} times")
    for k in s["keep"]:
        if k not in t: err(f"{sid}: keep {k[:40]!r} not in text")
        for x in s["secrets"]:
            if k in x["value"]: err(f"{sid}: keep {k[:30]!r} lies inside a secret")
    by_lang[s["lang"]] += 1; sec_lang[s["lang"]] += len(s["secrets"]); dec_lang[s["lang"]] += len(s["keep"])
    nsec += len(s["secrets"]); ndec += len(s["keep"])

# ---- messages
mdir = os.path.join(HERE, "messages")
with open(os.path.join(mdir, "manifest.toml"), "rb") as f:
    man = tomllib.load(f).get("message", [])
files = sorted(f for f in os.listdir(mdir) if f.endswith(".eml"))
listed = [m["file"] for m in man]
if sorted(listed) != files or len(set(listed)) != len(listed):
    err(f"manifest/file mismatch: {sorted(set(files) ^ set(listed))}")
msec = mdec = 0; mlang = Counter()
for m in man:
    fn = m["file"]; p = os.path.join(mdir, fn)
    if not os.path.exists(p): continue
    with open(p, "rb") as f:
        raw = f.read()
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception as e:
        err(f"{fn}: parse error {e}"); continue
    if msg.defects: err(f"{fn}: defects {msg.defects}")
    texts = []
    def add_subject(mm):
        if mm["Subject"]:
            texts.append(str(make_header(decode_header(mm["Subject"]))))
    add_subject(msg)
    for part in msg.walk():
        if part.get_content_type() == "message/rfc822":
            for sub in part.get_payload():
                add_subject(sub)
        if part.is_multipart(): continue
        payload = part.get_payload(decode=True)
        if payload is None: continue
        cs = part.get_content_charset() or "us-ascii"
        try:
            texts.append(payload.decode(cs, errors="replace"))
        except LookupError:
            texts.append(payload.decode("latin-1"))
    if m.get("lang") not in ("fr", "en"): err(f"{fn}: bad lang")
    for x in m.get("secrets", []):
        if x.get("kind") not in KINDS: err(f"{fn}: bad kind")
        if not any(x["value"] in t for t in texts): err(f"{fn}: secret {x['value'][:40]!r} not found")
        if any(t.count(x["value"]) > 1 for t in texts): err(f"{fn}: secret {x['value'][:40]!r} twice in one part")
    for k in m.get("keep", []):
        if not any(k in t for t in texts): err(f"{fn}: keep {k[:40]!r} not found")
    msec += len(m.get("secrets", [])); mdec += len(m.get("keep", [])); mlang[m.get("lang")] += 1
    sec_lang[m.get("lang")] += len(m.get("secrets", [])); dec_lang[m.get("lang")] += len(m.get("keep", []))

for e in errors: print("ERROR:", e)
print(f"snippets: {len(snip)} ({dict(by_lang)}), secrets {nsec}, decoys {ndec}")
print(f"messages: {len(man)} ({dict(mlang)}), secrets {msec}, decoys {mdec}")
print(f"total: secrets {nsec+msec}, decoys {ndec+mdec}; secrets by lang {dict(sec_lang)}, decoys by lang {dict(dec_lang)}")
print(f"snippets without secret: {sum(1 for s in snip if not s['secrets'])}; subjects: {sum(1 for s in snip if s['where']=='subject')}")
sys.exit(1 if errors else 0)
