"""Train the restoration model: background job (kind ``train-restoration``), in-process, or CLI
(``python -m fra_core train-restoration --config cfg.yaml``).

Masked-character objective: cross-entropy on masked positions only (labels -100 elsewhere), masks
redrawn every batch from the dataset's `maskable` column with the dataset's masking settings, so a
position without ground truth is never a target. AdamW, linear warm-up then cosine or linear decay to
`min_lr_frac` of the peak over whichever ends first, `max_steps` or `time_budget_s` (the schedule reads
the budget's clock, so the decay ends when the budget does). With `keep_best` the weights with the best
validation top-1 (checked every `eval_every` steps and at the end) are the ones evaluated and saved.
Batches group examples of similar length (less padding); <pad> is not masked out of attention (see model.py).

Outputs under ``$FRA_WORKSPACE/restoration/<name>/``: ``checkpoint.pt`` (config, weights, vocab, meta)
and ``result.json`` (training curve summary, test evaluation vs the n-gram baseline). With
``convert: true`` the model is also converted, verified and saved as workspace model ``<name>``.
Everything is written into a temp folder renamed at the end: a cancelled or failed run leaves nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fra_core.atf import PAD_ID
from fra_core.atomic import atomic_folder
from fra_core.config import ConfigError, JobConfig
from fra_core.jobs import ConsoleProgress, NullProgress
from fra_core.restoration.dataset import IGNORE_INDEX, apply_mask, load_restoration_dataset, sample_mask
from fra_core.restoration.evaluate import evaluate, fit_ngram, select_ngram
from fra_core.restoration.model import RestorationModel, RestorationModelConfig, save_checkpoint
from fra_core.restoration.runs import CHECKPOINT_FILE, RESULT_FILE, restoration_root
from fra_core.workspace import Workspace, check_name


@dataclass(frozen=True)
class TrainRestorationConfig(JobConfig):
    dataset: str = ""            # workspace dataset name (datasets/<name>) or a dataset folder
    name: str = "restoration"    # output: restoration/<name>/ and (convert) workspace model <name>
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 0               # 0: 4 * d_model
    rope_base: float = 10000.0
    rope_quirk: bool = False     # train with the seed's RoPE slicing quirk (see model.py)
    dropout: float = 0.0
    train_mask_rate: float = 0.0  # 0: the dataset's rate; higher = more targets per step (cheaper learning)
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    warmup_steps: int = 50
    lr_schedule: str = "cosine"  # cosine | linear: decay from the peak to min_lr_frac * lr at the end
    min_lr_frac: float = 0.1
    max_steps: int = 1000
    time_budget_s: float = 0.0   # > 0: stop (and finish the LR schedule) after this many seconds
    budget_clock: str = "wall"   # wall | cpu: count the budget in process CPU seconds, so a busy machine
    #                              (other users' jobs) does not shrink the training a run gets
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 100
    val_examples: int = 64
    keep_best: bool = True       # evaluate/save the weights with the best validation top-1
    ngram_order: int = 6         # 0: choose the order (3..7) with the best top-1 on the validation split
    convert: bool = True
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int = 0             # torch CPU threads (0: torch's default). Small models on a busy machine
    #                              train several times faster with 1: no spinning at OpenMP barriers.

    def validate(self) -> "TrainRestorationConfig":
        check_name(self.name, "restoration model name")
        if not self.dataset:
            raise ConfigError("no dataset given: build one on the Restoration data page first")
        for name in ("n_layers", "d_model", "n_heads", "batch_size", "max_steps", "log_every", "eval_every"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.budget_clock not in ("wall", "cpu"):
            raise ConfigError(f"budget_clock must be 'wall' or 'cpu', got {self.budget_clock!r}")
        if self.lr_schedule not in ("cosine", "linear"):
            raise ConfigError(f"lr_schedule must be 'cosine' or 'linear', got {self.lr_schedule!r}")
        if not 0 <= self.min_lr_frac <= 1 or not 0 <= self.adam_beta1 < 1 or not 0 <= self.adam_beta2 < 1:
            raise ConfigError(f"bad optimiser settings: min_lr_frac={self.min_lr_frac}, "
                              f"betas=({self.adam_beta1}, {self.adam_beta2})")
        if not 0 <= self.train_mask_rate < 1:
            raise ConfigError(f"train_mask_rate must be in [0, 1), got {self.train_mask_rate}")
        if self.lr <= 0 or self.time_budget_s < 0 or self.ngram_order < 0:
            raise ConfigError(f"bad settings: lr={self.lr}, time_budget_s={self.time_budget_s}, "
                              f"ngram_order={self.ngram_order}")
        return self


# ----------------------------------------------------------------------------- batches
def length_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches of similar-length examples, in random order."""
    order = np.argsort(np.asarray(lengths) + rng.random(len(lengths)), kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(rows: Sequence[dict], rng: np.random.Generator | None,
            mask_settings: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked ids, labels) [batch, pos], padded with <pad> / -100. rng=None: the stored fixed masks."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for j, r in enumerate(rows):
        if rng is None:
            masked, lab = r["masked_ids"], r["labels"]
        else:
            mask = sample_mask(np.asarray(r["maskable"], dtype=bool), rng, **mask_settings)
            masked, lab = apply_mask(r["input_ids"], mask)
        ids[j, :len(masked)] = torch.tensor(masked)
        labels[j, :len(lab)] = torch.tensor(lab)
    return ids, labels


def lr_at(cfg: TrainRestorationConfig, step: int, elapsed_s: float) -> float:
    """Warm-up over `warmup_steps`, then decay to `min_lr_frac`·lr at the end of the run; the progress
    `frac` is the larger of steps/max_steps and elapsed/time_budget_s (on the budget's clock)."""
    frac = step / cfg.max_steps
    if cfg.time_budget_s > 0:
        frac = max(frac, elapsed_s / cfg.time_budget_s)
    frac = min(frac, 1.0)
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    shape = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.lr_schedule == "cosine" else 1.0 - frac
    return cfg.lr * warm * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * shape)


