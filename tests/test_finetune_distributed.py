"""Training on several processes: the same `train_lora` started as 2 CPU processes (DDP over
gloo, `torch.distributed.run` on loopback) writes one adapter and one card, and that adapter
equals a 1-process run of the same steps on the same data; `slmflow train agent` launched the
same way registers exactly one version.

Launchers: the library test uses `torch.distributed.run` (torchrun); the CLI test uses
`accelerate launch --multi_gpu --num_processes 2`, the GPU command unchanged, which on a machine
without CUDA starts 2 CPU processes (the trainer's `Accelerator` then picks gloo). Not
`accelerate launch --cpu --num_processes 2`: accelerate starts a single process for ``--cpu``
unless it is given an MPI host file. No GPU in this task: the CUDA/NCCL path is the same code
with another device and backend, not checked here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slmflow.finetune.trainer import TrainConfig, train_lora

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

# 7 examples in batches of 3: shards of 2/1 (unequal token counts) and, in the last batch of
# one example, an empty shard on rank 1 (it must still join DDP's all-reduce). No dropout: the
# comparison is then pure arithmetic, not two different random masks.
CFG = TrainConfig(r=4, alpha=8, batch_size=3, max_steps=3, checkpoint_every=2, lr=1e-3,
                  max_len=96, dropout=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], tmp_path: Path, nproc: int = 2, env: dict[str, str] | None = None,
            accelerate: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    if accelerate:  # the GPU command as is; without CUDA its processes train on CPU over gloo
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
               f"--num_processes={nproc}", "--num_machines=1", "--mixed_precision=no",
               "--dynamo_backend=no", "--main_process_ip=127.0.0.1",
               f"--main_process_port={_free_port()}", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *args]
    p = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"launch failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p


@pytest.fixture(scope="module")
def base_dir(slmflow_home):
    from slmflow.models.catalog import embedded_gguf_path
    from slmflow.models.transformers import dequantized_base

    return dequantized_base(embedded_gguf_path(), "smollm2-135m")


def test_two_processes_train_the_same_adapter_as_one(base_dir, tmp_path):
    from safetensors.torch import load_file

    from tests.test_finetune import examples, fmt

    import torch

    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.test_finetune import examples, fmt
        from tests.test_finetune_distributed import CFG
        from slmflow.finetune import trainer
        res = trainer.train_lora({str(base_dir)!r}, examples()[:7], examples()[5:], fmt,
                                 sys.argv[1], CFG, base_name="smollm2-135m", progress=False,
                                 threads=1)
        rank, size = trainer.world()
        with open(f"result-{{rank}}.json", "w") as f:
            json.dump({{"rank": rank, "size": size, "main": trainer.is_main_process(),
                       "steps": res.steps, "val_loss": res.val_loss,
                       "adapter_exists": (res.adapter_dir / "adapter_model.safetensors").is_file()}}, f)
    """))
    run = tmp_path / "two"
    _launch([str(script), str(run)], tmp_path)

    results = [json.loads((tmp_path / f"result-{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["size"], r["main"]) for r in results] == [(0, 2, True), (1, 2, False)]
    assert all(r["steps"] == 3 and r["adapter_exists"] for r in results)
    assert results[0]["val_loss"] == results[1]["val_loss"]  # reduced over both processes
    # one writer: run.json, one card, one adapter, no checkpoint left behind
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "card.json", "run.json"]
    card = json.loads((run / "card.json").read_text())
    assert card["world_size"] == 2 and card["device"] == "cpu" and card["metrics"]["steps"] == 3

    one = train_lora(base_dir, examples()[:7], examples()[5:], fmt, tmp_path / "one", CFG,
                     base_name="smollm2-135m", progress=False, threads=1)
    assert one.card["world_size"] == 1
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(one.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    diffs = {k: float((a[k] - b[k]).abs().max()) for k in a}
    print("max |2-process - 1-process| per tensor:", max(diffs.values()))
    # Tolerance: the two runs differ only in float32 summation order and padding widths; here
    # the largest difference was 6e-6. Averaging the two shards' mean losses without weighting
    # by their token counts (the natural bug) differs by 4e-3 and fails; 3 Adam steps at lr 1e-3
    # move a weight by at most ~3e-3, so atol 1e-5 is far below one step's effect.
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5), (k, diffs[k])
    assert abs(card["metrics"]["val_loss"] - one.val_loss) < 1e-3
    assert abs(card["metrics"]["train_loss"] - one.train_loss) < 1e-3


def test_cli_train_agent_on_two_processes_registers_once(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m slmflow train agent ...` (the GPU
    command, here on CPU): both processes train, only the main one registers, gates, prints."""
    from tests.test_train_agent import HELD_OUT, TRAIN, _write

    home = tmp_path / "home"  # empty: rank 0 dequantizes the base while rank 1 waits
    p = _launch(["-m", "slmflow", "train", "agent", "router", "--workflow",
                 str(ROOT / "examples/support/workflow.yaml"),
                 "--data", str(_write(tmp_path / "t.jsonl", TRAIN)),
                 "--eval-data", str(_write(tmp_path / "e.jsonl", HELD_OUT)),
                 "--out", str(tmp_path / "run"), "--max-steps", "3", "--batch-size", "4",
                 "--lora-r", "4", "--threads", "1", "--lr", "1e-3"], tmp_path,
                env={"SLMFLOW_HOME": str(home), "SLMFLOW_TRACING": "off"}, accelerate=True)
    assert p.stdout.count('"version"') == 1  # only the main process reports
    out = json.loads(p.stdout[p.stdout.index("{\n"):])
    assert out["version"] == "v1" and out["metrics"]["steps"] == 3
    assert set(out["scores"]) == {"accuracy", "ok_rate"}
    assert sorted(d.name for d in (home / "adapters" / "router").iterdir()
                  if d.is_dir()) == ["v1"]
    card = json.loads((home / "adapters" / "router" / "v1" / "card.json").read_text())
    assert card["world_size"] == 2 and card["base_model"] == "smollm2-135m"
    assert sorted(x.name for x in (tmp_path / "run").iterdir()) == ["adapter", "card.json",
                                                                   "run.json"]
