#!/usr/bin/env python3
"""Check the secrets-tune-t test set: snippets.toml, messages/*.eml, messages/manifest.toml."""
import email
import pathlib
import sys
import tomllib
from collections import Counter
from email import policy

HERE = pathlib.Path(__file__).resolve().parent
KINDS = {"password", "private-key", "api-token", "url-credentials", "connection-string"}
errors = []


def err(msg):
    errors.append(msg)


def check_entry(where, text, secrets, keep):
    if not isinstance(secrets, list) or not isinstance(keep, list):
        err(f"{where}: secrets and keep must be lists")
        return
    if not secrets and not keep:
        err(f"{where}: no secret and no keep string")
    values = []
    for s in secrets:
        v, k = s.get("value"), s.get("kind")
        if k not in KINDS:
            err(f"{where}: unknown kind {k!r}")
        if not isinstance(v, str) or not v:
            err(f"{where}: empty secret value")
            continue
        values.append(v)
        n = text.count(v)
        if n != 1:
            err(f"{where}: secret {v[:40]!r} occurs {n} times (must be exactly 1)")
    for k in keep:
        if not isinstance(k, str) or not k:
            err(f"{where}: empty keep string")
            continue
        if k not in text:
            err(f"{where}: keep {k[:40]!r} not found")
        for v in values:
            if k in v or v in k:
                err(f"{where}: keep {k[:30]!r} overlaps secret {v[:30]!r}")
    return len(secrets), len(keep)


def load(path):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except Exception as e:  # noqa: BLE001
        err(f"{path.name}: TOML does not load: {e}")
        return None


stats = Counter()

# ---- snippets
snip = load(HERE / "snippets.toml")
if snip is not None:
    ids = Counter()
    for i, s in enumerate(snip.get("snippet", [])):
        sid = s.get("id", f"#{i}")
        ids[sid] += 1
        lang, where, text = s.get("lang"), s.get("where"), s.get("text", "")
        if lang not in ("fr", "en"):
            err(f"snippet {sid}: bad lang {lang!r}")
        if where not in ("body", "subject"):
            err(f"snippet {sid}: bad where {where!r}")
        if where == "subject" and ("\n" in text.strip("\n") or "\r" in text):
            err(f"snippet {sid}: subject snippet is not one line")
        if not text.strip():
            err(f"snippet {sid}: empty text")
        r = check_entry(f"snippet {sid}", text, s.get("secrets", []), s.get("keep", []))
        if r:
            stats[f"snippets-{lang}"] += 1
            stats[f"secrets-{lang}"] += r[0]
            stats[f"keep-{lang}"] += r[1]
            if where == "subject":
                stats["subject-snippets"] += 1
            if r[0] == 0:
                stats["no-secret-snippets"] += 1
    for sid, n in ids.items():
        if n > 1:
            err(f"snippet id {sid!r} used {n} times")

# ---- messages


def part_texts(msg):
    """Decoded Subjects (outer and attached messages) and decoded text of every leaf part."""
    out = []
    for part in msg.walk():
        subj = part.get("Subject")
        if subj is not None:
            out.append(str(subj))
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if payload is None:
            continue
        if part.get_content_maintype() == "text":
            try:
                out.append(part.get_content())
            except Exception:  # noqa: BLE001
                out.append(payload.decode("utf-8", errors="replace"))
        else:
            out.append(payload.decode("utf-8", errors="replace"))
    return out


mdir = HERE / "messages"
man = load(mdir / "manifest.toml")
present = sorted(p.name for p in mdir.glob("*.eml"))
if man is not None:
    listed = [m.get("file") for m in man.get("message", [])]
    for f, n in Counter(listed).items():
        if n > 1:
            err(f"manifest lists {f} {n} times")
    for f in sorted(set(listed) - set(present)):
        err(f"manifest lists {f} but the file is missing")
    for f in sorted(set(present) - set(listed)):
        err(f"{f} is not in the manifest")
    if listed != sorted(listed):
        err("manifest is not in file order")
    for m in man.get("message", []):
        f = m.get("file")
        path = mdir / str(f)
        if not path.exists():
            continue
        try:
            msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
            texts = part_texts(msg)
        except Exception as e:  # noqa: BLE001
            err(f"{f}: does not parse: {e}")
            continue
        for h in ("From", "To", "Date", "Message-ID", "Subject", "MIME-Version"):
            if msg.get(h) is None:
                err(f"{f}: missing header {h}")
        if msg.defects:
            err(f"{f}: parser defects {msg.defects}")
        lang = m.get("lang", "?")
        for s in m.get("secrets", []):
            v = s.get("value", "")
            if s.get("kind") not in KINDS:
                err(f"{f}: unknown kind {s.get('kind')!r}")
            if not v or not any(v in t for t in texts):
                err(f"{f}: secret {v[:40]!r} not found in any decoded part or Subject")
        for k in m.get("keep", []):
            if not k or not any(k in t for t in texts):
                err(f"{f}: keep {k[:40]!r} not found in any decoded part or Subject")
            for s in m.get("secrets", []):
                v = s.get("value", "")
                if v and (k in v or v in k):
                    err(f"{f}: keep {k[:30]!r} overlaps secret {v[:30]!r}")
        stats[f"messages-{lang}"] += 1
        stats[f"msg-secrets-{lang}"] += len(m.get("secrets", []))
        stats[f"msg-keep-{lang}"] += len(m.get("keep", []))

for k in sorted(stats):
    print(f"{k:22} {stats[k]}")
tot_sec = sum(v for k, v in stats.items() if "secrets" in k)
tot_keep = sum(v for k, v in stats.items() if "keep" in k)
print(f"{'TOTAL secrets':22} {tot_sec}")
print(f"{'TOTAL keep (decoys)':22} {tot_keep}")
if errors:
    print(f"\n{len(errors)} error(s):")
    for e in errors:
        print("  -", e)
    sys.exit(1)
print("\nOK: no error")
