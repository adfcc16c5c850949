#!/usr/bin/env python3
"""Check the secrets-tune-u test set: snippets.toml, messages/*.eml, messages/manifest.toml."""
import os
import sys
import tomllib
from collections import Counter
from email import policy
from email.parser import BytesParser

HERE = os.path.dirname(os.path.abspath(__file__))
MSG_DIR = os.path.join(HERE, "messages")
KINDS = {"password", "private-key", "api-token", "url-credentials", "connection-string"}
errors = []


def err(msg):
    errors.append(msg)


def check_snippets():
    path = os.path.join(HERE, "snippets.toml")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except Exception as exc:  # noqa: BLE001
        err(f"snippets.toml does not load: {exc}")
        return Counter(), Counter(), Counter()
    ids = Counter()
    n_sec, n_keep, n_snip = Counter(), Counter(), Counter()
    for i, sn in enumerate(data.get("snippet", [])):
        sid = sn.get("id", f"#{i}")
        ids[sid] += 1
        lang = sn.get("lang")
        if lang not in ("fr", "en"):
            err(f"snippet {sid}: bad lang {lang!r}")
        where = sn.get("where")
        if where not in ("body", "subject"):
            err(f"snippet {sid}: bad where {where!r}")
        text = sn.get("text")
        if not isinstance(text, str) or not text:
            err(f"snippet {sid}: no text")
            continue
        if where == "subject" and ("\n" in text or "\r" in text):
            err(f"snippet {sid}: subject text is not one line")
        secrets = sn.get("secrets")
        keep = sn.get("keep")
        if secrets is None or keep is None:
            err(f"snippet {sid}: missing secrets or keep")
            continue
        if not secrets and not keep:
            err(f"snippet {sid}: no secret and no keep")
        for s in secrets:
            v = s.get("value", "")
            if s.get("kind") not in KINDS:
                err(f"snippet {sid}: bad kind {s.get('kind')!r}")
            c = text.count(v) if v else 0
            if c != 1:
                err(f"snippet {sid}: secret {v[:40]!r} occurs {c} times")
        for k in keep:
            if not k or k not in text:
                err(f"snippet {sid}: keep {k[:40]!r} not in text")
        n_snip[lang] += 1
        n_sec[lang] += len(secrets)
        n_keep[lang] += len(keep)
    for sid, c in ids.items():
        if c > 1:
            err(f"snippet id {sid} used {c} times")
    return n_snip, n_sec, n_keep


def decoded_texts(msg):
    texts = [str(msg.get("Subject", ""))]
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if part.get_content_maintype() == "text":
            try:
                texts.append(part.get_content())
            except Exception as exc:  # noqa: BLE001
                err(f"cannot decode {ctype} part: {exc}")
        elif ctype == "message/rfc822":
            pass
    # attached messages: walk() already descends into message/rfc822
    for part in msg.walk():
        if part is not msg and part.get("Subject") is not None:
            texts.append(str(part.get("Subject")))
    return texts


def check_messages():
    n_msg, n_sec, n_keep = Counter(), Counter(), Counter()
    mpath = os.path.join(MSG_DIR, "manifest.toml")
    try:
        with open(mpath, "rb") as fh:
            manifest = tomllib.load(fh)
    except Exception as exc:  # noqa: BLE001
        err(f"manifest.toml does not load: {exc}")
        return n_msg, n_sec, n_keep
    present = sorted(f for f in os.listdir(MSG_DIR) if f.endswith(".eml"))
    listed = [m.get("file") for m in manifest.get("message", [])]
    for f, c in Counter(listed).items():
        if c > 1:
            err(f"manifest lists {f} {c} times")
    if sorted(set(listed)) != present:
        err(f"manifest/file mismatch: only in manifest {sorted(set(listed) - set(present))}, "
            f"only on disk {sorted(set(present) - set(listed))}")
    if listed != sorted(listed):
        err("manifest is not in file order")
    for m in manifest.get("message", []):
        f = m.get("file")
        p = os.path.join(MSG_DIR, f or "")
        if not f or not os.path.isfile(p):
            continue
        try:
            with open(p, "rb") as fh:
                msg = BytesParser(policy=policy.default).parse(fh)
        except Exception as exc:  # noqa: BLE001
            err(f"{f}: does not parse: {exc}")
            continue
        for h in ("From", "To", "Subject", "Date", "Message-ID"):
            if msg.get(h) is None:
                err(f"{f}: missing header {h}")
        texts = decoded_texts(msg)
        lang = m.get("lang", "?")
        for s in m.get("secrets", []):
            v = s.get("value", "")
            if s.get("kind") not in KINDS:
                err(f"{f}: bad kind {s.get('kind')!r}")
            if not v or not any(v in t for t in texts):
                err(f"{f}: secret {v[:40]!r} not found in decoded text")
        for k in m.get("keep", []):
            if not k or not any(k in t for t in texts):
                err(f"{f}: keep {k[:40]!r} not found in decoded text")
        n_msg[lang] += 1
        n_sec[lang] += len(m.get("secrets", []))
        n_keep[lang] += len(m.get("keep", []))
    return n_msg, n_sec, n_keep


def main():
    s_n, s_sec, s_keep = check_snippets()
    m_n, m_sec, m_keep = check_messages()
    tot = lambda c: sum(c.values())  # noqa: E731
    print(f"snippets: {tot(s_n)} {dict(s_n)}  secrets {tot(s_sec)} {dict(s_sec)}  keep {tot(s_keep)} {dict(s_keep)}")
    print(f"messages: {tot(m_n)} {dict(m_n)}  secrets {tot(m_sec)} {dict(m_sec)}  keep {tot(m_keep)} {dict(m_keep)}")
    print(f"total: secrets {tot(s_sec) + tot(m_sec)}, decoys/keep {tot(s_keep) + tot(m_keep)}")
    for e in errors:
        print("ERROR:", e)
    print("OK, no error" if not errors else f"{len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
