#!/usr/bin/env python3
"""Check the secrets-tune-ad test set (standard library only) and print counts."""
import email
import email.policy
import os
import sys
import tomllib
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
MSGDIR = os.path.join(HERE, "messages")
KINDS = {"password", "private-key", "api-token", "url-credentials", "connection-string"}
errors = []


def err(msg):
    errors.append(msg)


def check_entry(label, texts, secrets, keep, exact_once):
    """texts: list of decoded strings (one per part, or one for a snippet)."""
    if not isinstance(secrets, list) or not isinstance(keep, list):
        err(f"{label}: secrets and keep must be lists")
        return
    if not secrets and not keep:
        err(f"{label}: no secret and no keep")
    seen = set()
    for s in secrets:
        v, k = s.get("value"), s.get("kind")
        if k not in KINDS:
            err(f"{label}: bad kind {k!r}")
        if not isinstance(v, str) or not v:
            err(f"{label}: empty secret value")
            continue
        if v in seen:
            err(f"{label}: secret listed twice: {v!r}")
        seen.add(v)
        counts = [t.count(v) for t in texts]
        if sum(counts) == 0:
            err(f"{label}: secret not found: {v!r}")
        elif exact_once and sum(counts) != 1:
            err(f"{label}: secret occurs {sum(counts)} times: {v!r}")
        elif max(counts) > 1:
            err(f"{label}: secret occurs more than once in a part: {v!r}")
        for o in secrets:
            if o is not s and v in o["value"]:
                err(f"{label}: secret {v!r} inside another secret")
    for k in keep:
        if not isinstance(k, str) or not k:
            err(f"{label}: empty keep")
            continue
        if not any(k in t for t in texts):
            err(f"{label}: keep not found: {k!r}")
        for s in secrets:
            if k in s["value"] or s["value"] in k:
                err(f"{label}: keep {k!r} overlaps secret {s['value']!r}")


def main():
    stats = Counter()
    lang_stats = Counter()

    # snippets
    with open(os.path.join(HERE, "snippets.toml"), "rb") as f:
        data = tomllib.load(f)
    snippets = data.get("snippet", [])
    ids = Counter(s.get("id") for s in snippets)
    for i, n in ids.items():
        if n > 1 or not i:
            err(f"snippet id not unique or empty: {i!r}")
    for s in snippets:
        label = f"snippet {s.get('id')}"
        if s.get("lang") not in ("fr", "en"):
            err(f"{label}: bad lang {s.get('lang')!r}")
        if s.get("where") not in ("body", "subject"):
            err(f"{label}: bad where {s.get('where')!r}")
        text = s.get("text", "")
        if s.get("where") == "subject" and "\n" in text.strip("\n"):
            err(f"{label}: subject spans several lines")
        check_entry(label, [text], s.get("secrets", []), s.get("keep", []), True)
        stats["snippets"] += 1
        stats["secrets"] += len(s.get("secrets", []))
        stats["decoys"] += len(s.get("keep", []))
        lang_stats[("snippet", s.get("lang"))] += 1
        lang_stats[("secrets", s.get("lang"))] += len(s.get("secrets", []))
        lang_stats[("decoys", s.get("lang"))] += len(s.get("keep", []))
        if not s.get("secrets"):
            stats["snippets without secret"] += 1
        if s.get("where") == "subject":
            stats["subject snippets"] += 1

    # messages
    with open(os.path.join(MSGDIR, "manifest.toml"), "rb") as f:
        man = tomllib.load(f)
    msgs = man.get("message", [])
    files = Counter(m.get("file") for m in msgs)
    on_disk = sorted(x for x in os.listdir(MSGDIR) if x.endswith(".eml"))
    for fn, n in files.items():
        if n > 1:
            err(f"manifest lists {fn} {n} times")
    if sorted(files) != on_disk:
        err(f"manifest/disk mismatch: {sorted(set(files) ^ set(on_disk))}")
    if [m.get("file") for m in msgs] != on_disk:
        err("manifest not in file order")
    for m in msgs:
        fn = m.get("file")
        label = f"message {fn}"
        if m.get("lang") not in ("fr", "en"):
            err(f"{label}: bad lang")
        path = os.path.join(MSGDIR, fn)
        if not os.path.exists(path):
            err(f"{label}: missing file")
            continue
        with open(path, "rb") as f:
            raw = f.read()
        try:
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            texts = []
            for part in msg.walk():
                subj = part.get("Subject")
                if subj is not None:
                    texts.append(str(subj))
                if part.get_content_maintype() == "text":
                    texts.append(part.get_content())
            if msg.defects:
                err(f"{label}: defects {msg.defects}")
        except Exception as e:  # noqa: BLE001
            err(f"{label}: does not parse: {e}")
            continue
        check_entry(label, texts, m.get("secrets", []), m.get("keep", []), False)
        stats["messages"] += 1
        stats["secrets"] += len(m.get("secrets", []))
        stats["decoys"] += len(m.get("keep", []))
        lang_stats[("message", m.get("lang"))] += 1
        lang_stats[("secrets", m.get("lang"))] += len(m.get("secrets", []))
        lang_stats[("decoys", m.get("lang"))] += len(m.get("keep", []))

    for e in errors:
        print("ERROR:", e)
    print(f"snippets: {stats['snippets']} (fr {lang_stats[('snippet','fr')]}, en {lang_stats[('snippet','en')]}; "
          f"{stats['subject snippets']} subjects, {stats['snippets without secret']} without secret)")
    print(f"messages: {stats['messages']} (fr {lang_stats[('message','fr')]}, en {lang_stats[('message','en')]})")
    print(f"secrets: {stats['secrets']} (fr {lang_stats[('secrets','fr')]}, en {lang_stats[('secrets','en')]})")
    print(f"decoys (keep): {stats['decoys']} (fr {lang_stats[('decoys','fr')]}, en {lang_stats[('decoys','en')]})")
    print("FAIL" if errors else "OK")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
