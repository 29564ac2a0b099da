"""Train an SAE with SAELens as a background job (kind ``train-sae``) or headless (``python -m fra_core
train-sae --config cfg.yaml``).

SAELens builds the pieces: `LanguageModelSAETrainingRunner(cfg, override_model=, override_dataset=)`
gives the activations store and the training SAE; we drive `SAETrainer.fit()` ourselves instead of
`runner.run()` (which installs signal handlers, so it fails off the main thread, and computes metrics
only for wandb). Our trainer subclass adds, after each SAELens step: `build_train_step_log_dict` every
`log_every` steps -> `progress.log_metrics` (loss, L0, explained variance, dead features) and
`progress.update` (which raises `JobCancelled` when the user cancels).

The SAE is saved in SAELens format (``cfg.json`` + ``sae_weights.safetensors``) plus ``fra_meta.json``
(our config, its hash, final metrics) into a temp folder that is renamed to ``saes/<name>`` only when
complete: a cancelled or failed job leaves nothing, and an existing SAE is never overwritten.
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

from fra_core.atomic import atomic_folder
from fra_core.config import ConfigError, JobConfig
from fra_core.errors import FRAStudioError
from fra_core.jobs import ConsoleProgress, NullProgress
from fra_core.workspace import Workspace, check_name

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")


class SAEExistsError(FRAStudioError):
    """The output SAE name is taken; we never overwrite an SAE."""


@dataclass(frozen=True)
class TrainSAEConfig(JobConfig):
    """One SAE training run. `d_sae` = 0 means `expansion_factor` * d_in (d_in comes from the hook).

    `sparsity_coefficient` is the L1 coefficient (standard) or the L0 coefficient (jumprelu); `k` the
    number of active features (topk: per token, batchtopk: on average). `dataset` is a `fra_core.datasets`
    spec: ``demo`` (the demo language, seeded by `seed`), a .txt/.jsonl path or a name in the workspace's
    datasets folder, ``disk:<saved HF dataset>``, ``hf:<hub dataset>``; its first `n_texts` texts are used.
    """

    model: str = "demo"
    hook_name: str = "blocks.1.ln1.hook_normalized"
    architecture: str = "standard"
    d_sae: int = 0
    expansion_factor: int = 4
    sparsity_coefficient: float = 1.0
    k: int = 8
    training_tokens: int = 200_000
    lr: float = 3e-4
    lr_warm_up_steps: int = 0
    sparsity_warm_up_steps: int = 0
    train_batch_size_tokens: int = 1024
    context_size: int = 64
    store_batch_size_prompts: int = 16
    n_batches_in_buffer: int = 16
    dataset: str = "demo"
    n_texts: int = 2000
    output_name: str = "sae"
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    eval_batches: int = 2
    eval_tokens: int = 100_000  # held-out tokens for the final figures (fra_core.sae.heldout); 0 = training batches

    def validate(self) -> "TrainSAEConfig":
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        check_name(self.output_name, "SAE name")
        for name in ("training_tokens", "train_batch_size_tokens", "context_size", "store_batch_size_prompts",
                     "n_batches_in_buffer", "n_texts", "log_every", "k"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.eval_tokens < 0:
            raise ConfigError(f"eval_tokens must be >= 0 (0 = evaluate on the last training batches), got {self.eval_tokens}")
        if self.d_sae < 0 or (self.d_sae == 0 and self.expansion_factor <= 0):
            raise ConfigError(f"need d_sae > 0 or expansion_factor > 0 (got d_sae={self.d_sae}, "
                              f"expansion_factor={self.expansion_factor})")
        if self.lr <= 0 or self.sparsity_coefficient < 0:
            raise ConfigError(f"lr must be > 0 and sparsity_coefficient >= 0 "
                              f"(got {self.lr}, {self.sparsity_coefficient})")
        if self.training_tokens < self.train_batch_size_tokens:
            raise ConfigError(f"training_tokens={self.training_tokens} is less than one batch "
                              f"(train_batch_size_tokens={self.train_batch_size_tokens})")
        if self.n_batches_in_buffer * self.context_size < self.train_batch_size_tokens:
            raise ConfigError(
                f"n_batches_in_buffer * context_size = {self.n_batches_in_buffer * self.context_size} must be >= "
                f"train_batch_size_tokens = {self.train_batch_size_tokens} (SAELens's mixing buffer)")
        return self


# ----------------------------------------------------------------------------- data
def build_text_dataset(spec: str, n_texts: int, seed: int, workspace: Workspace):
    """A `datasets.Dataset` with a "text" column: the first `n_texts` texts of a `fra_core.datasets` spec
    (``demo``, a .txt/.jsonl path or workspace dataset name, ``disk:<folder>``, ``hf:<hub name>``)."""
    import datasets

    from fra_core.datasets import open_texts

    spec = (spec or "").strip()
    spec = spec[len("file:"):] if spec.startswith("file:") else spec
    texts = [t for t in open_texts(spec, seed=seed, workspace=workspace).texts(n_texts) if t.strip()]
    if not texts:
        raise ConfigError(f"dataset {spec!r} has no text")
    return datasets.Dataset.from_dict({"text": texts})


# ----------------------------------------------------------------------------- SAELens config
def build_runner_config(cfg: TrainSAEConfig, d_in: int, device: str):
    """The `LanguageModelSAERunnerConfig` for `cfg` (no wandb, no checkpoints, no output folder)."""
    from sae_lens import (
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAEConfig,
        LanguageModelSAERunnerConfig,
        LoggingConfig,
        StandardTrainingSAEConfig,
        TopKTrainingSAEConfig,
    )

    d_sae = cfg.d_sae or cfg.expansion_factor * d_in
    common = dict(d_in=d_in, d_sae=d_sae, dtype="float32", device=device,
                  reshape_activations="hook_z" if cfg.hook_name.endswith("hook_z") else "none")
    if cfg.architecture == "standard":
        sae_cfg = StandardTrainingSAEConfig(l1_coefficient=cfg.sparsity_coefficient,
                                            l1_warm_up_steps=cfg.sparsity_warm_up_steps, **common)
    elif cfg.architecture == "topk":
        sae_cfg = TopKTrainingSAEConfig(k=int(cfg.k), **common)
    elif cfg.architecture == "batchtopk":
        sae_cfg = BatchTopKTrainingSAEConfig(k=float(cfg.k), **common)
    else:
        sae_cfg = JumpReLUTrainingSAEConfig(l0_coefficient=cfg.sparsity_coefficient,
                                            l0_warm_up_steps=cfg.sparsity_warm_up_steps, **common)
    total_steps = cfg.training_tokens // cfg.train_batch_size_tokens
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg, model_name=cfg.model, hook_name=cfg.hook_name, dataset_path=f"fra:{cfg.dataset}",
        is_dataset_tokenized=False, streaming=False, context_size=cfg.context_size,
        n_batches_in_buffer=cfg.n_batches_in_buffer, training_tokens=cfg.training_tokens,
        store_batch_size_prompts=cfg.store_batch_size_prompts, train_batch_size_tokens=cfg.train_batch_size_tokens,
        device=device, seed=cfg.seed, dtype="float32", prepend_bos=True, lr=cfg.lr,
        lr_warm_up_steps=cfg.lr_warm_up_steps, dead_feature_window=max(1, min(1000, total_steps // 4)),
        feature_sampling_window=max(1, min(2000, total_steps // 2)), n_batches_for_norm_estimate=10,
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=None, n_checkpoints=0,
        verbose=False,
    )


def _live_trainer_class():
    from sae_lens.training.sae_trainer import SAETrainer

    class LiveSAETrainer(SAETrainer):
        """SAELens's trainer plus live metrics / progress / cancellation after every step."""

        def __init__(self, *args, progress=None, log_every: int = 10, keep_batches: int = 2, **kwargs):
            super().__init__(*args, **kwargs)
            self.progress, self.log_every = progress or NullProgress(), log_every
            self.history: list[dict[str, float]] = []
            self.total_steps = self.cfg.total_training_samples // self.cfg.train_batch_size_samples
            self.recent_batches: collections.deque = collections.deque(maxlen=max(1, keep_batches))

        def step(self, batch):
            self.recent_batches.append(batch.detach())  # raw activations, for the final evaluation
            out = super().step(batch)
            step = self.n_training_steps + 1  # completed steps (SAELens increments after step())
            if step % self.log_every == 0 or step == 1 or step >= self.total_steps:
                d = self.build_train_step_log_dict(out, self.n_training_samples)
                row = {"loss": d["losses/overall_loss"], "l0": d["metrics/l0"],
                       "explained_variance": d["metrics/explained_variance"],
                       "dead_features": d["sparsity/dead_features"], "lr": d["details/current_learning_rate"],
                       "tokens": self.n_training_samples}
                row.update({k.split("/", 1)[1]: v for k, v in d.items()
                            if k.startswith("losses/") and k != "losses/overall_loss"})
                self.history.append({"step": step, **row})
                self.progress.log_metrics(step, **row)
                self._message = (f"step {step}/{self.total_steps} · loss {row['loss']:.4g} · L0 {row['l0']:.1f} · "
                                 f"EV {row['explained_variance']:.3f}")
            self.progress.update(self.n_training_samples, self.cfg.total_training_samples,
                                 message=getattr(self, "_message", f"step {step}/{self.total_steps}"))
            return out

    return LiveSAETrainer


