"""Peak Python allocations of the secret scan on messages just under the scan cap.

For each message shape (plain-text log as 8bit, quoted-printable and base64; an HTML
table; a 9 MB binary attachment; a text attachment; the log in four parts, 8bit,
quoted-printable, base64 and HTML), with and without a secret near the end, prints
the tracemalloc peak of ``redact_message(raw, SecretScanner())`` and of
``Engine.process_raw`` (example config, a watched recipient, no store, offline DNS)
divided by the message size: the bytes allocated while the message itself is already
held.  Also the median time of ``redact_message`` on ordinary 5-10 KB messages.

    .venv/bin/python tests/bench/memory.py [--size MiB] [--only SHAPE] [--no-engine]

Allocations only (tracemalloc), not RSS: what the code costs, not what the allocator
keeps.  ``tests/test_redact_memory.py`` holds bounds (a window-dominated 6 MB log, a
log full of findings) so a regression fails.  The logs' session ids are taken for
tokens: every line holds a finding, the rewrite's worst case.
"""

from __future__ import annotations

import argparse
import binascii
import gc
import logging
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "milter"), str(ROOT / "tests")]

from helpdesk_milter.redact import redact_message  # noqa: E402
from helpdesk_milter.secrets import SecretScanner  # noqa: E402

SECRET_LINE = "Pour info le mot de passe admin est : Xk7#pQ2vLm9z ; merci de le changer\n"
MIB = 1024 * 1024


def log_text(size: int, *, secret: bool, seed: int = 1, accent: bool = False) -> str:
    """A server log of about ``size`` characters; the secret 2 KB before the end."""
    rng = random.Random(seed)
    verbs = ("GET", "POST", "PUT", "DELETE")
    paths = ("/api/v1/items", "/login", "/index.php", "/remote.php/dav/files/compta",
             "/apps/files/", "/ocs/v2.php/apps/notifications")
    users = ("jdupont", "compta", "mairie", "accueil", "secretariat")
    lines: list[str] = []
    total = 0
    while total < size:
        line = (f"2024-05-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
                f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z "
                f"{rng.choice(('INFO', 'WARN', 'DEBUG'))} [worker-{rng.randint(1, 8)}] "
                f"{rng.choice(verbs)} {rng.choice(paths)}?id={rng.randint(1, 99999)} "
                f"{rng.choice((200, 200, 200, 302, 404, 500))} {rng.randint(1, 900)}ms "
                f"user={rng.choice(users)} session={rng.getrandbits(64):016x}"
                f"{' réponse lente' if accent and rng.random() < 0.1 else ''}\n")
        lines.append(line)
        total += len(line)
    if secret:
        # about 2 KB before the end
        lines.insert(len(lines) - 20, SECRET_LINE)
    return "".join(lines)


def _headers(ctype: str, extra: str = "") -> bytes:
    return (f"From: Jean Dupont <jean.dupont@mairie-exemple.fr>\r\n"
            f"To: contact@example.org\r\n"
            f"Subject: Logs du serveur\r\n"
            f"Message-ID: <bench-{random.getrandbits(32):08x}@mairie-exemple.fr>\r\n"
            f"Date: Wed, 01 May 2024 12:00:00 +0200\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: {ctype}\r\n{extra}\r\n").encode()


def _crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def _b64(data: bytes) -> bytes:
    return b"".join(binascii.b2a_base64(data[i:i + 57]).replace(b"\n", b"\r\n")
                    for i in range(0, len(data), 57))


def _qp(text: str) -> bytes:
    return binascii.b2a_qp(text.encode("utf-8")).replace(b"\n", b"\r\n")


def shape_plain_8bit(size: int, secret: bool) -> bytes:
    body = _crlf(log_text(size - 400, secret=secret, accent=True)).encode("utf-8")
    return _headers("text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit\r\n") + body


def shape_plain_qp(size: int, secret: bool) -> bytes:
    text = log_text(int(size / 1.08) - 400, secret=secret, accent=True)
    return _headers("text/plain; charset=utf-8",
                    "Content-Transfer-Encoding: quoted-printable\r\n") + _qp(text)


def shape_plain_b64(size: int, secret: bool) -> bytes:
    text = _crlf(log_text(int(size * 3 / 4.1) - 400, secret=secret, accent=True))
    return _headers("text/plain; charset=utf-8",
                    "Content-Transfer-Encoding: base64\r\n") + _b64(text.encode("utf-8"))


def shape_html(size: int, secret: bool) -> bytes:
    rows = []
    total = 0
    rng = random.Random(2)
    while total < size - 600:
        row = (f"<tr><td>2024-05-{rng.randint(1, 28):02d}</td><td>worker-{rng.randint(1, 8)}"
               f"</td><td>GET /api/v1/items?id={rng.randint(1, 99999)}</td><td>"
               f"{rng.randint(1, 900)} ms</td><td>user&nbsp;compta</td></tr>\r\n")
        rows.append(row)
        total += len(row)
    if secret:
        rows.insert(len(rows) - 20, "<tr><td colspan=5><p>" + SECRET_LINE.strip()
                    + "</p></td></tr>\r\n")
    markup = ("<html><body><p>Bonjour, voici les logs&nbsp;:</p>\r\n<table>\r\n"
              + "".join(rows) + "</table></body></html>\r\n")
    return _headers("text/html; charset=utf-8",
                    "Content-Transfer-Encoding: 8bit\r\n") + markup.encode("utf-8")


