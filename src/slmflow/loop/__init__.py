"""The improvement loop: flag weak calls, review them, retrain the agent that failed, gate, serve.

    from slmflow.loop import flag_calls, FlagRules, retrain_agent, add_to_evals
    from slmflow.store import open_call_log
    log = open_call_log()
    flag_calls(log, since="24h", rules=FlagRules(budget_per_agent=50))   # -> review queue
    # ... reviewers decide in `slmflow ui` (the /review pages) ...
    retrain_agent(router_agent, log, data=original, eval_cases=suite)   # -> gated adapter
    retrain_judge("faithfulness", log)   # reviewers' right/wrong on its verdicts -> better judge

Each step is also a command: `slmflow loop evaluate|flag|queue|review|retrain|add-to-evals|
schedule|status`.
"""

from __future__ import annotations

from .judges import JudgeRetrainResult, retrain_judge
from .flag import RULES, WEIGHTS, FlagReport, FlagRules, flag_calls
from .online import OnlineEvalReport, evaluate_calls
from .retrain import LoopError, RetrainResult, add_to_evals, retrain_agent, reviewed_examples

__all__ = ["RULES", "WEIGHTS", "FlagReport", "FlagRules", "flag_calls", "LoopError",
           "RetrainResult", "add_to_evals", "retrain_agent", "reviewed_examples",
           "OnlineEvalReport", "evaluate_calls", "JudgeRetrainResult", "retrain_judge"]
