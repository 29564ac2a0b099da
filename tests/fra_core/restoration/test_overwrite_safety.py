"""Writes never replace a folder they should not: `convert --overwrite` refuses a folder that is not a
model, and restoration training checks its output name again when it writes (taken meanwhile: refused)."""

from __future__ import annotations

import pytest

from fra_core.atf import build_vocab, clean_fragment, load_fragments, sample_path
from fra_core.restoration import train as train_mod
from fra_core.restoration.convert import cli_main
from fra_core.restoration.dataset import BuildDatasetConfig, build_restoration_dataset
from fra_core.restoration.model import save_checkpoint
from fra_core.restoration.train import TrainRestorationConfig, run_train_restoration
from tests.fra_core.restoration.test_convert import random_model


def test_convert_overwrite_never_deletes_an_unrelated_folder(workspace, tmp_path, capsys):
    vocab = build_vocab([line for f in load_fragments(sample_path()) for line in clean_fragment(f)])
    ckpt = save_checkpoint(random_model(vocab, n_layers=1, d_model=16, n_heads=2, max_len=24), tmp_path / "m.pt",
                           vocab.to_json())
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    assert cli_main(["--checkpoint", str(ckpt), "--out", str(precious), "--overwrite"]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert (precious / "chapter1.tex").read_text() == "years of work"
    # a real model folder may be overwritten when asked
    assert cli_main(["--checkpoint", str(ckpt), "--out", "restorer"]) == 0
    assert cli_main(["--checkpoint", str(ckpt), "--out", "restorer", "--overwrite"]) == 0
    assert (workspace.models / "restorer" / "model.safetensors").is_file()


def test_training_rechecks_its_output_name_when_writing(workspace, monkeypatch):
    fragments = load_fragments(sample_path())[:40]
    build_restoration_dataset(BuildDatasetConfig(name="d40", max_len=64), workspace, fragments=fragments)
    out_dir = workspace.root / "restoration" / "taken"
    real_train = train_mod.train_model

    def train_while_another_job_takes_the_name(*args, **kwargs):
        out_dir.mkdir(parents=True)
        (out_dir / "other.txt").write_text("another job's result")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_model", train_while_another_job_takes_the_name)
    cfg = TrainRestorationConfig(dataset="d40", name="taken", n_layers=1, d_model=16, n_heads=2, batch_size=4,
                                 max_steps=2, log_every=1, eval_every=2, val_examples=4, ngram_order=2,
                                 device="cpu", convert=False)
    with pytest.raises(FileExistsError, match="already exists"):
        run_train_restoration(cfg, workspace=workspace)
    assert sorted(p.name for p in out_dir.iterdir()) == ["other.txt"]