def _multipart(parts: list[bytes]) -> bytes:
    boundary = "=_bench_boundary_4242"
    out = [_headers(f'multipart/mixed; boundary="{boundary}"')]
    out.append(b"This is a multi-part message in MIME format.\r\n")
    for part in parts:
        out.append(f"--{boundary}\r\n".encode() + part + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


_INTRO = (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
          b"\r\nBonjour,\r\n\r\nci-joint le fichier.\r\n\r\nJean\r\n")


def shape_binary_attachment(size: int, secret: bool) -> bytes:
    data = random.Random(3).randbytes(int((size - 2000) * 57 / 78))
    intro = _INTRO
    if secret:
        intro += SECRET_LINE.replace("\n", "\r\n").encode()
    att = (b"Content-Type: application/octet-stream; name=\"dump.bin\"\r\n"
           b"Content-Disposition: attachment; filename=\"dump.bin\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(data))
    return _multipart([intro, att])


def shape_text_attachment(size: int, secret: bool) -> bytes:
    text = _crlf(log_text(size - 2000, secret=secret, accent=True)).encode("utf-8")
    att = (b"Content-Type: text/plain; charset=utf-8; name=\"server.log\"\r\n"
           b"Content-Disposition: attachment; filename=\"server.log\"\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text)
    return _multipart([_INTRO, att])


def _body_of(message: bytes) -> bytes:
    return message.split(b"\r\n\r\n", 1)[1]


def shape_several_parts(size: int, secret: bool) -> bytes:
    """A log in four text parts of a quarter each: 8bit, quoted-printable, base64, and
    an HTML table."""
    quarter = size // 4
    parts = []
    for build, ctype, cte in (
            (shape_plain_8bit, "text/plain", "8bit"),
            (shape_plain_qp, "text/plain", "quoted-printable"),
            (shape_plain_b64, "text/plain", "base64"),
            (shape_html, "text/html", "8bit")):
        parts.append(f"Content-Type: {ctype}; charset=utf-8\r\n"
                     f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode()
                     + _body_of(build(quarter, secret and cte == "base64")))
    return _multipart(parts)


SHAPES: dict[str, Callable[[int, bool], bytes]] = {
    "plain-8bit": shape_plain_8bit,
    "plain-qp": shape_plain_qp,
    "plain-base64": shape_plain_b64,
    "html-8bit": shape_html,
    "binary-attach": shape_binary_attachment,
    "text-attach": shape_text_attachment,
    "several-parts": shape_several_parts,
}


def peak_ratio(raw: bytes, run: Callable[[bytes], object]) -> tuple[float, float]:
    """(tracemalloc peak / len(raw), seconds) of ``run(raw)``; its result is kept to the
    end, as a caller keeps it."""
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    result = run(raw)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return peak / len(raw), elapsed


def make_engine_run() -> Callable[[bytes], object]:
    from helpdesk_milter.config import load_config
    from helpdesk_milter.engine import Engine
    from helpdesk_milter.message import Envelope

    config = load_config(ROOT / "config" / "helpdesk-milter.toml")
    engine = Engine(config, store=None, dnsfunc=lambda *a, **k: None)
    env = Envelope(mail_from="jean.dupont@mairie-exemple.fr", rcpts=("contact@example.org",),
                   queue_id="BENCH")
    logging.disable(logging.CRITICAL)
    return lambda raw: engine.process_raw(env, raw, size=len(raw))


def small_messages() -> list[bytes]:
    """Ordinary 5-10 KB messages: the project's own corpus, else generated ones."""
    corpus = sorted((ROOT / "tests" / "corpus" / "messages").glob("*.eml"))
    msgs = [p.read_bytes() for p in corpus]
    msgs = [m for m in msgs if 5_000 <= len(m) <= 10_000] or msgs
    if len(msgs) < 20:
        msgs += [shape_plain_8bit(size, i % 2 == 0) for i, size in
                 enumerate(range(5_000, 10_001, 250))]
    return msgs


def small_cost(rounds: int = 7) -> tuple[int, float]:
    scanner = SecretScanner()
    msgs = small_messages()
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for m in msgs:
            redact_message(m, scanner)
        per_round.append((time.perf_counter() - t0) / len(msgs))
    return len(msgs), statistics.median(per_round)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=float, default=9.5, help="message size in MiB")
    ap.add_argument("--only", action="append", choices=sorted(SHAPES))
    ap.add_argument("--no-engine", action="store_true")
    args = ap.parse_args()
    size = int(args.size * MIB)
    scanner = SecretScanner()
    engine_run = None if args.no_engine else make_engine_run()
    print(f"{'shape':<15} {'planted':<7} {'size MiB':>8} {'found':>5} "
          f"{'redact peak':>11} {'s':>5} {'engine peak':>11} {'s':>5}")
    for name, build in SHAPES.items():
        if args.only and name not in args.only:
            continue
        for secret in (False, True):
            raw = build(size, secret)
            found = redact_message(raw, scanner).count
            ratio, secs = peak_ratio(raw, lambda r: redact_message(r, scanner))
            line = (f"{name:<15} {'yes' if secret else 'no':<7} {len(raw) / MIB:>8.2f} "
                    f"{found:>5} {ratio:>10.2f}x {secs:>5.2f}")
            if engine_run is not None:
                eratio, esecs = peak_ratio(raw, engine_run)
                line += f" {eratio:>10.2f}x {esecs:>5.2f}"
            print(line, flush=True)
    n, median = small_cost()
    print(f"\nredact_message on {n} ordinary messages (5-10 KB): "
          f"median of per-message means {median * 1e6:.0f} µs")


if __name__ == "__main__":
    main()
