#!/usr/bin/env python3
"""Check the secrets-tune-w test set (standard library only)."""
import email
import os
import sys
import tomllib
from collections import Counter
from email import policy

HERE = os.path.dirname(os.path.abspath(__file__))
errors = []


def err(msg):
    errors.append(msg)


def part_texts(msg):
    """Decoded text of every leaf part, plus decoded Subjects of (nested) messages."""
    out = []
    for part in msg.walk():
        if part.get("Subject") is not None:
            out.append(str(part["Subject"]))
        if part.is_multipart():
            continue
        try:
            content = part.get_content()
        except Exception as exc:  # noqa: BLE001
            payload = part.get_payload(decode=True) or b""
            content = payload
            err(f"cannot decode a part ({part.get_content_type()}): {exc}")
        if isinstance(content, bytes):
            content = content.decode("utf-8", "replace")
        elif not isinstance(content, str):
            content = str(content)
        out.append(content)
    return out


# --- snippets
stats = Counter()
with open(os.path.join(HERE, "snippets.toml"), "rb") as f:
    snippets = tomllib.load(f)["snippet"]
ids = Counter(s["id"] for s in snippets)
for i, n in ids.items():
    if n > 1:
        err(f"snippet id not unique: {i}")
for s in snippets:
    sid, text = s["id"], s["text"]
    if s.get("lang") not in ("fr", "en"):
        err(f"{sid}: bad lang")
    if s.get("where") not in ("body", "subject"):
        err(f"{sid}: bad where")
    if s["where"] == "subject" and ("\n" in text.strip("\n") or "\r" in text):
        err(f"{sid}: subject text is not one line")
    secrets = s.get("secrets", [])
    keep = s.get("keep", [])
    if not secrets and not keep:
        err(f"{sid}: no secret and no keep")
    for sec in secrets:
        c = text.count(sec["value"])
        if c != 1:
            err(f"{sid}: secret {sec['value'][:40]!r} occurs {c} times")
        if sec.get("kind") not in ("password", "private-key", "api-token", "url-credentials", "connection-string"):
            err(f"{sid}: bad kind {sec.get('kind')}")
    for k in keep:
        if k not in text:
            err(f"{sid}: keep {k[:40]!r} not in text")
        for sec in secrets:
            if k in sec["value"] and len(k) > 3:
                err(f"{sid}: keep {k[:40]!r} is inside secret")
    stats[("snippets", s["lang"])] += 1
    stats[("secrets", s["lang"])] += len(secrets)
    stats[("keep", s["lang"])] += len(keep)

# --- messages
mdir = os.path.join(HERE, "messages")
with open(os.path.join(mdir, "manifest.toml"), "rb") as f:
    manifest = tomllib.load(f).get("message", [])
listed = [m["file"] for m in manifest]
present = sorted(x for x in os.listdir(mdir) if x.endswith(".eml"))
for dup, n in Counter(listed).items():
    if n > 1:
        err(f"manifest lists {dup} {n} times")
if sorted(set(listed)) != present:
    err(f"manifest/files mismatch: only listed {sorted(set(listed) - set(present))}, only present {sorted(set(present) - set(listed))}")
for m in manifest:
    path = os.path.join(mdir, m["file"])
    if not os.path.exists(path):
        continue
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=policy.default)
    if msg.defects:
        err(f"{m['file']}: defects {msg.defects}")
    texts = part_texts(msg)
    for sec in m.get("secrets", []):
        if not any(sec["value"] in t for t in texts):
            err(f"{m['file']}: secret {sec['value'][:40]!r} not found in any decoded part")
    for k in m.get("keep", []):
        if not any(k in t for t in texts):
            err(f"{m['file']}: keep {k[:40]!r} not found in any decoded part")
    lang = m.get("lang", "?")
    stats[("messages", lang)] += 1
    stats[("secrets", lang)] += len(m.get("secrets", []))
    stats[("keep", lang)] += len(m.get("keep", []))

for e in errors:
    print("ERROR:", e)
for what in ("snippets", "messages", "secrets", "keep"):
    fr, en = stats[(what, "fr")], stats[(what, "en")]
    print(f"{what:9s} total {fr + en:4d}  fr {fr:4d}  en {en:4d}")
print("OK" if not errors else f"{len(errors)} error(s)")
sys.exit(1 if errors else 0)
