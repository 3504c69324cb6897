#!/usr/bin/env python3
"""Why an action scored what it did in `risk evaluate`: the decisions of a trace's actions on some resource, with
their reasons, from the same replay.

    python examples/action_scores.py data/agentdojo/slack slack.channel_member/general/   # about 5 seconds

It replays DATA/test.jsonl after DATA/train.jsonl as `risk evaluate` does under its default policy (PAUSE at
0.5, a forest fitted on the train file; `risk.evaluate.replay`), keeps the audit trail, and prints each test
decision whose resource contains the given text: session, label, outcome, risk score and reasons with weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from risk.audit.store import open_audit, records
from risk.evaluate import replay
from risk.traces import read_trace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("data", type=Path, help="a folder with train.jsonl and test.jsonl")
    parser.add_argument("resource", help="text the resources shown contain")
    args = parser.parse_args(argv)
    test, train = list(read_trace(args.data / "test.jsonl")), list(read_trace(args.data / "train.jsonl"))
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/audit.db"
        replay(test, train, audit=url)
        labels = {(a.session_id, a.resource): a.label for a in test}
        store = open_audit(url, create=False)
        try:
            for r in records(store):
                if (
                    r.kind != "decision"
                    or (r.session_id, r.resource) not in labels
                    or args.resource not in (r.resource or "")
                ):
                    continue
                why = ", ".join(f"{x['code']} {x.get('weight', 0):.2f}" for x in r.reasons)
                print(f"{r.session_id} label {labels[r.session_id, r.resource]} {r.resource}: {r.outcome} at "
                      f"{r.risk_score:.3f} ({why})")  # fmt: skip
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
