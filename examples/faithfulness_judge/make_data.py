"""Build the faithfulness judge's data from BIG-bench 1.0.0 (never committed: canary string).

    .venv/bin/python examples/faithfulness_judge/make_data.py [--train 2000] [--eval 200]

Downloads the ``bigbench==1.0.0`` sdist with ``pip download --no-deps`` (never installs it) into
``$SLMFLOW_HOME/cache/bigbench`` once, reads from the tarball without unpacking it:

* ``vitaminc_fact_verification/task.json``: 54,668 (Wikipedia passage, claim) pairs labelled
  True / False / Neither by people (VitaminC, Schuster et al. 2021; the text comes from
  Wikipedia, CC BY-SA 3.0; BIG-bench is Apache-2.0). True -> ``faithful``; False and Neither
  (the passage contradicts the claim, or does not say it) -> ``unfaithful``. The split is by
  Wikipedia page (the text before the first ``:``), hashed, so the contrastive pairs VitaminC
  builds from one page never straddle train and held-out.
* ``factuality_of_summary/{xsum,cnn_dm}.json``: a news article and candidate summaries, one
  faithful (``lbl``), the others not: the *other source* for the held-out figure (each article
  gives one faithful and one unfaithful pair).

Writes under ``examples/faithfulness_judge/data/`` (git-ignored):

* ``train.jsonl``, ``eval.jsonl``: `slmflow train agent` rows
  ``{"input": {"context", "answer"}, "target": {"verdict"}}``, balanced;
* ``heldout_vitaminc.jsonl``, ``summaries.jsonl``: `slmflow eval calibrate faithfulness` rows
  ``{"id", "context", "output", "label"}``, balanced.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSION = "1.0.0"


def sdist() -> Path:
    cache = Path(os.environ.get("SLMFLOW_HOME") or ".slmflow") / "cache" / "bigbench"
    hit = sorted(cache.glob(f"bigbench-{VERSION}.tar.gz"))
    if hit:
        return hit[0]
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"bigbench=={VERSION}", "-d", str(cache)], check=True)
    return next(cache.glob(f"bigbench-{VERSION}.tar.gz"))


def member(tar: tarfile.TarFile, suffix: str) -> bytes:
    for m in tar:
        if m.name.endswith(suffix):
            f = tar.extractfile(m)
            assert f is not None
            return f.read()
    raise SystemExit(f"{suffix} not found in the bigbench sdist")


def vitaminc(raw: bytes) -> list[dict]:
    rows = []
    for ex in json.loads(raw)["examples"]:
        passage, _, claim = ex["input"].rpartition("\nClaim: ")
        gold = max(ex["target_scores"], key=ex["target_scores"].get)
        page = passage.split(":", 1)[0].strip()
        rows.append({"context": passage.strip(), "answer": claim.strip(), "page": page,
                     "label": "faithful" if gold == "True" else "unfaithful", "gold": gold})
    return rows


def summaries(raw: bytes, name: str, rnd: random.Random) -> list[dict]:
    out = []
    lines = [ln for ln in raw.decode("utf-8").splitlines() if ln.strip() and
             not ln.startswith("#")]
    for i, ln in enumerate(lines):
        d = json.loads(ln)
        cands, lbl = d["list_candidates"], d["lbl"]
        wrong = [c for j, c in enumerate(cands) if j != lbl]
        if not wrong:
            continue
        out.append({"id": f"{name}-{i}-f", "context": d["source"], "output": cands[lbl],
                    "label": "faithful"})
        out.append({"id": f"{name}-{i}-u", "context": d["source"], "output": rnd.choice(wrong),
                    "label": "unfaithful"})
    return out


def balanced(rows: list[dict], n: int, rnd: random.Random) -> list[dict]:
    f = [r for r in rows if r["label"] == "faithful"]
    u = [r for r in rows if r["label"] == "unfaithful"]
    rnd.shuffle(f)
    rnd.shuffle(u)
    out = f[:n // 2] + u[:n // 2]
    rnd.shuffle(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--eval", type=int, default=200, help="gate set (train pages)")
    ap.add_argument("--heldout", type=int, default=400, help="held-out pages")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    with tarfile.open(sdist(), "r:gz") as tar:
        vc = vitaminc(member(tar, "vitaminc_fact_verification/task.json"))
    with tarfile.open(sdist(), "r:gz") as tar:
        xs = member(tar, "factuality_of_summary/xsum.json")
    with tarfile.open(sdist(), "r:gz") as tar:
        cd = member(tar, "factuality_of_summary/cnn_dm.json")
    held = lambda r: int(hashlib.sha256(r["page"].encode()).hexdigest(), 16) % 10 == 0  # noqa
    train_pool = [r for r in vc if not held(r)]
    test_pool = [r for r in vc if held(r)]
    tr = balanced(train_pool, a.train + a.eval, rnd)
    out = HERE / "data"
    out.mkdir(exist_ok=True)

    def agent_rows(rows):
        return "".join(json.dumps({"input": {"context": r["context"], "answer": r["answer"]},
                                   "target": {"verdict": r["label"]}}) + "\n" for r in rows)

    (out / "train.jsonl").write_text(agent_rows(tr[:a.train]))
    (out / "eval.jsonl").write_text(agent_rows(tr[a.train:]))
    ho = balanced(test_pool, a.heldout, rnd)
    (out / "heldout_vitaminc.jsonl").write_text("".join(json.dumps(
        {"id": f"vc-{i}", "context": r["context"], "output": r["answer"], "label": r["label"]})
        + "\n" for i, r in enumerate(ho)))
    sm = summaries(xs, "xsum", rnd) + summaries(cd, "cnn_dm", rnd)
    (out / "summaries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sm))
    print(f"VitaminC: {len(vc)} pairs, {len(train_pool)} on train pages, {len(test_pool)} "
          f"held out; wrote train {a.train}, eval {a.eval}, heldout {len(ho)}; summaries "
          f"{len(sm)} -> {out}")


if __name__ == "__main__":
    main()
