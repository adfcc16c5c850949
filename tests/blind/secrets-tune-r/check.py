#!/usr/bin/env python3
"""Checks for batch secrets-tune-r: TOML loads, values/keeps occur, .eml parse."""
import email, email.policy, os, sys, tomllib
from email.header import decode_header, make_header

HERE = os.path.dirname(os.path.abspath(__file__))
errors = []

def check_item(name, text, secrets, keep, exact_once=True):
    vals = [s["value"] for s in secrets]
    for s in secrets:
        if s.get("kind") not in ("password", "private-key", "api-token", "url-credentials", "connection-string"):
            errors.append(f"{name}: bad kind {s.get('kind')}")
        n = text.count(s["value"])
        if n == 0 or (exact_once and n != 1):
            errors.append(f"{name}: secret {s['value'][:40]!r} occurs {n} times")
    for k in keep:
        if k not in text:
            errors.append(f"{name}: keep {k[:40]!r} not found")
        for v in vals:
            if k in v or v in k:
                errors.append(f"{name}: keep {k[:30]!r} overlaps secret {v[:30]!r}")
    if not secrets and not keep:
        errors.append(f"{name}: no secret and no keep")

sn = tomllib.load(open(os.path.join(HERE, "snippets.toml"), "rb"))["snippet"]
ids = set()
stats = {"snippets": 0, "secrets": 0, "keep": 0, "fr": 0, "en": 0, "secrets_fr": 0, "secrets_en": 0}
for s in sn:
    if s["id"] in ids:
        errors.append(f"duplicate id {s['id']}")
    ids.add(s["id"])
    if s["lang"] not in ("fr", "en") or s["where"] not in ("body", "subject"):
        errors.append(f"{s['id']}: bad lang/where")
    if s["where"] == "subject" and "\n" in s["text"]:
        errors.append(f"{s['id']}: subject on several lines")
    check_item(s["id"], s["text"], s["secrets"], s["keep"])
    stats["snippets"] += 1; stats["secrets"] += len(s["secrets"]); stats["keep"] += len(s["keep"])
    stats[s["lang"]] += 1; stats["secrets_" + s["lang"]] += len(s["secrets"])
print("snippets:", stats)

def decoded_texts(msg):
    out = [str(make_header(decode_header(msg.get("Subject", ""))))]
    for part in msg.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if payload is None:
            continue
        if part.get_content_maintype() == "text" or part.get_filename():
            cs = part.get_content_charset() or "utf-8"
            try:
                out.append(payload.decode(cs))
            except (LookupError, UnicodeDecodeError):
                out.append(payload.decode("latin-1"))
        if part.get_content_type() == "message/rfc822":
            pass
    # attached message/rfc822 parts are walked above as well
    return out

mdir = os.path.join(HERE, "messages")
man_path = os.path.join(mdir, "manifest.toml")
if os.path.exists(man_path):
    man = tomllib.load(open(man_path, "rb"))["message"]
    files = sorted(f for f in os.listdir(mdir) if f.endswith(".eml"))
    listed = [m["file"] for m in man]
    if sorted(listed) != files or len(set(listed)) != len(listed):
        errors.append(f"manifest/files mismatch: {set(files) ^ set(listed)}")
    if listed != sorted(listed):
        errors.append("manifest not in file order")
    ms = {"messages": 0, "secrets": 0, "keep": 0}
    for m in man:
        with open(os.path.join(mdir, m["file"]), "rb") as fh:
            msg = email.message_from_binary_file(fh, policy=email.policy.compat32)
        if msg.defects:
            errors.append(f"{m['file']}: defects {msg.defects}")
        texts = decoded_texts(msg)
        for s in m["secrets"]:
            if not any(s["value"] in t for t in texts):
                errors.append(f"{m['file']}: secret {s['value'][:40]!r} not found in any decoded part")
        for k in m["keep"]:
            if not any(k in t for t in texts):
                errors.append(f"{m['file']}: keep {k[:40]!r} not found")
            for s in m["secrets"]:
                if k in s["value"] or s["value"] in k:
                    errors.append(f"{m['file']}: keep {k!r} overlaps a secret")
        ms["messages"] += 1; ms["secrets"] += len(m["secrets"]); ms["keep"] += len(m["keep"])
        ms[m.get("lang", "?")] = ms.get(m.get("lang", "?"), 0) + 1
    print("messages:", ms)

for e in errors:
    print("ERROR", e)
print("OK" if not errors else f"{len(errors)} error(s)")
sys.exit(1 if errors else 0)
