#!/usr/bin/env python3
"""Check the secrets-tune-ae test set (standard library only)."""
import email
import sys
import tomllib
from collections import Counter
from email import policy
from pathlib import Path

HERE = Path(__file__).resolve().parent
errors = []
LANGS = {"fr", "en"}
WHERES = {"body", "subject"}
KINDS = {"password", "private-key", "api-token", "url-credentials", "connection-string"}


def err(msg):
    errors.append(msg)


def check_item(label, texts, secrets, keep, single_text):
    """texts: list of decoded strings. Secrets: occur, once per text at most
    (exactly once when single_text). Keep: occurs outside every secret."""
    values = [s["value"] for s in secrets]
    for s in secrets:
        if s.get("kind") not in KINDS:
            err(f"{label}: bad kind {s.get('kind')!r}")
        v = s["value"]
        counts = [t.count(v) for t in texts]
        if single_text:
            if counts[0] != 1:
                err(f"{label}: secret {v[:40]!r} occurs {counts[0]} times")
        else:
            if not any(counts):
                err(f"{label}: secret {v[:40]!r} not found")
            if any(c > 1 for c in counts):
                err(f"{label}: secret {v[:40]!r} occurs more than once in one part")
    for k in keep:
        if not any(k in t for t in texts):
            err(f"{label}: keep {k[:40]!r} not found")
            continue
        stripped = texts
        for v in sorted(values, key=len, reverse=True):
            stripped = [t.replace(v, "\x00") for t in stripped]
        if not any(k in t for t in stripped):
            err(f"{label}: keep {k[:40]!r} only occurs inside a secret")
    if not secrets and not keep:
        err(f"{label}: no secret and no keep")


# snippets
snip = tomllib.load(open(HERE / "snippets.toml", "rb"))["snippet"]
ids = Counter(s["id"] for s in snip)
for i, n in ids.items():
    if n > 1:
        err(f"duplicate snippet id {i}")
for s in snip:
    if s.get("lang") not in LANGS:
        err(f"{s['id']}: bad lang")
    if s.get("where") not in WHERES:
        err(f"{s['id']}: bad where")
    if s["where"] == "subject" and "\n" in s["text"]:
        err(f"{s['id']}: subject on several lines")
    check_item(s["id"], [s["text"]], s["secrets"], s["keep"], True)


# messages
def decoded_texts(msg):
    out = []
    for part in msg.walk():
        for h in ("Subject",):
            if part.get(h) is not None:
                out.append(str(part.get(h)))
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        try:
            out.append(part.get_content())
        except Exception as e:  # noqa
            err(f"cannot decode a part: {e}")
    return out


man = tomllib.load(open(HERE / "messages" / "manifest.toml", "rb"))["message"]
files = sorted(p.name for p in (HERE / "messages").glob("*.eml"))
listed = [m["file"] for m in man]
if sorted(listed) != files or len(set(listed)) != len(listed):
    err(f"manifest/file mismatch: {set(files) ^ set(listed)}")
for m in man:
    if m.get("lang") not in LANGS:
        err(f"{m['file']}: bad lang")
    raw = (HERE / "messages" / m["file"]).read_bytes()
    msg = email.message_from_bytes(raw, policy=policy.default)
    if msg.defects:
        err(f"{m['file']}: defects {msg.defects}")
    for h in ("From", "To", "Date", "Message-ID", "Subject", "MIME-Version"):
        if msg.get(h) is None:
            err(f"{m['file']}: missing {h}")
    check_item(m["file"], decoded_texts(msg), m["secrets"], m["keep"], False)

# counts
def tally(items):
    c = Counter()
    for it in items:
        c[it["lang"], "items"] += 1
        c[it["lang"], "secrets"] += len(it["secrets"])
        c[it["lang"], "keep"] += len(it["keep"])
    return c

cs, cm = tally(snip), tally(man)
tot_sec = sum(v for (l, k), v in (cs + cm).items() if k == "secrets")
tot_keep = sum(v for (l, k), v in (cs + cm).items() if k == "keep")
print(f"snippets: {len(snip)} (fr {cs['fr','items']}, en {cs['en','items']}; subject {sum(1 for s in snip if s['where']=='subject')}; no-secret {sum(1 for s in snip if not s['secrets'])})")
print(f"messages: {len(man)} (fr {cm['fr','items']}, en {cm['en','items']})")
print(f"secrets: {tot_sec} (fr {cs['fr','secrets']+cm['fr','secrets']}, en {cs['en','secrets']+cm['en','secrets']})")
print(f"decoys (keep): {tot_keep} (fr {cs['fr','keep']+cm['fr','keep']}, en {cs['en','keep']+cm['en','keep']})")
kinds = Counter(s["kind"] for it in snip + man for s in it["secrets"])
print("kinds:", dict(kinds))
if errors:
    print(f"\n{len(errors)} error(s):")
    for e in errors:
        print("  -", e)
    sys.exit(1)
print("OK")