# ----------------------------------------------------------------------------- evaluation + saving
def evaluate_sae(sae, batches) -> dict[str, float]:
    """L0, explained variance, MSE, dead features (never active) over activation batches [n, d_in]."""
    import torch

    n_tok, l0_sum, sse, fired = 0, 0.0, 0.0, None
    xs = []
    with torch.no_grad():
        for x in batches:
            acts = sae.encode(x)
            recon = sae.decode(acts)
            l0_sum += float((acts > 0).sum())
            sse += float((recon - x).pow(2).sum())
            act_any = (acts > 0).any(0)
            fired = act_any if fired is None else fired | act_any
            n_tok += x.shape[0]
            xs.append(x)
        x_all = torch.cat(xs)
        total_var = float((x_all - x_all.mean(0)).pow(2).sum())
    d_sae = int(fired.numel())
    return {"l0": l0_sum / n_tok, "explained_variance": 1.0 - sse / max(total_var, 1e-12),
            "mse": sse / n_tok, "dead_features": int((~fired).sum()), "d_sae": d_sae,
            "l0_fraction": l0_sum / n_tok / d_sae, "eval_tokens": n_tok}


def _set_metadata(sae, rcfg, model_ref: str) -> None:
    md = sae.cfg.metadata
    md.dataset_path, md.hook_name, md.model_name = rcfg.dataset_path, rcfg.hook_name, model_ref
    md.model_class_name, md.hook_head_index, md.context_size = "HookedTransformer", None, rcfg.context_size
    md.seqpos_slice, md.prepend_bos = rcfg.seqpos_slice, rcfg.prepend_bos
    md.model_from_pretrained_kwargs = {}
    md.exclude_special_tokens, md.sequence_separator_token = rcfg.exclude_special_tokens, rcfg.sequence_separator_token
    md.disable_concat_sequences = rcfg.disable_concat_sequences