@torch.no_grad()
def validation(model, rows: Sequence[dict], device, batch_size: int) -> dict[str, float]:
    model.eval()
    loss_sum, n, correct = 0.0, 0, 0
    for i in range(0, len(rows), batch_size):
        ids, labels = collate(rows[i:i + batch_size], None, {})
        logits = model(ids.to(device))
        labels = labels.to(device)
        keep = labels != IGNORE_INDEX
        loss_sum += F.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
        correct += (logits[keep].argmax(-1) == labels[keep]).sum().item()
        n += int(keep.sum())
    model.train()
    return {"val_loss": loss_sum / max(n, 1), "val_top1": correct / max(n, 1)}


# ----------------------------------------------------------------------------- training
def make_optimizer(model, cfg: TrainRestorationConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, LayerNorm parameters (1-D tensors)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                             betas=(cfg.adam_beta1, cfg.adam_beta2))


def train_step(model, opt, ids: torch.Tensor, labels: torch.Tensor, lr: float, grad_clip: float) -> float:
    """One update on masked positions only (labels -100 elsewhere); returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    logits = model(ids)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item()


def train_model(cfg: TrainRestorationConfig, train_rows: Sequence[dict], val_rows: Sequence[dict], d_vocab: int,
                max_len: int, mask_settings: dict, progress, device) -> tuple[RestorationModel, dict]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    mcfg = RestorationModelConfig(d_vocab=d_vocab, n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
                                  d_mlp=cfg.d_mlp, max_len=max_len, rope_base=cfg.rope_base,
                                  rope_quirk=cfg.rope_quirk, dropout=cfg.dropout)
    model = RestorationModel(mcfg).to(device).train()
    opt = make_optimizer(model, cfg)
    lengths = [len(r["input_ids"]) for r in train_rows]
    clock = time.process_time if cfg.budget_clock == "cpu" else time.time
    t0, c0, step, history, batches = time.time(), clock(), 0, [], []
    val, best = {}, None  # best: (val_top1, step, weights, val metrics) of the best validated weights so far
    while step < cfg.max_steps and not (cfg.time_budget_s and clock() - c0 >= cfg.time_budget_s):
        if not batches:
            batches = length_batches(lengths, cfg.batch_size, rng)
        ids, labels = collate([train_rows[i] for i in batches.pop()], rng, mask_settings)
        lr = lr_at(cfg, step, clock() - c0)
        loss = train_step(model, opt, ids.to(device), labels.to(device), lr, cfg.grad_clip)
        step += 1
        if step % cfg.log_every == 0 or step == 1:
            history.append({"step": step, "loss": loss, "lr": lr})
            progress.log_metrics(step, loss=loss, lr=lr)
        if val_rows and (step % cfg.eval_every == 0):
            val = validation(model, val_rows, device, cfg.batch_size)
            progress.log_metrics(step, **val)
            best = _keep_best(cfg, model, val, step, best)
        progress.update(step, cfg.max_steps, message=f"step {step}: loss {loss:.3f}"
                        + (f", val top-1 {val['val_top1']:.3f}" if val else ""))
    if val_rows:
        val = validation(model, val_rows, device, cfg.batch_size)
        progress.log_metrics(step, **val)
        best = _keep_best(cfg, model, val, step, best)
    budget_hit = step < cfg.max_steps  # the loop ends at max_steps or when the budget's clock runs out
    summary = {"steps": step, "max_steps": cfg.max_steps, "stopped_by": "time_budget" if budget_hit else "max_steps",
               "stop_reason": stop_reason(cfg, step), "train_s": time.time() - t0, "budget_clock_s": clock() - c0,
               "final_loss": history[-1]["loss"] if history else None, "history": history[-200:], **val}
    if best is not None and best[1] != step:
        model.load_state_dict(best[2])
        summary.update(best[3], best_step=best[1])
    return model.eval(), summary


def stop_reason(cfg: TrainRestorationConfig, steps: int) -> str:
    """Why training ended after `steps`, in words (the time budget, or all `max_steps` done)."""
    if steps < cfg.max_steps:
        clock = "CPU" if cfg.budget_clock == "cpu" else "wall-clock"
        return (f"stopped by the time budget ({cfg.time_budget_s:g} s {clock}) after {steps:,} of "
                f"{cfg.max_steps:,} steps")
    return f"all {cfg.max_steps:,} steps done"


def _keep_best(cfg: TrainRestorationConfig, model, val: dict, step: int, best):
    """(val_top1, step, weights copy, val metrics) of the best validation top-1 so far (ties: the later)."""
    if not cfg.keep_best or (best is not None and val["val_top1"] < best[0]):
        return best
    return val["val_top1"], step, {k: v.detach().clone() for k, v in model.state_dict().items()}, dict(val)


@contextmanager
def torch_threads(n: int):
    """Use `n` torch CPU threads inside the block (n <= 0: leave the setting alone); restored after."""
    if n <= 0:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_train_restoration(cfg: TrainRestorationConfig, progress=None,
                          workspace: Workspace | None = None) -> dict[str, Any]:
    """Train, evaluate on the test split (model vs n-gram), save the checkpoint, optionally convert."""
    cfg.validate()
    progress = progress or NullProgress()
    workspace = workspace or Workspace.from_env()
    out_dir = restoration_root(workspace) / cfg.name
    model_dir = workspace.models / cfg.name
    for path in (out_dir, model_dir) if cfg.convert else (out_dir,):
        if path.exists() and not cfg.overwrite:
            raise ConfigError(f"{path} already exists; choose another name (or set overwrite)")
    with torch_threads(cfg.threads):
        return _train_evaluate_save(cfg, progress, workspace, out_dir, model_dir)


def _train_evaluate_save(cfg: TrainRestorationConfig, progress, workspace: Workspace, out_dir: Path,
                         model_dir: Path) -> dict[str, Any]:
    from fra_core.devices import pick_device

    device = pick_device(None if cfg.device in ("", "auto") else cfg.device)
    t0 = time.time()
    dsd, vocab, settings = load_restoration_dataset(cfg.dataset, workspace)
    dcfg = settings["config"]
    mask_settings = {"rate": cfg.train_mask_rate or dcfg["mask_rate"], "span_prob": dcfg["span_prob"],
                     "max_span": dcfg["max_span"]}
    train_rows, test_rows = list(dsd["train"]), list(dsd["test"])
    val_rows = list(dsd["validation"])[:cfg.val_examples]
    if not train_rows:
        raise ConfigError(f"dataset {cfg.dataset!r} has no training examples")
    progress.update(0, cfg.max_steps, message=f"training on {len(train_rows)} examples", force=True)
    model, summary = train_model(cfg, train_rows, val_rows, vocab.size, dcfg["max_len"], mask_settings,
                                 progress, device)
    # under a time budget the steps that ran are the whole job: the bar ends full and says why it stopped
    total = summary["steps"] if summary["stopped_by"] == "time_budget" else cfg.max_steps
    progress.update(summary["steps"], total, message=f"{summary['stop_reason']}; evaluating on the test split",
                    force=True, stop_reason=summary["stop_reason"])
    if cfg.ngram_order:
        ngram = fit_ngram(train_rows, cfg.ngram_order, vocab.size)
    else:
        progress.update(summary["steps"], total, message="choosing the n-gram order", force=True)
        ngram = select_ngram(train_rows, list(dsd["validation"]), vocab.size)
    report = evaluate(model, test_rows, ngram, device, cfg.batch_size)
    result = {"name": cfg.name, "config": cfg.to_dict(), "config_hash": cfg.config_hash(), "dataset": cfg.dataset,
              "dataset_hash": settings.get("config_hash"), "train": summary, "eval": report.to_dict()}
    model = model.cpu()
    _write_outputs(out_dir, model, vocab, result, cfg.overwrite)
    result["checkpoint"] = str(out_dir / CHECKPOINT_FILE)
    if cfg.convert:
        progress.update(summary["steps"], total, message="converting to TransformerLens", force=True)
        result.update(_convert(model, vocab, test_rows, model_dir, result, cfg.overwrite))
    result["wall_s"] = time.time() - t0
    return {k: v for k, v in result.items() if k != "config"}


def _write_outputs(out_dir: Path, model, vocab, result: dict, overwrite: bool) -> None:
    # the name was checked before training; atomic_folder checks it again now (another job may have
    # taken it meanwhile) and refuses unless the config asked to overwrite
    with atomic_folder(out_dir, overwrite=overwrite) as tmp:
        meta = {k: result[k] for k in ("dataset", "dataset_hash", "eval")} | {"train": result["config"]}
        save_checkpoint(model, tmp / CHECKPOINT_FILE, vocab.to_json(), meta)
        (tmp / RESULT_FILE).write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")


def _convert(model, vocab, test_rows, model_dir: Path, result: dict, overwrite: bool) -> dict[str, Any]:
    from fra_core.restoration.convert import TOLERANCE, convert_and_verify, save_converted

    texts = [r["text"] for r in test_rows[:200]]
    tl, worst, n = convert_and_verify(model, vocab, texts=texts)
    if worst > TOLERANCE:
        return {"converted": None, "max_abs_dlogit": worst}
    meta = {"origin": "restoration-training", "checkpoint": str(Path(result.get("checkpoint", "")).resolve()),
            "restoration_config": model.cfg.to_dict(), "rope_quirk": model.cfg.rope_quirk, "max_abs_dlogit": worst,
            "verified_batches": n, "tolerance": TOLERANCE, "eval": result["eval"], "dataset": result["dataset"],
            "description": f"character restoration encoder, {model.cfg.n_layers} layers, bidirectional RoPE"}
    save_converted(tl, vocab, model_dir, meta, overwrite=overwrite)
    return {"converted": str(model_dir), "max_abs_dlogit": worst}


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m fra_core train-restoration",
                                     description="Train a restoration model from a TrainRestorationConfig YAML.")
    parser.add_argument("--config", required=True, help="YAML file (as saved by the restoration training page)")
    args = parser.parse_args(argv)
    try:
        cfg = TrainRestorationConfig.load_yaml(args.config)
        result = run_train_restoration(cfg, ConsoleProgress("train-restoration", every_s=10.0))
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ev = result["eval"]
    print(f"test: top1 {ev['model']['top1']:.4f} (n-gram {ev['ngram']['top1']:.4f}), "
          f"top5 {ev['model']['top5']:.4f}, cer {ev['model']['cer']:.4f}")
    print(f"checkpoint: {result['checkpoint']}")
    if result.get("converted"):
        print(f"model: {result['converted']} (max |dlogit| {result['max_abs_dlogit']:.2e})")
    return 0
