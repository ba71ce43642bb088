"""LoRA training with Hugging Face PEFT: one agent, its own data, resumable, on CPU or GPU.

Why a small explicit loop instead of `transformers.Trainer`: an agent's examples are short and
of very different lengths (a router's utterance vs an extraction's ticket), so batches are padded
only to their own longest sequence; a checkpoint is exactly what resuming needs (adapter weights,
optimizer and scheduler state, the step, the RNG states) written atomically; and the loop is short
enough to read. bench/finetune.py compares its tokens/s with a plain Trainer + PEFT script.

Resume after a kill: the batch order is a pure function of the seed and the epoch, and the RNG
states are restored, so a run killed at step k and resumed produces the same adapter as an
uninterrupted run (a test holds this). A run directory remembers its configuration and data hash;
resuming with different ones is refused rather than silently mixing two runs.

A full disk (or any failed write) during a checkpoint raises `CheckpointError` naming the path;
the previous checkpoint stays intact because a new one is written beside it and renamed over it.

Devices and processes (`accelerate`): the same function trains on CPU, on one GPU, or on N
processes started by ``torchrun`` / ``accelerate launch`` (DDP), without a change in the caller.
Why shard each global batch instead of giving every process its own batches: the global batch
(``config.batch_size``), the batch order and the step count stay those of the single-process
run, so a 2-process run reproduces the 1-process adapter (a test holds this to float rounding)
and a run folder can be resumed with another process count. Each process computes the loss of
its shard scaled to the *global* token count, so DDP's gradient average equals the gradient of
the whole batch's mean loss. Only the main process writes run.json, checkpoints, the adapter and
card.json; every process returns the same `TrainResult` (after the adapter is on disk), and
`is_main_process()` tells callers which one should register or evaluate it.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, SlmflowError
from ..types import Message
from .data import ChatEncoder, Encoded, Example, data_hash


class CheckpointError(SlmflowError):
    """A checkpoint or the final adapter could not be written."""


@dataclass(frozen=True)
class TrainConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    lr: float = 1e-3
    epochs: float = 1.0
    batch_size: int = 8
    max_len: int = 128
    seed: int = 0
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    checkpoint_every: int = 50
    max_steps: int | None = None
    bf16: bool = False
    # a PEFT adapter folder to start from instead of a fresh LoRA (the improvement loop's warm
    # start from the serving version); its rank and target modules must match
    init_adapter: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.r < 1 or self.batch_size < 1 or self.epochs <= 0 or self.lr <= 0:
            raise ConfigError(f"invalid training configuration: {self}", where="TrainConfig")


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    train_loss: float
    val_loss: float | None
    tokens_per_s: float
    wall_s: float
    resumed_from: int
    card: dict[str, Any] = field(default_factory=dict)


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    idx = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(idx)
    return [idx[i:i + batch_size] for i in range(0, n, batch_size)]


def bf16_fast() -> bool:
    """Whether bfloat16 training pays here: on a CUDA GPU, or on a CPU with AVX-512 BF16 / AMX
    kernels. Elsewhere torch emulates bfloat16 matmuls and a LoRA run is several times slower
    than in float32 (seen on an AVX2-only AMD EPYC: the loop's end-to-end test trained for
    minutes instead of seconds), so the CLI's default follows this."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:  # pragma: no cover
        return False
    try:
        flags = open("/proc/cpuinfo", encoding="ascii", errors="replace").read()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def world() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed's once initialised, else what the
    launcher put in the environment (torchrun / accelerate launch: RANK, WORLD_SIZE; mpirun: its
    own), else (0, 1). Cheap: imports nothing."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()

    def env(*names: str, default: int) -> int:
        for n in names:
            if os.environ.get(n, "").strip().isdigit():
                return int(os.environ[n])
        return default
    return (env("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", default=0),
            env("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", default=1))


def is_main_process() -> bool:
    """True in a single process and in rank 0 of a distributed launch: the one process that
    should register, evaluate or print what `train_lora` returned."""
    return world()[0] == 0


def _use_cpu(torch: Any) -> bool:
    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return flag or not torch.cuda.is_available()