def _drop_view_fallback(record: logging.LogRecord) -> bool:
    """SAELens logs an "error" for every hook_z batch (non-contiguous view) before reshaping fine."""
    msg = record.getMessage()
    return not (msg.startswith("Error during view operation") or msg.startswith("Attempting to use reshape"))


def prepare(cfg: TrainSAEConfig, model=None, workspace: Workspace | None = None):
    """Validate `cfg` against the model and workspace: (model, d_in, runner config, dataset, device, output)."""
    from fra_core.devices import pick_device
    from fra_core.models import load_model
    from fra_core.sae.loaders import hook_width

    cfg.validate()
    workspace = workspace or Workspace.from_env()
    out_dir = workspace.saes / cfg.output_name
    if out_dir.exists():
        raise SAEExistsError(f"an SAE named {cfg.output_name!r} already exists at {out_dir}; "
                             f"choose another output name (we never overwrite an SAE)")
    device = pick_device(None if cfg.device == "auto" else cfg.device)
    model = model if model is not None else load_model(cfg.model, device, workspace)
    d_in = hook_width(model, cfg.hook_name)
    if cfg.context_size > model.cfg.n_ctx:
        raise ConfigError(f"context_size={cfg.context_size} exceeds the model's n_ctx={model.cfg.n_ctx}")
    if model.tokenizer is None:
        raise ConfigError(f"model {cfg.model!r} has no tokenizer, so it cannot read text datasets")
    dataset = build_text_dataset(cfg.dataset, cfg.n_texts, cfg.seed, workspace)
    return model, d_in, build_runner_config(cfg, d_in, str(device)), dataset, out_dir


