"""How the payload scans grow with the payload: every per-action scan (payload rules, destinations, masking) on
texts built to make a backtracking regex rescan, at one size and at four times that size, against the plain
patterns the rules were first written with, measured in the same run.

A scan linear in the text takes about 4x as long on 4x the text; a quadratic one about 16x. A payload may be
up to 1 MiB in the service, so a quadratic scan there costs minutes of one worker's time per action.

Usage: python bench/bench_scan.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from typing import Any

from risk.actions import ActionType
from risk.features import destinations
from risk.redaction import mask_text
from risk.resources import sql_tables
from risk.scoring.rules import payload_signals

# What the email and download-to-shell rules were before they were written not to rescan.
PLAIN_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PLAIN_DOWNLOAD_TO_SHELL = re.compile(r"(?:curl|wget)[^|]*\|\s*(?:ba|z)?sh\b")

# (name, the text repeated, what follows it once): a long run of address characters, a long tail after a "curl",
# a secret named again and again with no value, a run of "www." with no host, a list of tables after a
# FROM that goes on and on, SQL quotes and comments opened and never closed, and Unicode-escaped names each
# followed by a comment but no UESCAPE, E'...' literals full of backslashes, and infrastructure commands that
# never reach what would make them destructive.
TEXTS = [
    ("token then @", "a", "@"),
    ("dotted run", "a.", "@"),
    ("many curls", "curl ", ""),
    ("secret words", "the password is ", "x"),
    ("www. run", "www.", "com"),
    ("SQL list", "from a, ", ""),
    ("SQL openings", "/*'\"[", ""),
    ('U&"x" run', 'U&"x" /* a */ ', ""),
    ("E' backslashes", "E'\\", ""),
    ("kubectl deletes", "kubectl delete pod x ", ""),
    ("kubectl flags", "kubectl -n x ", ""),
    ("terraform applies", "terraform apply -x ", ""),
    ("aws s3 rms", "aws s3 rm s3://b ", ""),
    ("gsutil flags", "gsutil rm -m ", ""),
    ("gsutil -gsutil", "gsutil -gsutil -gsutil -gsutil ", ""),
    ("kubectl -l flags", "kubectl delete -l x -l x ", ""),
    ("aws s3 buckets", "aws s3 rm s3://data-s3 ", ""),
]

SCANS: dict[str, Callable[[str], object]] = {
    "payload rules": lambda text: payload_signals({"body": text}, ActionType.API_CALL),
    "destinations": lambda text: destinations("svc.send", {"body": text}),
    "masking": mask_text,
    "SQL tables": lambda text: (sql_tables.cache_clear(), sql_tables(text)),
    "plain email pattern (baseline)": PLAIN_EMAIL.search,
    "plain download-to-shell pattern (baseline)": PLAIN_DOWNLOAD_TO_SHELL.search,
}


def seconds(scan: Callable[[str], object], text: str) -> float:
    start = time.perf_counter()
    scan(text)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2,500 and 10,000 characters instead of 10,000 and 40,000")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    small = 2_500 if args.quick else 10_000
    results: list[dict[str, Any]] = []
    for text_name, unit, tail in TEXTS:
        texts = [unit * (n // len(unit)) + tail for n in (small, 4 * small)]
        for scan_name, scan in SCANS.items():
            best = [min(seconds(scan, text) for _ in range(3)) for text in texts]
            results.append({"text": text_name, "scan": scan_name, "small_ms": best[0] * 1e3, "large_ms": best[1] * 1e3,
                            "growth": best[1] / max(best[0], 1e-9)})  # fmt: skip
    if args.json:
        print(json.dumps({"characters": [small, 4 * small], "results": results}))
        return
    print(f"each scan on {small:,} and {4 * small:,} characters (best of 3); linear grows ~4x, quadratic ~16x")
    print(f"{'text':14s} {'scan':44s} {'small ms':>9s} {'large ms':>9s} {'growth':>7s}")
    for r in results:
        print(f"{r['text']:14s} {r['scan']:44s} {r['small_ms']:9.2f} {r['large_ms']:9.2f} {r['growth']:6.1f}x")
    worst = max(r["growth"] for r in results if "baseline" not in r["scan"])
    print(f"largest growth of the product's scans: {worst:.1f}x for 4x the text")


if __name__ == "__main__":
    main()