def main_process_first():
    """A context manager: in a distributed launch the main process runs the block first, then
    the others (for one-off preparation such as dequantizing a base model into a shared folder);
    in a single process it does nothing special."""
    import contextlib

    if world()[1] <= 1:
        return contextlib.nullcontext()
    import torch
    from accelerate import PartialState

    return PartialState(cpu=_use_cpu(torch)).main_process_first()


def _accelerator(torch: Any, config: TrainConfig) -> Any:
    """The `accelerate.Accelerator` for one run: CUDA when torch sees a GPU (bf16 autocast when
    ``config.bf16``), else CPU; DDP (NCCL on GPUs, gloo on CPUs) when launched with N processes.
    ``split_batches``: our batches are global, so the scheduler steps once per optimizer step."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    cpu = _use_cpu(torch)
    kwargs = dict(cpu=cpu, mixed_precision="bf16" if config.bf16 and not cpu else "no",
                  dataloader_config=DataLoaderConfiguration(split_batches=True),
                  # the only buffers are rotary tables, equal everywhere: no per-step broadcast
                  kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    try:
        return Accelerator(**kwargs)
    except ValueError:  # an earlier run in this process chose another precision
        AcceleratorState._reset_state()
        return Accelerator(**kwargs)


def _n_targets(e: Encoded) -> int:
    """Tokens the loss counts (labels after the causal shift)."""
    return sum(1 for x in e.labels[1:] if x != -100)


def _collate(items: Sequence[Encoded], pad_id: int):
    import torch

    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return ids, mask, labels


def _atomic_dir_write(target: Path, write: Callable[[Path], None]) -> None:
    new = target.with_name(target.name + ".new")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(new, ignore_errors=True)
    try:
        new.mkdir(parents=True)
        write(new)
    except OSError as e:
        shutil.rmtree(new, ignore_errors=True)
        raise CheckpointError(f"could not write {target.name}: {e}", where=str(target)) from None
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _loss_sums(model: Any, encoded: Sequence[Encoded], batch_size: int, pad_id: int,
               device: Any = None) -> tuple[float, int]:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(encoded), batch_size):
            ids, mask, labels = (t.to(device) if device is not None else t
                                 for t in _collate(encoded[i:i + batch_size], pad_id))
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, attention_mask=mask, labels=labels).loss) * n
            count += n
    model.train()
    return total, count


def evaluate_loss(model: Any, encoded: Sequence[Encoded], batch_size: int, pad_id: int,
                  device: Any = None) -> float:
    """Mean per-token loss of `model` on `encoded` (batches moved to `device` when given)."""
    if not encoded:
        return float("nan")
    total, count = _loss_sums(model, encoded, batch_size, pad_id, device)
    return total / max(count, 1)


def train_lora(base_dir: str | Path, train: Sequence[Example], val: Sequence[Example],
               format_fn: Callable[[Any], list[Message]], out_dir: str | Path,
               config: TrainConfig = TrainConfig(), *, base_name: str = "",
               progress: bool = True, log: Callable[[str], None] | None = None,
               threads: int | None = None) -> TrainResult:
    """Train a LoRA adapter on `train`, report `val` loss, checkpoint, resume; return the result.

    base_dir: a Hugging Face model folder (for the embedded model, the dequantized safetensors
    folder). out_dir: the run directory (checkpoints, the final ``adapter/``, ``card.json``).
    threads: torch CPU threads (per process). On a machine where other processes compete for the
    cores, one thread is steadier and often faster than all (measured here: 3.3 s vs 12-47 s per
    step). Under ``torchrun``/``accelerate launch`` every process calls this with the same
    arguments and gets the same result; only the main process writes (see the module docstring).
    """
    import torch
    import transformers

    out = Path(out_dir)
    if not train:
        raise ConfigError("no training examples", where=str(out))
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        acc = _accelerator(torch, config)
        say = (log or (lambda s: None)) if acc.is_main_process else (lambda s: None)
        out.mkdir(parents=True, exist_ok=True)
        dhash = data_hash(list(train) + list(val))
        run_meta = {"config": asdict(config), "data_hash": dhash, "base": str(base_dir)}
        meta_path = out / "run.json"
        if meta_path.exists() and (out / "checkpoint").exists():
            prev = json.loads(meta_path.read_text())
            if prev != json.loads(json.dumps(run_meta, default=list)):
                raise ConfigError("this run directory holds a run with another configuration or "
                                  "data; use a new directory or delete it", where=str(out))
        acc.wait_for_everyone()  # every process has read run.json before it is rewritten
        if acc.is_main_process:
            meta_path.write_text(json.dumps(run_meta, indent=2, default=list))
        return _train(torch, transformers, acc, base_dir, train, val, format_fn, out, config,
                      base_name, progress and acc.is_main_process, say, dhash)
    finally:
        torch.set_num_threads(previous_threads)


def _load_init_adapter(model: Any, d: Path, config: TrainConfig) -> None:
    """Copy a trained adapter's weights into the fresh LoRA (same rank and targets, or an error
    that says which differs)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    cfg_path, weights = d / "adapter_config.json", d / "adapter_model.safetensors"
    if not (cfg_path.is_file() and weights.is_file()):
        raise ConfigError("init_adapter: not a PEFT adapter folder (adapter_config.json, "
                          "adapter_model.safetensors)", where=str(d))
    cfg = json.loads(cfg_path.read_text())
    theirs = (cfg.get("r"), sorted(cfg.get("target_modules") or []))
    ours = (config.r, sorted(config.target_modules))
    if theirs != ours:
        raise ConfigError(f"init_adapter has r={theirs[0]} on {theirs[1]}; this run trains "
                          f"r={ours[0]} on {ours[1]}: use the same to start from it",
                          where=str(d))
    res = set_peft_model_state_dict(model, load_file(str(weights)))
    if getattr(res, "unexpected_keys", None):
        raise ConfigError(f"init_adapter has weights this model does not: "
                          f"{res.unexpected_keys[:3]}", where=str(d))


