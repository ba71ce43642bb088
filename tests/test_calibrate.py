"""`slmflow eval calibrate`: agreement with human labels, the best threshold, cards, bad files."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from slmflow.cli import app
from slmflow.errors import ConfigError
from slmflow.evals import EvalResult, Evaluator, list_evaluators, register
from slmflow.evals.calibrate import (calibrate, cohen_kappa, read_cards, user_cards_dir,
                                     write_card)


@register
class LongEnough(Evaluator):
    """A deterministic evaluator with a score, so every figure can be computed by hand."""

    name = "test_long_enough"
    calibration_labels = (("long",), ("short",))

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def evaluate(self, case, output):
        s = min(1.0, len(output) / 10)
        return EvalResult(s, "long" if s >= self.threshold else "short",
                          passed=s >= self.threshold)


def _write(tmp_path, rows, name="lab.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


ROWS = [  # score = len/10; threshold 0.5 -> pass at >= 5 chars
    {"id": "a", "output": "abcdefghij", "label": "long"},   # 1.0  pass, human pass
    {"id": "b", "output": "abcdefg", "label": "long"},      # 0.7  pass, human pass
    {"id": "c", "output": "abcd", "label": "long"},         # 0.4  fail, human pass
    {"id": "d", "output": "abcdef", "label": "short"},      # 0.6  pass, human fail
    {"id": "e", "output": "ab", "label": "short"},          # 0.2  fail, human fail
    {"id": "f", "output": "a", "label": "SHORT "},          # 0.1  fail, human fail
]


def test_figures_match_a_hand_computation(tmp_path):
    cal = calibrate("test_long_enough", _write(tmp_path, ROWS))
    assert (cal.n, cal.errored) == (6, 0)
    assert cal.confusion == {"long": {"long": 2, "short": 1}, "short": {"long": 1, "short": 2}}
    assert cal.accuracy == pytest.approx(4 / 6, abs=1e-4)
    # kappa: po = 4/6, pe = 0.5*0.5 + 0.5*0.5 = 0.5 -> (2/3 - 1/2) / (1/2) = 1/3
    assert cal.kappa == pytest.approx(1 / 3, abs=1e-4)
    assert cal.recall == {"long": pytest.approx(2 / 3, abs=1e-4),
                          "short": pytest.approx(2 / 3, abs=1e-4)}
    assert (cal.fail_precision, cal.fail_recall) == (pytest.approx(2 / 3, abs=1e-4),
                                                     pytest.approx(2 / 3, abs=1e-4))
    # a threshold between 0.6 and 0.7 separates them except row c: 5/6 right
    b = cal.best_threshold
    assert 0.6 < b["threshold"] <= 0.7 and b["accuracy"] == pytest.approx(5 / 6, abs=1e-4)
    assert cal.cases_per_s > 0 and len(cal.sha256) == 64


def test_kappa_edges():
    assert cohen_kappa([(True, True), (False, False)]) == (1.0, 1.0)
    assert cohen_kappa([(True, True), (True, True)]) == (1.0, 1.0)
    acc, k = cohen_kappa([(True, True), (False, True)])  # always "pass": chance
    assert acc == 0.5 and k == 0.0


@pytest.mark.parametrize("bad,msg", [
    ({"id": "x", "output": "abc", "label": "medium"}, "unknown label 'medium'"),
    ({"id": "x", "output": "abc"}, "unknown label None"),
    ({"id": "x", "label": "long"}, "no 'output' field"),
    ("{not json", "not JSON"),
    ({"id": "a", "output": "abc", "label": "long"}, "duplicate id 'a'"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad, msg):
    p = _write(tmp_path, [ROWS[0], ROWS[1], bad])
    with pytest.raises(ConfigError, match=msg) as e:
        calibrate("test_long_enough", p)
    assert e.value.where == f"{p}:3"


def test_errored_rows_are_counted_apart(tmp_path):
    @register
    class Picky(LongEnough):
        name = "test_picky"

        def evaluate(self, case, output):
            if output == "boom":
                raise RuntimeError("cannot judge")
            return super().evaluate(case, output)

    cal = calibrate("test_picky", _write(tmp_path, [*ROWS, {"id": "z", "output": "boom",
                                                            "label": "long"}]))
    assert (cal.n, cal.errored) == (6, 1) and "lab.jsonl:7: RuntimeError" in cal.errors[0]


def test_cards_are_written_merged_and_listed(tmp_path):
    p = _write(tmp_path, ROWS)
    cal = calibrate("test_long_enough", p)
    card = write_card(cal)
    assert card.parent == user_cards_dir()
    write_card(calibrate("test_long_enough", p))  # same data file: replaced, not added
    q = _write(tmp_path, ROWS[:4], "other.jsonl")
    write_card(calibrate("test_long_enough", q))
    ms = read_cards("test_long_enough")
    assert sorted(m["data"] for m in ms) == ["lab.jsonl", "other.jsonl"]
    row = {r["name"]: r for r in list_evaluators()}["test_long_enough"]
    assert "kappa 0.33" in row["agreement"] and "lab.jsonl (n=6)" in row["agreement"]
    card.write_text("{broken")
    assert {r["name"] for r in list_evaluators()} >= {"test_long_enough"}  # list still works


def test_shipped_cards_show_in_eval_list():
    rows = {r["name"]: r for r in list_evaluators()}
    for name, data in (("toxicity", "toxicity_heldout.jsonl"), ("pii", "pii_faker.jsonl"),
                       ("groundedness", "faithfulness.jsonl")):
        assert data in rows[name]["agreement"], rows[name]["agreement"]
        assert "kappa" in rows[name]["agreement"]


def test_cli_calibrate_prints_agreement_and_writes_the_card(tmp_path):
    p = _write(tmp_path, ROWS)
    out = tmp_path / "cards"
    r = CliRunner().invoke(app, ["eval", "calibrate", "test_long_enough", "--data", str(p),
                                 "--card", str(out), "--json", str(tmp_path / "c.json"),
                                 "-o", "threshold=0.65"])
    assert r.exit_code == 0, r.output
    assert "0.833" in r.output and "best threshold" in r.output  # threshold 0.65: 5/6
    card = json.loads((out / "test_long_enough.json").read_text())
    assert card["measurements"][0]["options"] == {"threshold": 0.65}
    assert json.loads((tmp_path / "c.json").read_text())["accuracy"] == pytest.approx(5 / 6,
                                                                                      abs=1e-3)


def test_cli_unknown_label_is_one_clear_line(tmp_path):
    import subprocess
    import sys

    p = _write(tmp_path, [ROWS[0], {"id": "q", "output": "abc", "label": "maybe"}])
    r = subprocess.run([sys.executable, "-m", "slmflow", "eval", "calibrate", "toxicity",
                        "--data", str(p), "--no-card"], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{p}:1" in r.stderr + r.stdout and "unknown label 'long'" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr


def test_eval_list_creates_no_home_folder(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("SLMFLOW_HOME", str(missing))
    assert list_evaluators() and not missing.exists()
