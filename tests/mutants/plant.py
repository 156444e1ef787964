"""Plant the 17 bugs of issue 16 one at a time and check that deterministic tests catch each.

Each plant is a small source patch (file under ``src/sophia_memory``, the exact text it
replaces, the text it puts there) and the tests that must fail with it. For every plant the
script copies ``src/`` to a temporary directory, applies the patch there (the working tree is
never touched), runs the tests with ``PYTHONPATH`` pointing at the copy, and prints caught or
missed. First it runs the same tests on an unpatched copy: they must pass, or no verdict
means anything.

    .venv/bin/python tests/mutants/plant.py            # every plant
    .venv/bin/python tests/mutants/plant.py 4 13b      # some of them
    .venv/bin/python tests/mutants/plant.py --list     # what each plant changes

Exit status: 0 when every plant applied and was caught, 1 otherwise. A plant whose text is no
longer in the source says so ("does not apply"): update its snippet with the code.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
T = "tests/test_planted_behaviours.py::"


@dataclass(frozen=True)
class Plant:
    ident: str
    what: str
    #: (file under src/sophia_memory, exact old text, new text)
    hunks: tuple[tuple[str, str, str], ...]
    #: Test node ids that must fail with the plant (at least one does: caught).
    tests: tuple[str, ...]


PLANTS = [
    Plant("1", "promotion installs without its generation check", (
        ("engine/promotion.py",
         "            if order.gens[stripe] != gen0:\n"
         "                return  # a write to this stripe happened since the read: the value"
         " may be old\n",
         ""),),
        (T + "test_promotion_of_a_read_is_not_installed_after_a_delete_ran_meanwhile",
         T + "test_promotion_is_skipped_when_a_put_lands_between_read_and_install")),
    Plant("2", "promotion reads the write generation after the tier read, not before", (
        ("engine/chain.py",
         "                self.promoter.schedule(key, value, rec, tier, gen0)\n",
         "                self.promoter.schedule(key, value, rec, tier,"
         " self.order.gens[hash(key) & MASK])\n"),),
        (T + "test_promotion_of_a_read_is_not_installed_after_a_delete_ran_meanwhile",)),
    Plant("3", "evicted home items are dropped instead of spilled", (
        ("engine/spill.py",
         "        if not rec.home or rec.expired(self.now()):\n            return\n",
         "        return\n"),),
        (T + "test_an_evicted_home_item_spills_to_the_next_tier",)),
    Plant("4", "a spill-buffer entry is removed before the slower tier has the item", (
        ("engine/spill.py",
         "                records[key] = Record(payload, rec.expires_at, True, len(payload),"
         " rec.version,\n"
         "                                      rec.created_at, rec.extra)\n",
         "                records[key] = Record(payload, rec.expires_at, True, len(payload),"
         " rec.version,\n"
         "                                      rec.created_at, rec.extra)\n"
         "                self.take(key)\n"),),
        (T + "test_an_item_whose_spill_failed_is_kept_for_the_next_tier",)),
    Plant("5", "a spilled copy loses its expiry", (
        ("engine/spill.py",
         "                records[key] = Record(payload, rec.expires_at, True, len(payload),",
         "                records[key] = Record(payload, None, True, len(payload),"),),
        (T + "test_a_spilled_copy_keeps_its_expiry",)),
    Plant("6", "lookups ignore the spill buffer", (
        ("engine/chain.py",
         "        pending = self.spiller.pending(key, now) if self.spiller.buffer else None\n",
         "        pending = None\n"),
        ("engine/chain.py",
         "        if remaining and self.spiller.buffer:\n",
         "        if False:\n")),
        (T + "test_an_item_in_transit_stays_readable_until_the_slower_tier_has_it",)),
    Plant("7", "expiry at the boundary: < instead of <=", (
        ("tiers.py",
         "return self.expires_at is not None and self.expires_at <= now",
         "return self.expires_at is not None and self.expires_at < now"),),
        (T + "test_an_item_expires_exactly_at_its_expiry",)),
    Plant("8", "get_many skips expiry", (
        ("engine/chain.py",
         "                exp = rec.expires_at\n"
         "                if exp is not None and exp <= now:\n"
         "                    near.discard(k, rec)\n"
         "                    rest.append(k)\n"
         "                    continue\n",
         ""),
        ("engine/chain.py",
         "                        if exp is not None and exp <= now:\n"
         "                            continue\n",
         "")),
        (T + "test_get_many_skips_expired_items_in_every_tier",)),
    Plant("9", "signed pickle unpickles before the signature check", (
        ("codecs.py",
         "        if len(mac) != self._MAC_LEN or not hmac.compare_digest(mac,"
         " self._mac(body)):\n"
         "            raise SignatureError(\"signed pickle payload failed its signature"
         " check\")\n"
         "        return pickle.loads(body)\n",
         "        value = pickle.loads(body)\n"
         "        if len(mac) != self._MAC_LEN or not hmac.compare_digest(mac,"
         " self._mac(body)):\n"
         "            raise SignatureError(\"signed pickle payload failed its signature"
         " check\")\n"
         "        return value\n"),),
        (T + "test_signed_pickle_checks_the_signature_before_it_unpickles",)),
    Plant("10", "signed pickle signs only part of the payload", (
        ("codecs.py",
         "        return hmac.new(self._key, body, hashlib.sha256).digest()",
         "        return hmac.new(self._key, body[:64], hashlib.sha256).digest()"),),
        (T + "test_signed_pickle_signs_every_byte_of_the_body",)),
    Plant("11", "Snowflake identifier check unanchored at the end", (
        ("backends/sql/snowflake.py",
         "    if not isinstance(name, str) or not _IDENT.fullmatch(name):",
         "    if not isinstance(name, str) or not _IDENT.match(name):"),),
        (T + "test_snowflake_backend_built_directly_refuses_a_bad_table_name",
         "tests/test_identifiers.py::test_snowflake_refuses")),
    Plant("12", "SQLite identifier check unanchored at the end", (
        ("backends/sql/sqlite.py",
         "    if not isinstance(name, str) or not _IDENT.fullmatch(name):",
         "    if not isinstance(name, str) or not _IDENT.match(name):"),),
        (T + "test_sqlite_backend_built_directly_refuses_a_bad_table_name",
         "tests/test_identifiers.py::test_sqlite_refuses")),
    Plant("13", "identifier check skipped by a Snowflake backend built directly", (
        ("backends/sql/snowflake.py",
         "        self.table = check_identifier(table, \"table name\")\n",
         "        self.table = table.upper()\n"),),
        (T + "test_snowflake_backend_built_directly_refuses_a_bad_table_name",)),
    Plant("13b", "identifier check skipped by a SQLite backend built directly", (
        ("backends/sql/sqlite.py",
         "        self.table = check_identifier(table)\n",
         "        self.table = table\n"),),
        (T + "test_sqlite_backend_built_directly_refuses_a_bad_table_name",)),
    Plant("14", "an invalidation keeps the in-process copies", (
        ("engine/core.py",
         "        for k in keys:\n            for t in local:\n                t.pop_copy(k)\n",
         ""),),
        (T + "test_a_write_elsewhere_drops_the_promoted_copy",)),
    Plant("15", "an invalidation does not advance the generations", (
        ("engine/core.py",
         "        self.order.moved(keys)\n",
         ""),),
        (T + "test_a_write_elsewhere_during_a_read_stops_its_promotion",)),
    Plant("16", "a multi-key invalidation report delivers only its first key", (
        ("backends/redis/_tracker.py",
         "            self.listener(keys)\n",
         "            self.listener(keys[:1])\n"),),
        (T + "test_a_report_of_several_keys_delivers_every_key_of_the_prefix",)),
    Plant("17", "the loss of the tracking link is not reported", (
        ("backends/redis/_tracker.py",
         "                    self.listener(None)  # whatever changed meanwhile is unknown\n",
         ""),),
        (T + "test_losing_the_link_is_reported_before_it_is_reopened",)),
]


def copy_src(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest / "src"


def apply(plant: Plant, src: Path) -> str | None:
    """Patch the copy at ``src``; None, or why the plant does not apply."""
    for rel, old, new in plant.hunks:
        path = src / "sophia_memory" / rel
        text = path.read_text()
        count = text.count(old)
        if count != 1:
            return f"{rel}: the text to replace occurs {count} times"
        path.write_text(text.replace(old, new))
    return None


def run_tests(src: Path, tests: tuple[str, ...]) -> tuple[int, list[str], str]:
    """pytest over ``tests`` with ``src`` first on the path: (status, failed ids, output)."""
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:randomly",
           "-p", "no:cacheprovider", *tests]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    out = proc.stdout + proc.stderr
    failed = sorted({m.group(1) for m in re.finditer(r"^FAILED (\S+)", out, re.M)})
    return proc.returncode, failed, out


def base(node: str) -> str:
    return node.split("[", 1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plants", nargs="*", help="plant ids (default: all)")
    parser.add_argument("--src", type=Path, default=ROOT / "src",
                        help="the source tree to copy (default: the repository's src/)")
    parser.add_argument("--list", action="store_true", help="print the plants and exit")
    args = parser.parse_args()
    chosen = [p for p in PLANTS if not args.plants or p.ident in args.plants]
    if args.list:
        for p in chosen:
            print(f"{p.ident:>4}  {p.what}")
            for rel, old, new in p.hunks:
                print(f"      {rel}: {old.strip()[:70]!r} -> {new.strip()[:70]!r}")
        return 0
    every_test = tuple(dict.fromkeys(base(t) for p in chosen for t in p.tests))
    with tempfile.TemporaryDirectory(prefix="plant-") as tmp:
        clean = copy_src(args.src, Path(tmp) / "clean")
        status, failed, out = run_tests(clean, every_test)
        if status != 0:
            print(out[-3000:])
            print("the tests fail without any plant: fix that first")
            return 1
        print(f"baseline: {len(every_test)} test functions pass unplanted\n")
        results = []
        for plant in chosen:
            t0 = time.perf_counter()
            src = copy_src(args.src, Path(tmp) / f"plant-{plant.ident}")
            why = apply(plant, src)
            if why is not None:
                verdict, killers = f"DOES NOT APPLY ({why})", []
            else:
                status, failed, out = run_tests(src, tuple(base(t) for t in plant.tests))
                killers = [f for f in failed if base(f) in {base(t) for t in plant.tests}]
                if status == 1 and killers:
                    verdict = "caught"
                elif status == 0:
                    verdict = "MISSED"
                else:
                    verdict = f"ERROR (pytest exit {status})"
                    print(out[-2000:])
            results.append(verdict == "caught")
            print(f"plant {plant.ident:>3}: {verdict:8} {plant.what}  "
                  f"({time.perf_counter() - t0:.1f} s)")
            for name in dict.fromkeys(base(k) for k in killers):
                n = sum(base(k) == name for k in killers)
                print(f"           killed by {name}" + (f" ({n} cases)" if n > 1 else ""))
    caught = sum(results)
    print(f"\n{caught} of {len(results)} plants caught")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
