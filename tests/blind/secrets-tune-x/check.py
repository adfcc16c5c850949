#!/usr/bin/env python3
"""Check the secrets-tune-x test set (standard library only).

- snippets.toml and messages/manifest.toml load as TOML;
- snippet ids are unique, lang is fr|en, where is body|subject (a subject is one line);
- kinds are known; a text with no secret has at least one keep string;
- in snippets every secret value occurs exactly once in its text, every keep string
  occurs at least once outside the secret values;
- every .eml parses, is listed exactly once in the manifest, and every secret value and
  keep string occurs in the decoded text of some part or in the decoded Subject;
- prints counts.
"""
import email
import email.policy
import os
import sys
import tomllib
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = {"password", "private-key", "api-token", "url-credentials", "connection-string"}
LANGS = {"fr", "en"}
WHERES = {"body", "subject"}

errors = []


def err(msg):
    errors.append(msg)


def spans(text, value):
    out, start = [], 0
    while True:
        i = text.find(value, start)
        if i < 0:
            return out
        out.append((i, i + len(value)))
        start = i + 1


def keep_outside_secrets(text, keep, secret_spans):
    for a, b in spans(text, keep):
        if not any(a >= sa and b <= sb for sa, sb in secret_spans):
            return True
    return False


def check_common(where, secrets, keep):
    if not isinstance(secrets, list) or not isinstance(keep, list):
        err(f"{where}: secrets and keep must be arrays")
        return False
    for s in secrets:
        if set(s) - {"kind", "value"} or "value" not in s or "kind" not in s:
            err(f"{where}: bad secret entry {s!r}")
        elif s["kind"] not in KINDS:
            err(f"{where}: unknown kind {s['kind']!r}")
        elif not s["value"]:
            err(f"{where}: empty secret value")
    for k in keep:
        if not isinstance(k, str) or not k:
            err(f"{where}: bad keep entry {k!r}")
    if not secrets and not keep:
        err(f"{where}: no secret and no keep")
    vals = [s.get("value") for s in secrets]
    for v, n in Counter(vals).items():
        if n > 1:
            err(f"{where}: secret value listed twice: {v!r}")
    for k in keep:
        for v in vals:
            if isinstance(v, str) and k == v:
                err(f"{where}: keep equals a secret: {k!r}")
    return True


# ---------------------------------------------------------------- snippets
snip_path = os.path.join(HERE, "snippets.toml")
with open(snip_path, "rb") as f:
    snippets = tomllib.load(f).get("snippet", [])

ids = Counter(s.get("id") for s in snippets)
for i, n in ids.items():
    if n > 1:
        err(f"snippet id not unique: {i!r}")

n_sec_sn = n_keep_sn = 0
lang_sn = Counter()
sec_lang = Counter()
keep_lang = Counter()
kinds = Counter()
where_c = Counter()
nosecret_sn = 0
for s in snippets:
    sid = s.get("id", "?")
    w = f"snippet {sid}"
    if s.get("lang") not in LANGS:
        err(f"{w}: bad lang {s.get('lang')!r}")
    if s.get("where") not in WHERES:
        err(f"{w}: bad where {s.get('where')!r}")
    text = s.get("text")
    if not isinstance(text, str) or not text.strip():
        err(f"{w}: empty text")
        continue
    if s.get("where") == "subject" and ("\n" in text.strip("\n") or "\r" in text):
        err(f"{w}: subject text is more than one line")
    secrets = s.get("secrets", None)
    keep = s.get("keep", None)
    if secrets is None or keep is None:
        err(f"{w}: missing secrets or keep")
        continue
    if not check_common(w, secrets, keep):
        continue
    sec_spans = []
    for sec in secrets:
        v = sec.get("value", "")
        c = len(spans(text, v)) if v else 0
        if c != 1:
            err(f"{w}: secret {v!r} occurs {c} times (must be exactly once)")
        sec_spans += spans(text, v) if v else []
    for k in keep:
        if k not in text:
            err(f"{w}: keep {k!r} not in text")
        elif not keep_outside_secrets(text, k, sec_spans):
            err(f"{w}: keep {k!r} only occurs inside a secret value")
    n_sec_sn += len(secrets)
    n_keep_sn += len(keep)
    lang_sn[s.get("lang")] += 1
    sec_lang[s.get("lang")] += len(secrets)
    keep_lang[s.get("lang")] += len(keep)
    where_c[s.get("where")] += 1
    if not secrets:
        nosecret_sn += 1
    for sec in secrets:
        kinds[sec.get("kind")] += 1

