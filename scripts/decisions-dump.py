#!/usr/bin/env python3
"""Dump every decision the engine takes over the bench mix and the tuning corpora.

    .venv/bin/python scripts/decisions-dump.py OUT.txt [--mix N]

For a change that must not change behaviour (a speed-up): run it before and after,
then ``diff`` the two files.  Each set (the bench mix, ``generate(N)``; the project's
corpus; every ``tests/blind/requests-tune-*`` and ``dedup-tune-*`` batch, never a
held-out one) goes through a fresh engine on a fresh SQLite file with a fixed clock;
one line per message (verdict, score, rules, action, headers, duplicate, recipients),
then every row the state database kept (decisions, fingerprints and keys tables, sorted),
so that stored keys keep their exact form.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "milter"), str(ROOT / "tests")]

from bench.mix import generate  # noqa: E402
from helpdesk_milter.config import parse_config  # noqa: E402
from helpdesk_milter.dedup import FINGERPRINTS, KEYS  # noqa: E402
from helpdesk_milter.engine import Engine  # noqa: E402
from helpdesk_milter.message import Envelope  # noqa: E402
from helpdesk_milter.store import SQLiteStore, open_database  # noqa: E402
from support.milterproc import dump_toml  # noqa: E402
from support.world import example_sections  # noqa: E402

Item = tuple[str, str, tuple[str, ...], bytes, float]   # name, from, rcpts, raw, minutes


def mix_items(n: int) -> Iterator[Item]:
    for m in generate(n, seed=1):
        yield f"mix-{m.index:05d}", m.mail_from, tuple(m.rcpts), m.raw, 0.0


def folder_items(folder: Path) -> Iterator[Item]:
    manifest = tomllib.loads((folder / "manifest.toml").read_text())
    for entry in manifest["message"]:
        raw = (folder / "messages" / entry["file"]).read_bytes()
        yield (entry["file"], entry["mail_from"], tuple(entry["rcpts"]), raw,
               float(entry.get("minutes", 0)))


def run_set(name: str, items: Iterable[Item], workdir: Path) -> list[str]:
    path = workdir / f"{name}.db"
    data = example_sections()
    data["milter"]["database"] = str(path)
    now = [1_800_000_000.0]
    clock = lambda: now[0]   # noqa: E731  one time per message: the same in every run
    store = SQLiteStore(path, clock=clock)
    engine = Engine(parse_config(dump_toml(data)), store=store, clock=clock,
                    dnsfunc=lambda *a, **k: None)
    lines = [f"## {name}"]
    try:
        for n, (label, mail_from, rcpts, raw, minutes) in enumerate(items):
            now[0] = 1_800_000_000.0 + 7 * n + 60 * minutes
            env = Envelope(mail_from=mail_from, rcpts=rcpts, queue_id=f"Q{n:05d}")
            d = engine.process_raw(env, raw).decision
            lines.append(" | ".join(str(x) for x in (
                label, d.verdict, f"{d.score!r}", ",".join(d.rules), d.action, d.skip_reason,
                d.group, d.assistance, d.ticket, ",".join(d.add_rcpts),
                ",".join(d.del_rcpts), d.duplicate, d.duplicate_of, d.strip_headers,
                d.add_headers, d.change_headers, d.hints, d.secrets, d.secret_kinds,
                len(d.new_body) if d.new_body is not None else None)))
    finally:
        store.close()
    db = open_database(path, readonly=True)
    for table in ("decisions", FINGERPRINTS, KEYS):
        if table not in db.table_names():
            continue
        rows = [repr(tuple(r)) for r in db.execute(f"SELECT * FROM [{table}]").fetchall()]
        lines.append(f"# {table}: {len(rows)} rows")
        lines.extend(sorted(rows))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--mix", type=int, default=2000, help="bench mix size (2000)")
    parser.add_argument("--recent", type=int, default=None,
                        help="SQLiteStore.RECENT_ROWS (rows on disk held in memory): a "
                             "small number makes lookups read the file")
    args = parser.parse_args()
    if args.recent is not None:
        SQLiteStore.RECENT_ROWS = args.recent
    blind = ROOT / "tests" / "blind"
    sets: list[tuple[str, Iterable[Item]]] = [("mix", mix_items(args.mix)),
                                              ("corpus", folder_items(ROOT / "tests/corpus"))]
    for folder in sorted(blind.glob("requests-tune-*")) + sorted(blind.glob("dedup-tune-*")):
        assert "heldout" not in folder.name
        sets.append((folder.name, folder_items(folder)))
    out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, items in sets:
            out.extend(run_set(name, items, Path(tmp)))
    args.out.write_text("\n".join(out) + "\n")
    print(f"{args.out}: {sum(1 for x in out if ' | ' in x)} decisions, {len(out)} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
