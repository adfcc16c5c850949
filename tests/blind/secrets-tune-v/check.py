#!/usr/bin/env python3
"""Checks the secrets-tune-v test set (standard library only)."""
import email
import email.policy
import os
import sys
import tomllib
from collections import Counter
from email.header import decode_header, make_header

HERE = os.path.dirname(os.path.abspath(__file__))
MSGDIR = os.path.join(HERE, "messages")
errors = []


def err(msg):
    errors.append(msg)


def check_snippets():
    with open(os.path.join(HERE, "snippets.toml"), "rb") as f:
        data = tomllib.load(f)
    snips = data.get("snippet", [])
    ids = Counter(s.get("id") for s in snips)
    for i, n in ids.items():
        if n > 1:
            err(f"snippet id {i!r} used {n} times")
    nsec = nkeep = 0
    langs = Counter()
    for s in snips:
        sid = s.get("id")
        text = s.get("text", "")
        langs[s.get("lang")] += 1
        if s.get("lang") not in ("fr", "en"):
            err(f"{sid}: bad lang")
        if s.get("where") not in ("body", "subject"):
            err(f"{sid}: bad where")
        if s.get("where") == "subject" and ("\n" in text.strip("\n") or "\r" in text):
            err(f"{sid}: subject snippet is not one line")
        secrets = s.get("secrets")
        keep = s.get("keep", [])
        if secrets is None:
            err(f"{sid}: no secrets list")
            secrets = []
        if not secrets and not keep:
            err(f"{sid}: no secret and no keep")
        for sec in secrets:
            v = sec.get("value", "")
            if sec.get("kind") not in ("password", "private-key", "api-token",
                                       "url-credentials", "connection-string"):
                err(f"{sid}: bad kind {sec.get('kind')!r}")
            c = text.count(v) if v else 0
            if c != 1:
                err(f"{sid}: secret {v[:40]!r} occurs {c} times")
            nsec += 1
        for k in keep:
            if not k or k not in text:
                err(f"{sid}: keep {k!r} not in text")
            for sec in secrets:
                if k and sec.get("value") and k in sec["value"]:
                    err(f"{sid}: keep {k!r} is inside secret {sec['value'][:30]!r}")
            nkeep += 1
    return len(snips), nsec, nkeep, langs


def decoded_texts(msg):
    out = []
    subj = msg.get("Subject")
    if subj is not None:
        out.append(str(subj))
        try:
            out.append(str(make_header(decode_header(msg["Subject"].__str__()))))
        except Exception:
            pass
    for part in msg.walk():
        if part.is_multipart():
            continue
        if part.get_content_maintype() == "message":
            continue
        try:
            payload = part.get_content()
        except Exception:
            raw = part.get_payload(decode=True) or b""
            payload = raw.decode(part.get_content_charset() or "utf-8", "replace")
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8", "replace")
        if isinstance(payload, email.message.EmailMessage):
            continue
        out.append(payload)
        # decode again with the bytes, for parts whose declared charset is wrong
        raw = part.get_payload(decode=True)
        if isinstance(raw, bytes):
            for cs in ("utf-8", "windows-1252", "iso-8859-1"):
                try:
                    out.append(raw.decode(cs))
                except UnicodeDecodeError:
                    pass
    return out


def check_messages():
    with open(os.path.join(MSGDIR, "manifest.toml"), "rb") as f:
        data = tomllib.load(f)
    entries = data.get("message", [])
    files = sorted(f for f in os.listdir(MSGDIR) if f.endswith(".eml"))
    listed = [e.get("file") for e in entries]
    for f, n in Counter(listed).items():
        if n > 1:
            err(f"manifest lists {f} {n} times")
    if sorted(set(listed)) != files:
        err(f"manifest/files mismatch: only in manifest {sorted(set(listed) - set(files))}, "
            f"only on disk {sorted(set(files) - set(listed))}")
    if listed != sorted(listed):
        err("manifest not in file order")
    nsec = nkeep = 0
    for e in entries:
        fn = e.get("file")
        path = os.path.join(MSGDIR, fn)
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            try:
                msg = email.message_from_binary_file(f, policy=email.policy.default)
            except Exception as x:
                err(f"{fn}: does not parse: {x}")
                continue
        if msg.defects:
            err(f"{fn}: defects {msg.defects}")
        for part in msg.walk():
            if part.defects:
                err(f"{fn}: part defects {part.defects}")
        texts = decoded_texts(msg)
        for sec in e.get("secrets", []):
            v = sec.get("value", "")
            if not v or not any(v in t for t in texts):
                err(f"{fn}: secret {v[:40]!r} not found in decoded text")
            nsec += 1
        for k in e.get("keep", []):
            if not k or not any(k in t for t in texts):
                err(f"{fn}: keep {k!r} not found in decoded text")
            nkeep += 1
    return len(entries), nsec, nkeep, Counter(e.get("note", "?")[:2] for e in entries)


ns, ss, ks, ls = check_snippets()
print(f"snippets: {ns} {dict(ls)}  secrets: {ss}  keep: {ks}")
if os.path.exists(os.path.join(MSGDIR, "manifest.toml")):
    nm, sm, km, lm = check_messages()
    print(f"messages: {nm} {dict(lm)}  secrets: {sm}  keep: {km}")
    print(f"total secrets: {ss + sm}  total keep: {ks + km}")
else:
    err("messages/manifest.toml missing")
for e in errors:
    print("ERROR:", e)
print("OK" if not errors else f"{len(errors)} error(s)")
sys.exit(1 if errors else 0)