def _train(torch: Any, transformers: Any, acc: Any, base_dir: str | Path,
           train: Sequence[Example], val: Sequence[Example],
           format_fn: Callable[[Any], list[Message]], out: Path, config: TrainConfig,
           base_name: str, progress: bool, say: Callable[[str], None],
           dhash: str) -> TrainResult:
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    ckpt = out / "checkpoint"
    rank, n_proc, main = acc.process_index, acc.num_processes, acc.is_main_process
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    tok = transformers.AutoTokenizer.from_pretrained(str(base_dir))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(base_dir), dtype=torch.bfloat16 if config.bf16 else torch.float32)
    model = get_peft_model(model, LoraConfig(
        r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=list(config.target_modules), task_type="CAUSAL_LM"))
    if config.init_adapter and not (ckpt / "state.pt").exists():
        _load_init_adapter(model, Path(config.init_adapter), config)
        say(f"starting from the adapter in {config.init_adapter}")
    enc = ChatEncoder(tok, format_fn, config.max_len)
    train_all = [enc.encode(ex) for ex in train]
    train_enc = [e for e in train_all if e is not None]
    val_enc = [e for e in (enc.encode(ex) for ex in val) if e is not None]
    skipped = len(train_all) - len(train_enc)
    if not train_enc:
        raise ConfigError(f"every example is longer than max_len={config.max_len} tokens",
                          where=str(out))
    if skipped:
        say(f"skipped {skipped} examples longer than max_len={config.max_len} tokens")

    per_epoch = math.ceil(len(train_enc) / config.batch_size)
    total = config.max_steps or max(1, int(per_epoch * config.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = transformers.get_linear_schedule_with_warmup(
        opt, int(total * config.warmup_ratio), total)
    # onto the device; under N processes the model is wrapped in DDP (parameters broadcast from
    # rank 0, gradients averaged in backward)
    model, opt, sched = acc.prepare(model, opt, sched)
    plain = acc.unwrap_model(model)
    device = acc.device
    cuda = device.type == "cuda"

    step, losses, tokens_done, start_step = 0, [], 0, 0
    if (ckpt / "state.pt").exists():
        state = torch.load(ckpt / "state.pt", weights_only=False, map_location="cpu")
        set_peft_model_state_dict(plain, load_file(str(ckpt / "adapter" /
                                                       "adapter_model.safetensors")))
        opt.load_state_dict(state["optimizer"])  # torch moves the state onto the params' device
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        random.setstate(state["py_rng"])
        step, losses = state["step"], state["losses"]
        start_step = step
        say(f"resuming from checkpoint at step {step}/{total}")
    acc.wait_for_everyone()  # all have read the checkpoint before the main process replaces it

    def save_checkpoint() -> None:
        def write(d: Path) -> None:
            plain.save_pretrained(d / "adapter")
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(),
                        "cuda_rng": torch.cuda.get_rng_state(device) if cuda else None,
                        "step": step, "losses": losses}, d / "state.pt")
        _atomic_dir_write(ckpt, write)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True)
    model.train()
    t0 = time.perf_counter()
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        batch_idx = _batches(len(train_enc), config.batch_size, config.seed, epoch)[offset]
        tokens_done += sum(len(train_enc[i].input_ids) for i in batch_idx)
        if n_proc == 1:
            ids, mask, labels = (t.to(device) for t in
                                 _collate([train_enc[i] for i in batch_idx], pad_id))
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            acc.backward(loss)
            batch_loss = loss.detach()
        else:
            # this process's shard of the global batch; its mean loss scaled so that DDP's
            # average over processes is the global batch's per-token mean. A process with an
            # empty shard (last batch smaller than the process count) still runs forward and
            # backward (DDP needs every process), on a stand-in with weight 0.
            mine = [train_enc[i] for i in batch_idx[rank::n_proc]]
            n_all = sum(_n_targets(train_enc[i]) for i in batch_idx)
            n_mine = sum(_n_targets(e) for e in mine)
            ids, mask, labels = (t.to(device) for t in
                                 _collate(mine or [train_enc[batch_idx[0]]], pad_id))
            # dropout: a stream per process and step, so shards do not share masks and a
            # resumed run (any process count) draws what an uninterrupted one draws
            torch.manual_seed((config.seed * 1_000_003 + step) * 1_009 + rank)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss = loss * (n_mine * n_proc / max(n_all, 1))
            acc.backward(loss)
            batch_loss = acc.reduce(loss.detach(), reduction="mean")
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        losses.append(float(batch_loss))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if (main and config.checkpoint_every and step % config.checkpoint_every == 0
                and step < total):
            save_checkpoint()
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    val_loss = None
    if val_enc:  # each process scores its share of the validation set; the sums are added up
        with acc.autocast():
            v_total, v_count = _loss_sums(plain, val_enc[rank::n_proc], config.batch_size,
                                          pad_id, device)
        if n_proc > 1:
            sums = acc.reduce(torch.tensor([v_total, float(v_count)], dtype=torch.float64,
                                           device=device), reduction="sum")
            v_total, v_count = float(sums[0]), int(sums[1])
        val_loss = v_total / max(v_count, 1)
    adapter_dir = out / "adapter"
    tail = losses[-max(1, min(len(losses), 20)):]
    card = {
        "base_model": base_name or str(base_dir), "data_hash": dhash,
        "n_train": len(train_enc), "n_val": len(val_enc), "skipped_too_long": skipped, "config": asdict(config),
        "metrics": {"train_loss": sum(tail) / len(tail), "val_loss": val_loss, "steps": step,
                    "tokens_per_s": tokens_done / wall if wall > 0 else 0.0,
                    "wall_s": wall, "resumed_from": start_step},
        "sources": sorted({ex.source.split(":")[0] for ex in train if ex.source})[:50],
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "device": device.type, "world_size": n_proc, "mixed_precision": acc.mixed_precision,
    }
    if main:
        _atomic_dir_write(adapter_dir, lambda d: plain.save_pretrained(d))
        (out / "card.json").write_text(json.dumps(card, indent=2, default=list))
        shutil.rmtree(ckpt, ignore_errors=True)
    acc.wait_for_everyone()  # every process returns once the adapter is on disk
    return TrainResult(adapter_dir, step, card["metrics"]["train_loss"], val_loss,
                       card["metrics"]["tokens_per_s"], wall, start_step, card)