# ---------------------------------------------------------------- messages
msg_dir = os.path.join(HERE, "messages")
with open(os.path.join(msg_dir, "manifest.toml"), "rb") as f:
    manifest = tomllib.load(f).get("message", [])

listed = Counter(m.get("file") for m in manifest)
on_disk = sorted(x for x in os.listdir(msg_dir) if x.endswith(".eml"))
for fn, n in listed.items():
    if n > 1:
        err(f"manifest lists {fn!r} {n} times")
    if fn not in on_disk:
        err(f"manifest lists missing file {fn!r}")
for fn in on_disk:
    if fn not in listed:
        err(f"{fn} not in manifest")
if [m.get("file") for m in manifest] != on_disk:
    err("manifest is not in file order")


def decode_part(part):
    payload = part.get_payload(decode=True)
    if payload is None:
        return []
    out = []
    cs = part.get_content_charset()
    tried = []
    for c in (cs, "utf-8", "cp1252", "latin-1"):
        if c and c not in tried:
            tried.append(c)
            try:
                out.append(payload.decode(c))
            except (LookupError, UnicodeDecodeError):
                pass
    return out


def texts_of(path):
    with open(path, "rb") as f:
        raw = f.read()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    texts = []
    for part in msg.walk():
        subj = part.get("Subject")
        if subj is not None:
            texts.append(str(subj))
        if part.is_multipart() or part.get_content_type() == "message/rfc822":
            continue
        texts += decode_part(part)
    if msg.defects:
        err(f"{os.path.basename(path)}: parse defects {msg.defects}")
    for part in msg.walk():
        if part.defects:
            err(f"{os.path.basename(path)}: part defects {part.defects}")
    return msg, texts


n_sec_m = n_keep_m = 0
lang_m = Counter()
nosecret_m = 0
for m in manifest:
    fn = m.get("file", "?")
    w = f"message {fn}"
    if m.get("lang") not in LANGS:
        err(f"{w}: bad lang {m.get('lang')!r}")
    path = os.path.join(msg_dir, fn)
    if not os.path.exists(path):
        continue
    try:
        msg, texts = texts_of(path)
    except Exception as e:  # noqa: BLE001
        err(f"{w}: does not parse: {e}")
        continue
    for h in ("From", "To", "Date", "Message-ID", "Subject", "MIME-Version"):
        if msg.get(h) is None:
            err(f"{w}: missing header {h}")
    secrets = m.get("secrets", None)
    keep = m.get("keep", None)
    if secrets is None or keep is None:
        err(f"{w}: missing secrets or keep")
        continue
    if not check_common(w, secrets, keep):
        continue
    for sec in secrets:
        v = sec.get("value", "")
        if not any(v in t for t in texts):
            err(f"{w}: secret {v!r} not found in any decoded part or Subject")
    for k in keep:
        if not any(k in t for t in texts):
            err(f"{w}: keep {k!r} not found in any decoded part or Subject")
    n_sec_m += len(secrets)
    n_keep_m += len(keep)
    lang_m[m.get("lang")] += 1
    sec_lang[m.get("lang")] += len(secrets)
    keep_lang[m.get("lang")] += len(keep)
    if not secrets:
        nosecret_m += 1
    for sec in secrets:
        kinds[sec.get("kind")] += 1

# ---------------------------------------------------------------- report
print(f"snippets: {len(snippets)} ({dict(lang_sn)}; where {dict(where_c)}; "
      f"{nosecret_sn} with no secret)")
print(f"messages: {len(manifest)} ({dict(lang_m)}; {nosecret_m} with no secret)")
print(f"secrets:  {n_sec_sn + n_sec_m} (snippets {n_sec_sn}, messages {n_sec_m}; "
      f"by lang {dict(sec_lang)})")
print(f"decoys:   {n_keep_sn + n_keep_m} (snippets {n_keep_sn}, messages {n_keep_m}; "
      f"by lang {dict(keep_lang)})")
print(f"kinds:    {dict(kinds)}")
if errors:
    print(f"\n{len(errors)} problem(s):")
    for e in errors:
        print("  -", e)
    sys.exit(1)
print("OK")
