"""Improvement-loop benchmark: flagging throughput over a 1M-row call log, on SQLite and on a real
PostgreSQL server, side by side with the plain approach (read every row of the window into Python
and apply the same rules there).

The log is synthetic but shaped like production: 10 agents, confidence ~ Beta(5, 1.5) (about 3% of
calls under 0.5), 1% escalated (a third of those disagreeing with the fallback), 0.3% thumbs-down
feedback, rows spread over 7 days; the window flagged is the last 24 h (about 143k calls).

    .venv/bin/python bench/loop.py [--rows 1000000] [--backends sqlite,postgresql] [--json out]
        [--ray [--slices N] [--window-days 1]]

--ray also times the flag job (a dry run: the same selection, merge, priority and budget, no
writes) with its time slices as Ray tasks on a throwaway local 2-CPU cluster (`LocalCluster`,
loopback) against the single-process dry run on the same log, checks that both agree, and prints
the ratio. The Ray time includes connecting to the cluster and shutting the connection down, as
a `slmflow loop flag --ray` run pays them.

PostgreSQL is started by this script (initdb + pg_ctl on loopback, as the tests do); it is skipped
with a note when the server binaries are missing.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("SLMFLOW_TRACING", "off")
os.environ.setdefault("SLMFLOW_CALLLOG", "off")

from slmflow.loop import FlagRules, flag_calls  # noqa: E402
from slmflow.store import open_call_log  # noqa: E402
from slmflow.store.calllog import CallRecord, Feedback  # noqa: E402

DAY = 86400.0


def fill(log, rows: int, seed: int = 0) -> float:
    """Write `rows` synthetic agent calls (+ feedback); returns seconds taken."""
    rng = random.Random(seed)
    now = time.time()
    t0 = time.perf_counter()
    batch: list = []
    for i in range(rows):
        esc = rng.random() < 0.01
        meta = {"disagreed": rng.random() < 0.33} if esc else None
        rec = CallRecord(kind="agent", agent=f"agent{i % 10}", model="smollm2-135m",
                         input={"text": f"ticket {i}"}, output={"category": "refund"},
                         confidence=rng.betavariate(5, 1.5), escalated=esc, meta=meta,
                         latency_s=0.05, ts=now - rng.random() * 7 * DAY,
                         id=uuid.UUID(int=rng.getrandbits(128)).hex)
        batch.append(rec)
        if rng.random() < 0.003:
            batch.append(Feedback(call_id=rec.id, signal="down", by="user",
                                  ts=min(now, rec.ts + rng.random() * 3600)))
        if len(batch) >= 20_000:
            log.append(batch)
            batch = []
    if batch:
        log.append(batch)
    return time.perf_counter() - t0


def plain_flag(log, since: float, threshold: float = 0.5) -> int:
    """The plain approach: every call of the window into Python, the same rules applied there."""
    flagged = set()
    rows = log._all("SELECT id, confidence, escalated, status, meta FROM calls WHERE kind = "
                    "'agent' AND ts >= ?", (since,))
    for cid, conf, esc, status, meta in rows:
        m = json.loads(meta) if meta else {}
        if (conf is not None and conf < threshold) or esc or status == "error" or \
                m.get("disagreed"):
            flagged.add(cid)
    for (cid,) in log._all("SELECT call_id FROM feedback WHERE ts >= ? AND signal = 'down'",
                           (since,)):
        flagged.add(cid)
    return len(flagged)


def start_pg(base: Path) -> tuple[str, list[str], Path] | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    bindir = Path(found[-1]).parent if found else (Path(shutil.which("initdb")).parent
                                                   if shutil.which("initdb") else None)
    if bindir is None:
        return None
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as 'postgres'
        import pwd

        pw = pwd.getpwnam("postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(base.parent, 0o711)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    data = base / "data"
    subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data), "-U", "slm",
                              "--auth=trust", "-E", "UTF8", "--no-sync"], check=True,
                   capture_output=True)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"),
                              "-w", "-o", f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off "
                              "-c full_page_writes=off -c synchronous_commit=off", "start"],
                   check=True, capture_output=True)
    import psycopg

    with psycopg.connect(f"postgresql://slm@127.0.0.1:{port}/postgres", autocommit=True) as c:
        c.execute("CREATE DATABASE slmflow")
    return f"postgresql://slm@127.0.0.1:{port}/slmflow", as_user + [
        str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], data


def _same(a, b) -> bool:
    keys = ("scanned", "candidates", "already_queued", "flagged", "over_budget", "by_reason")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def run_backend(name: str, url: str, rows: int, ray: str | None = None,
                slices: int | None = None, window_days: float = 1.0) -> dict:
    log = open_call_log(url)
    fill_s = fill(log, rows)
    if log.dialect == "postgresql":
        with log._tx() as cur:
            cur.execute("ANALYZE")
    since = time.time() - window_days * DAY
    rules = FlagRules(confidence_below=0.5, budget_per_agent=50)
    t0 = time.perf_counter()
    rep = flag_calls(log, since=since, rules=rules, dry_run=True)
    dry_s = time.perf_counter() - t0
    ray_out: dict = {}
    if ray is not None:  # the same dry run, its slices as Ray tasks (best of 3 each side)
        single_s, on_ray_s, agree = [dry_s], [], True
        for _ in range(3):
            t0 = time.perf_counter()
            r = flag_calls(log, since=since, until=rep.until, rules=rules, dry_run=True,
                           ray=ray, slices=slices)
            on_ray_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            one = flag_calls(log, since=since, until=rep.until, rules=rules, dry_run=True)
            single_s.append(time.perf_counter() - t0)
            agree = agree and _same(r, one)
        # warm: this process stays connected (as a scheduler process would), workers reused
        import ray as ray_mod

        from slmflow.scale.distributed import connect

        connect(ray)
        warm_s = []
        try:
            for _ in range(3):
                t0 = time.perf_counter()
                w = flag_calls(log, since=since, until=rep.until, rules=rules, dry_run=True,
                               ray=ray, slices=slices)
                warm_s.append(time.perf_counter() - t0)
                agree = agree and _same(w, one)
        finally:
            ray_mod.shutdown()
        best = min(single_s)
        ray_out = {"ray_slices": r.slices, "ray_flag_s": round(min(on_ray_s), 3),
                   "ray_warm_flag_s": round(min(warm_s), 3), "single_flag_s": round(best, 3),
                   "ray_speedup": float(f"{best / min(on_ray_s):.3g}"),
                   "ray_warm_speedup": float(f"{best / min(warm_s):.3g}"),
                   "ray_same_result": agree}
        print(f"{name:10s} flag dry run over {rep.scanned:,} window calls: one process "
              f"{best:.3f} s | Ray, {r.slices} slices on a 2-CPU local cluster: "
              f"{min(on_ray_s):.3f} s with connect+shutdown ({ray_out['ray_speedup']}x), "
              f"{min(warm_s):.3f} s connected ({ray_out['ray_warm_speedup']}x) | same result: "
              f"{agree}", flush=True)
    t0 = time.perf_counter()
    rep = flag_calls(log, since=since, rules=rules)
    flag_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = flag_calls(log, since=since, rules=rules)
    again_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain_n = plain_flag(log, since)
    plain_s = time.perf_counter() - t0
    log.close()
    out = {"backend": name, "rows": rows, "fill_s": round(fill_s, 1), "window": rep.scanned,
           "matched": rep.candidates, "queued": rep.total, "flag_s": round(flag_s, 3),
           "dry_run_s": round(dry_s, 3), "rerun_s": round(again_s, 3), "rerun_queued": again.total,
           "plain_s": round(plain_s, 3), "plain_matched": plain_n,
           "window_rows_per_s": round(rep.scanned / flag_s),
           "speedup_vs_plain": round(plain_s / dry_s, 2), **ray_out}
    print(f"{name:10s} {rows:>9,} rows (filled in {fill_s:.0f} s): window {rep.scanned:,}, "
          f"matched {rep.candidates:,}, queued {rep.total} | flag {flag_s:.2f} s "
          f"({out['window_rows_per_s']:,} window rows/s), dry run {dry_s:.2f} s, re-run {again_s:.2f} s "
          f"(+{again.total}) | plain Python {plain_s:.2f} s ({plain_n:,} matched) -> "
          f"{out['speedup_vs_plain']}x", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--json")
    ap.add_argument("--ray", action="store_true",
                    help="also time the flag job on a local 2-CPU Ray cluster")
    ap.add_argument("--slices", type=int, default=None,
                    help="time slices on Ray (default: one per cluster CPU)")
    ap.add_argument("--window-days", type=float, default=1.0,
                    help="the window flagged, in days back from now (the log spans 7)")
    a = ap.parse_args()
    results = []
    cluster = None
    if a.ray:
        from slmflow.scale.distributed import LocalCluster

        cluster = LocalCluster(num_cpus=2).start()
    kw = {"ray": cluster.address if cluster else None, "slices": a.slices,
          "window_days": a.window_days}
    try:
        _run(a, results, kw)
    finally:
        if cluster is not None:
            cluster.stop()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


def _run(a, results: list, kw: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="slmflow-bench-loop-") as d:
        tmp = Path(d)
        for b in a.backends.split(","):
            if b == "sqlite":
                results.append(run_backend("sqlite", f"sqlite:///{tmp / 'calls.db'}", a.rows,
                                           **kw))
            elif b == "postgresql":
                pg_dir = tmp / "pg"
                pg_dir.mkdir()
                started = start_pg(pg_dir)
                if started is None:
                    print("postgresql: server binaries not installed; skipped")
                    continue
                url, stop, _ = started
                try:
                    results.append(run_backend("postgresql", url, a.rows, **kw))
                finally:
                    subprocess.run(stop, capture_output=True)


if __name__ == "__main__":
    main()
