#!/usr/bin/env python3
"""Check the secrets-tune-y test set (standard library only)."""
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


def spans(text, needle):
    out, start = [], 0
    while True:
        i = text.find(needle, start)
        if i < 0:
            return out
        out.append((i, i + len(needle)))
        start = i + 1


def check_item(name, texts, secrets, keep, exact_once):
    """texts: list of strings (parts); secrets/keep as in the TOML."""
    if not isinstance(secrets, list) or not isinstance(keep, list):
        err(f"{name}: secrets/keep must be lists")
        return
    if not secrets and not keep:
        err(f"{name}: no secret and no keep")
    secret_spans = []
    for s in secrets:
        if s.get("kind") not in KINDS:
            err(f"{name}: bad kind {s.get('kind')!r}")
        v = s.get("value", "")
        if not v:
            err(f"{name}: empty secret value")
            continue
        found = False
        for ti, t in enumerate(texts):
            sp = spans(t, v)
            if sp:
                found = True
            if len(sp) > 1:
                err(f"{name}: secret {v[:40]!r} occurs {len(sp)} times in one text")
            secret_spans += [(ti, a, b) for a, b in sp]
        if not found:
            err(f"{name}: secret not found: {v[:60]!r}")
    values = [s.get("value", "") for s in secrets]
    if len(set(values)) != len(values):
        err(f"{name}: duplicate secret values")
    for k in keep:
        if not k:
            err(f"{name}: empty keep")
            continue
        found = False
        for ti, t in enumerate(texts):
            for a, b in spans(t, k):
                found = True
                for tj, c, d in secret_spans:
                    if tj == ti and a < d and c < b:
                        err(f"{name}: keep {k!r} overlaps a secret")
        if not found:
            err(f"{name}: keep not found: {k[:60]!r}")
        for v in values:
            if v and (v in k or k in v):
                err(f"{name}: keep {k!r} and secret {v[:30]!r} contain each other")


def part_texts(msg):
    texts = []
    subj = msg.get("Subject")
    if subj is not None:
        texts.append(str(subj))  # policy.default decodes RFC 2047
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if part.get_content_maintype() == "text":
            texts.append(part.get_content())
        elif ctype == "message/rfc822":
            continue
        else:
            payload = part.get_payload(decode=True) or b""
            fn = (part.get_filename() or "").lower()
            if fn.endswith((".txt", ".env", ".conf", ".ovpn", ".csv", ".xml", ".yml",
                            ".yaml", ".ini", ".sql", ".ldif", ".json", ".php", ".log")):
                texts.append(payload.decode("utf-8", "replace"))
    # inner subjects of attached messages
    for part in msg.walk():
        if part.get_content_type() == "message/rfc822":
            for inner in part.get_payload():
                if inner.get("Subject") is not None:
                    texts.append(str(inner.get("Subject")))
    return texts


def main():
    counts = Counter()
    # snippets
    with open(os.path.join(HERE, "snippets.toml"), "rb") as f:
        data = tomllib.load(f)
    snippets = data.get("snippet", [])
    ids = Counter(s.get("id") for s in snippets)
    for i, n in ids.items():
        if n > 1:
            err(f"duplicate snippet id {i}")
    for s in snippets:
        name = f"snippet {s.get('id')}"
        lang = s.get("lang")
        if lang not in ("fr", "en"):
            err(f"{name}: bad lang {lang!r}")
        if s.get("where") not in ("body", "subject"):
            err(f"{name}: bad where {s.get('where')!r}")
        text = s.get("text", "")
        if s.get("where") == "subject" and "\n" in text.strip("\n"):
            err(f"{name}: subject on more than one line")
        check_item(name, [text], s.get("secrets", []), s.get("keep", []), True)
        counts[("snippets", lang)] += 1
        counts[("secrets", lang)] += len(s.get("secrets", []))
        counts[("decoys", lang)] += len(s.get("keep", []))
        if not s.get("secrets"):
            counts[("no-secret snippets", lang)] += 1
        if s.get("where") == "subject":
            counts[("subject snippets", lang)] += 1
        for sec in s.get("secrets", []):
            counts[("kind", sec.get("kind"))] += 1
    # messages
    mdir = os.path.join(HERE, "messages")
    with open(os.path.join(mdir, "manifest.toml"), "rb") as f:
        man = tomllib.load(f)
    msgs = man.get("message", [])
    files = [m.get("file") for m in msgs]
    for fn, n in Counter(files).items():
        if n > 1:
            err(f"manifest lists {fn} {n} times")
    on_disk = sorted(f for f in os.listdir(mdir) if f.endswith(".eml"))
    if sorted(files) != on_disk:
        err(f"manifest/files mismatch: {set(files) ^ set(on_disk)}")
    for m in msgs:
        fn = m.get("file")
        name = f"message {fn}"
        lang = m.get("lang")
        if lang not in ("fr", "en"):
            err(f"{name}: bad lang {lang!r}")
        path = os.path.join(mdir, fn)
        if not os.path.exists(path):
            err(f"{name}: missing file")
            continue
        with open(path, "rb") as f:
            raw = f.read()
        try:
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            texts = part_texts(msg)
        except Exception as e:  # noqa: BLE001
            err(f"{name}: does not parse: {e}")
            continue
        if msg.defects:
            err(f"{name}: defects {msg.defects}")
        for h in ("From", "To", "Date", "Message-ID", "Subject", "MIME-Version"):
            if msg.get(h) is None:
                err(f"{name}: no {h} header")
        check_item(name, texts, m.get("secrets", []), m.get("keep", []), False)
        counts[("messages", lang)] += 1
        counts[("secrets", lang)] += len(m.get("secrets", []))
        counts[("decoys", lang)] += len(m.get("keep", []))
        for sec in m.get("secrets", []):
            counts[("kind", sec.get("kind"))] += 1
    for e in errors:
        print("ERROR:", e)
    print()
    for what in ("snippets", "no-secret snippets", "subject snippets", "messages", "secrets", "decoys"):
        fr, en = counts[(what, "fr")], counts[(what, "en")]
        print(f"{what:20s} total {fr + en:4d}   fr {fr:4d}   en {en:4d}")
    print("kinds:", ", ".join(f"{k[1]}={v}" for k, v in sorted(counts.items()) if k[0] == "kind"))
    print("OK" if not errors else f"{len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