def run_train_sae(cfg: TrainSAEConfig, progress=None, *, model=None,
                  workspace: Workspace | None = None) -> dict[str, Any]:
    """Train, evaluate and save one SAE; returns {"sae_name", "path", metrics...}."""
    import torch
    from sae_lens import LanguageModelSAETrainingRunner
    from sae_lens import __version__ as sae_lens_version

    t0 = time.time()
    progress = progress or NullProgress()
    workspace = workspace or Workspace.from_env()
    torch.manual_seed(cfg.seed)
    model, d_in, rcfg, dataset, out_dir = prepare(cfg, model, workspace)
    progress.update(0, cfg.training_tokens, message=f"building SAELens runner (d_in={d_in})", force=True)
    torch.manual_seed(cfg.seed)
    sae_logger = logging.getLogger("sae_lens")
    old_level = sae_logger.level
    sae_logger.addFilter(_drop_view_fallback)
    try:
        with warnings.catch_warnings():
            # SAELens warns that raw text is not pre-tokenized and compares dataset rows with tokens: expected
            warnings.filterwarnings("ignore", message=r"(Dataset is not tokenized|The training dataset contains|"
                                                      r"All samples in the training)")
            sae_logger.setLevel(logging.ERROR)  # its "you passed a dataset/model override" warnings: expected
            runner = LanguageModelSAETrainingRunner(rcfg, override_dataset=dataset, override_model=model)
            sae_logger.setLevel(old_level)
            _set_metadata(runner.sae, rcfg, cfg.model)
            trainer = _live_trainer_class()(cfg=rcfg.to_sae_trainer_config(), sae=runner.sae,
                                            data_provider=runner.activations_store, evaluator=None, progress=progress,
                                            log_every=cfg.log_every, keep_batches=cfg.eval_batches)
            sae = trainer.fit()  # raises JobCancelled from progress.update: nothing has been written yet
    finally:
        sae_logger.setLevel(old_level)
        sae_logger.removeFilter(_drop_view_fallback)
    train_s = time.time() - t0
    sae.eval()
    # final figures on held-out tokens (eval_tokens, default 100 k; fra_core.sae.heldout), or on the last
    # `eval_batches` training batches where the dataset has nothing beyond the training texts
    from fra_core.sae.heldout import heldout_metrics

    progress.update(cfg.training_tokens, cfg.training_tokens, message=f"evaluating on held-out tokens "
                    f"(up to {cfg.eval_tokens:,})", force=True)
    metrics = heldout_metrics(sae, model, cfg, workspace, list(trainer.recent_batches), evaluate_sae)
    metrics["train_s"] = train_s
    progress.update(cfg.training_tokens, cfg.training_tokens, message="saving", force=True)

    try:
        with atomic_folder(out_dir) as tmp:
            sae.save_inference_model(str(tmp))
            meta = {"name": cfg.output_name, "model": cfg.model, "hook_name": cfg.hook_name, "d_in": d_in,
                    "d_sae": sae.cfg.d_sae, "architecture": cfg.architecture, "config": cfg.to_dict(),
                    "config_hash": cfg.config_hash(), "metrics": metrics, "history": trainer.history[-200:],
                    "sae_lens_version": sae_lens_version,
                    "created": _dt.datetime.now().isoformat(timespec="seconds")}
            (tmp / "fra_meta.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
    except FileExistsError as exc:  # someone else finished first: keep theirs
        raise SAEExistsError(f"an SAE named {cfg.output_name!r} appeared at {out_dir} while training; "
                             f"not overwriting it") from exc
    return {"sae_name": cfg.output_name, "path": str(out_dir), **metrics, "wall_s": time.time() - t0}


# ----------------------------------------------------------------------------- CLI
def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m fra_core train-sae",
                                     description="Train an SAE with SAELens from a TrainSAEConfig YAML file.")
    parser.add_argument("--config", required=True, help="YAML file (as saved by the SAE page)")
    parser.add_argument("--name", help="override output_name")
    args = parser.parse_args(argv)
    try:
        cfg = TrainSAEConfig.load_yaml(args.config)
        if args.name:
            cfg = TrainSAEConfig.from_dict({**cfg.to_dict(), "output_name": args.name})
        result = run_train_sae(cfg, ConsoleProgress("train-sae"))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"L0 {result['l0']:.2f} · explained variance {result['explained_variance']:.3f} · "
          f"dead {result['dead_features']}/{result['d_sae']}")
    print(f"saved SAE to {result['path']}")
    return 0
