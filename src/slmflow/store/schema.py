"""The call-log schema, as a list of versioned migrations applied on open.

Why hand-written SQL and not Alembic: the schema is a handful of tables, it must be identical on SQLite
and PostgreSQL, and it must be applied by the library itself on open (a user of the embedded store
never runs a migration tool). Each migration is a version number and its statements; the only
dialect difference is the auto-increment primary key, written ``{SEQ}`` and filled in per dialect.
``schema_version`` records what was applied; a migration and its version row commit together.

Adding a migration: append ``(n + 1, [...])`` to `MIGRATIONS`; never edit an applied one.
"""

from __future__ import annotations

SEQ = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE calls (
            seq {SEQ},
            id TEXT NOT NULL UNIQUE,
            ts DOUBLE PRECISION NOT NULL,
            kind TEXT NOT NULL,
            agent TEXT,
            workflow TEXT,
            run_id TEXT,
            trace_id TEXT,
            key_name TEXT,
            model TEXT,
            adapter TEXT,
            input TEXT,
            output TEXT,
            latency_s DOUBLE PRECISION,
            confidence DOUBLE PRECISION,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd DOUBLE PRECISION,
            escalated INTEGER NOT NULL DEFAULT 0,
            escalation_reason TEXT,
            cache TEXT,
            status TEXT NOT NULL DEFAULT 'ok',
            error TEXT,
            meta TEXT
        )""",
        "CREATE INDEX calls_ts ON calls (ts)",
        "CREATE INDEX calls_agent_ts ON calls (agent, ts)",
        "CREATE INDEX calls_run ON calls (run_id)",
        "CREATE INDEX calls_key_ts ON calls (key_name, ts)",
        """CREATE TABLE feedback (
            seq {SEQ},
            id TEXT NOT NULL UNIQUE,
            ts DOUBLE PRECISION NOT NULL,
            call_id TEXT,
            run_id TEXT,
            signal TEXT,
            label TEXT,
            correction TEXT,
            by TEXT
        )""",
        "CREATE INDEX feedback_call ON feedback (call_id)",
        "CREATE INDEX feedback_run ON feedback (run_id)",
        """CREATE TABLE examples (
            seq {SEQ},
            id TEXT NOT NULL UNIQUE,
            ts DOUBLE PRECISION NOT NULL,
            call_id TEXT,
            agent TEXT,
            source_model TEXT,
            target_model TEXT,
            input TEXT,
            output TEXT,
            reason TEXT,
            confidence DOUBLE PRECISION
        )""",
        "CREATE INDEX examples_agent ON examples (agent, ts)",
        """CREATE TABLE api_keys (
            seq {SEQ},
            name TEXT NOT NULL UNIQUE,
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            models TEXT,
            rpm INTEGER,
            tokens_per_day INTEGER,
            created DOUBLE PRECISION NOT NULL,
            revoked DOUBLE PRECISION
        )""",
    ]),
]

# 2: the improvement loop. Agents' output schemas (the review form), the review queue (one item
# per flagged call, ever: call_id is unique, so flagging twice is a no-op) and the flag runs.
MIGRATIONS.append((2, [
    """CREATE TABLE agents (
        name TEXT PRIMARY KEY,
        output_schema TEXT,
        instructions TEXT,
        updated DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE review_items (
        seq {SEQ},
        id TEXT NOT NULL UNIQUE,
        ts DOUBLE PRECISION NOT NULL,
        call_id TEXT NOT NULL UNIQUE,
        agent TEXT,
        reasons TEXT,
        priority DOUBLE PRECISION NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'pending',
        verdict TEXT,
        correction TEXT,
        reviewer TEXT,
        reviewed_ts DOUBLE PRECISION,
        note TEXT,
        flag_run TEXT,
        used_in TEXT
    )""",
    "CREATE INDEX review_agent_status ON review_items (agent, status, priority)",
    """CREATE TABLE flag_runs (
        seq {SEQ},
        id TEXT NOT NULL UNIQUE,
        ts DOUBLE PRECISION NOT NULL,
        since DOUBLE PRECISION,
        until DOUBLE PRECISION,
        config TEXT,
        scanned INTEGER NOT NULL DEFAULT 0,
        candidates INTEGER NOT NULL DEFAULT 0,
        flagged INTEGER NOT NULL DEFAULT 0,
        wall_s DOUBLE PRECISION
    )""",
    "CREATE INDEX feedback_ts ON feedback (ts)",
]))

# 3: the flagging job's window scan and count filter on kind and time (index-only count; measured
# on 1M rows: the window count 0.24 s -> see docs/benchmarks.md, Improvement loop).
MIGRATIONS.append((3, [
    "CREATE INDEX calls_kind_ts ON calls (kind, ts)",
]))

# 4: per-key limits shared by every gateway replica on one database. A day's token counter per key
# (reserved before a generation, settled with the real usage after; one conditional UPDATE is the
# atomic check-and-add) and the rpm token bucket per key (level and time of the last take).
MIGRATIONS.append((4, [
    """CREATE TABLE key_budget (
        key_name TEXT NOT NULL,
        day INTEGER NOT NULL,
        tokens BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (key_name, day)
    )""",
    """CREATE TABLE key_rate (
        key_name TEXT PRIMARY KEY,
        level DOUBLE PRECISION NOT NULL,
        ts DOUBLE PRECISION NOT NULL
    )""",
]))

# 5: judges that learn from reviewers (`slmflow.store.judges`). ``judges``: the judge-type
# evaluators that ran online over the log (`slmflow loop evaluate`), with what rebuilds them (the
# rubric, labels, model), so a review can name a judge and a retrain can rebuild it. One row per
# name, upserted. ``judge_reviews``: a reviewer's decision on a judge's verdict about a flagged
# call ("judge right" / "judge wrong" and the right label), next to the item's own review; one per
# (item, judge), so two reviewers cannot both decide the same verdict.
MIGRATIONS.append((5, [
    """CREATE TABLE judges (
        name TEXT PRIMARY KEY,
        evaluator TEXT NOT NULL,
        spec TEXT,
        labels TEXT NOT NULL,
        pass_labels TEXT NOT NULL,
        updated DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE judge_reviews (
        seq {SEQ},
        id TEXT NOT NULL UNIQUE,
        ts DOUBLE PRECISION NOT NULL,
        item_id TEXT NOT NULL,
        call_id TEXT NOT NULL,
        judge TEXT NOT NULL,
        judge_label TEXT,
        judge_passed INTEGER NOT NULL,
        judge_right INTEGER NOT NULL,
        label TEXT NOT NULL,
        passed INTEGER NOT NULL,
        reviewer TEXT NOT NULL,
        note TEXT,
        used_in TEXT,
        UNIQUE (item_id, judge)
    )""",
    "CREATE INDEX judge_reviews_judge ON judge_reviews (judge, ts)",
]))

LATEST = MIGRATIONS[-1][0]


def statements(version_sql: list[str], dialect: str) -> list[str]:
    return [s.replace("{SEQ}", SEQ[dialect]) for s in version_sql]
