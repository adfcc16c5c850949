#!/usr/bin/env python3
"""Verify the secrets-tune-aa test set (standard library only)."""
import collections, email, email.policy, os, sys, tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = {"password", "private-key", "api-token", "url-credentials", "connection-string"}
errors = []

def err(msg):
    errors.append(msg)

snip = tomllib.load(open(os.path.join(HERE, "snippets.toml"), "rb"))["snippet"]
ids = collections.Counter(s["id"] for s in snip)
for i, n in ids.items():
    if n > 1:
        err(f"duplicate id {i}")
stats = collections.Counter()
for s in snip:
    sid, text = s["id"], s["text"]
    if s.get("lang") not in ("fr", "en"):
        err(f"{sid}: bad lang")
    if s.get("where") not in ("body", "subject"):
        err(f"{sid}: bad where")
    if s.get("where") == "subject" and "\n" in text.strip("\n"):
        err(f"{sid}: subject on several lines")
    secrets = s.get("secrets", [])
    keep = s.get("keep", [])
    if not secrets and not keep:
        err(f"{sid}: no secret and no keep")
    for x in secrets:
        if x.get("kind") not in KINDS:
            err(f"{sid}: bad kind {x.get('kind')}")
        c = text.count(x["value"])
        if c != 1:
            err(f"{sid}: secret {x['value'][:40]!r} occurs {c} times")
        for k in keep:
            if k in x["value"]:
                err(f"{sid}: keep {k!r} is inside secret")
    for k in keep:
        if k not in text:
            err(f"{sid}: keep {k!r} not in text")
    stats["snippets"] += 1
    stats["snippets_" + s["lang"]] += 1
    stats["secrets_" + s["lang"]] += len(secrets)
    stats["decoys_" + s["lang"]] += len(keep)
    stats["secrets"] += len(secrets)
    stats["decoys"] += len(keep)
    if not secrets:
        stats["snippets_without_secret"] += 1

mdir = os.path.join(HERE, "messages")
man = tomllib.load(open(os.path.join(mdir, "manifest.toml"), "rb"))["message"]
files = [m["file"] for m in man]
on_disk = sorted(f for f in os.listdir(mdir) if f.endswith(".eml"))
if sorted(files) != on_disk or len(set(files)) != len(files):
    err(f"manifest files {files} != disk {on_disk}")
if files != sorted(files):
    err("manifest not in file order")

def texts_of(path):
    raw = open(path, "rb").read()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    out = []
    def walk(m):
        subj = m.get("Subject")
        if subj is not None:
            out.append(str(subj))
        for part in m.walk():
            if part.is_multipart():
                continue
            ct = part.get_content_type()
            if ct.startswith("text/"):
                try:
                    out.append(part.get_content())
                except Exception as e:  # noqa
                    err(f"{path}: cannot decode part {ct}: {e}")
            elif ct == "message/rfc822":
                pass
    walk(msg)
    return msg, out

for m in man:
    f = m["file"]
    if m.get("lang") not in ("fr", "en"):
        err(f"{f}: bad lang")
    msg, texts = texts_of(os.path.join(mdir, f))
    if msg.defects:
        err(f"{f}: defects {msg.defects}")
    for h in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Received"):
        if msg.get(h) is None:
            err(f"{f}: missing {h}")
    secrets = m.get("secrets", [])
    keep = m.get("keep", [])
    for x in secrets:
        if x.get("kind") not in KINDS:
            err(f"{f}: bad kind")
        if not any(x["value"] in t for t in texts):
            err(f"{f}: secret {x['value'][:40]!r} not found in any decoded part or Subject")
        for k in keep:
            if k in x["value"]:
                err(f"{f}: keep {k!r} inside secret")
    for k in keep:
        if not any(k in t for t in texts):
            err(f"{f}: keep {k!r} not found")
    stats["messages"] += 1
    stats["messages_" + m["lang"]] += 1
    stats["secrets_" + m["lang"]] += len(secrets)
    stats["decoys_" + m["lang"]] += len(keep)
    stats["secrets"] += len(secrets)
    stats["decoys"] += len(keep)

for e in errors:
    print("ERROR", e)
for k in sorted(stats):
    print(f"{k:28} {stats[k]}")
sys.exit(1 if errors else 0)
