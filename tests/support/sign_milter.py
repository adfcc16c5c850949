#!/usr/bin/env python3
"""A minimal DKIM-signing milter (dkimpy): what OpenDKIM in signing mode does, in small.

It signs every message it sees, as it sees it, and adds the ``DKIM-Signature`` on top.
Listed after or before helpdesk-milter in ``smtpd_milters`` it shows what the README's
milter-order advice says: a signature made before a body rewrite no longer verifies.

    python sign_milter.py --socket unix:/path --key KEY.pem --domain D --selector S

Signs From, To, Subject, Date and Message-ID, relaxed/relaxed (as OpenDKIM's
defaults do), one log line per message on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys

import dkim
import Milter

SIGNED = [b"from", b"to", b"subject", b"date", b"message-id"]


class SignMilter(Milter.Base):
    key = b""
    domain = b""
    selector = b""

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []

    def envfrom(self, mailfrom: str, *esmtp: str) -> int:
        self.headers, self.chunks = [], []
        return Milter.CONTINUE

    def data(self) -> int:
        return Milter.CONTINUE

    def header(self, name: str, value: str) -> int:
        self.headers.append((name, value))
        return Milter.CONTINUE

    def body(self, chunk: bytes) -> int:
        self.chunks.append(chunk)
        return Milter.CONTINUE

    def eom(self) -> int:
        head = "".join(f"{n}: {v}\r\n" for n, v in self.headers).encode("utf-8",
                                                                       "surrogateescape")
        raw = head + b"\r\n" + b"".join(self.chunks)
        signature = dkim.sign(raw, self.selector, self.domain, self.key,
                              canonicalize=(b"relaxed", b"relaxed"), include_headers=SIGNED)
        name, _, value = signature.decode("ascii").partition(":")
        # Unfolded: whitespace inside the tags is ignored, and relaxed canonicalization
        # of the signature header turns the folding into the same single space.
        self.addheader(name, " ".join(value.split()), 0)
        print(f"sign-milter: qid={self.getsymval('i') or '-'} signed "
              f"d={self.domain.decode()} s={self.selector.decode()} body={len(raw)}",
              file=sys.stderr, flush=True)
        return Milter.ACCEPT

    def abort(self) -> int:
        self.headers, self.chunks = [], []
        return Milter.CONTINUE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", required=True, help="unix:/path")
    ap.add_argument("--key", required=True, help="PEM private key")
    ap.add_argument("--domain", required=True)
    ap.add_argument("--selector", required=True)
    args = ap.parse_args(argv)
    with open(args.key, "rb") as f:
        SignMilter.key = f.read()
    SignMilter.domain = args.domain.encode()
    SignMilter.selector = args.selector.encode()
    os.umask(0o007)          # socket 0770 in the lab's setgid-postfix directory
    Milter.factory = SignMilter
    print(f"sign-milter: listening on {args.socket}", file=sys.stderr, flush=True)
    Milter.runmilter("sign-milter", args.socket, 60)
    print("sign-milter: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
