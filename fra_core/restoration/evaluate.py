"""Evaluation on held-out fragments: top-1/top-5 accuracy on masked characters and CER by gap length,
for the model and for the character n-gram baseline on exactly the same masked positions.

A *gap* is a maximal run of consecutive masked positions (single-character masks are gaps of length
1). Gaps have known length (one <mask> per lost character, as in Aeneas' known-length setting), so the
CER of a gap is the share of its characters whose top-1 prediction is wrong; `cer_by_gap` reports it
per gap-length bucket, `cer` over all masked characters (equal to 1 - top1 for known-length gaps).

`restore_text` is the interactive "restore this line" helper: "_" marks each character to restore.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from fra_core.atf import (
    BOS_ID,
    GAP_ID,
    LINE_SEP,
    MASK_ID,
    PAD_ID,
    SPECIALS,
    UNK_ID,
    CharVocab,
    CleanOptions,
    clean_text_line,
)
from fra_core.restoration.dataset import IGNORE_INDEX
from fra_core.restoration.ngram import NgramModel

GAP_BUCKETS = ((1, 1, "1"), (2, 2, "2"), (3, 5, "3-5"), (6, 10, "6-10"), (11, 10**9, "11+"))


@dataclass
class Scores:
    """Running totals for one predictor."""

    n: int = 0
    top1: int = 0
    top5: int = 0
    by_gap: dict[str, list[int]] = field(default_factory=lambda: {b[2]: [0, 0, 0] for b in GAP_BUCKETS})

    def add_example(self, labels: np.ndarray, top: dict[int, list[int]]) -> None:
        """labels [pos] (IGNORE_INDEX where not masked); top: position -> candidate ids, best first."""
        for start, end in gap_runs(labels != IGNORE_INDEX):
            errors = 0
            for i in range(start, end):
                cands = top[i]
                self.n += 1
                self.top1 += int(cands[0] == labels[i])
                self.top5 += int(labels[i] in cands[:5])
                errors += int(cands[0] != labels[i])
            entry = self.by_gap[bucket_of(end - start)]
            entry[0] += errors
            entry[1] += end - start
            entry[2] += 1

    def summary(self) -> dict[str, Any]:
        n = max(self.n, 1)
        return {
            "masked_chars": self.n, "top1": self.top1 / n, "top5": self.top5 / n, "cer": 1 - self.top1 / n,
            "cer_by_gap": {k: {"cer": e / c if c else None, "chars": c, "gaps": g}
                           for k, (e, c, g) in self.by_gap.items()},
        }


def bucket_of(length: int) -> str:
    return next(name for lo, hi, name in GAP_BUCKETS if lo <= length <= hi)


def gap_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of True."""
    runs, start = [], None
    for i, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _batches(rows: Sequence[dict], batch_size: int):
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        width = max(len(r["masked_ids"]) for r in chunk)
        ids = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
        for j, r in enumerate(chunk):
            ids[j, :len(r["masked_ids"])] = torch.tensor(r["masked_ids"])
        yield chunk, ids


@torch.no_grad()
def model_topk(model, rows: Sequence[dict], batch_size: int = 16, k: int = 5,
               device: str | torch.device = "cpu") -> list[dict[int, list[int]]]:
    """Per example: masked position -> top-k ids (special ids excluded: they are never the answer)."""
    model.eval()
    out = []
    for chunk, ids in _batches(rows, batch_size):
        logits = model(ids.to(device)).float()
        logits[..., :len(SPECIALS)] = -torch.inf
        top = logits.topk(k, dim=-1).indices.cpu()
        for j, r in enumerate(chunk):
            positions = [i for i, t in enumerate(r["masked_ids"]) if t == MASK_ID]
            out.append({i: top[j, i].tolist() for i in positions})
    return out


@dataclass
class EvalReport:
    model: dict[str, Any]
    ngram: dict[str, Any]
    n_examples: int
    n_fragments: int
    ngram_order: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> list[dict[str, Any]]:
        """Rows for a page table: metric, model, n-gram baseline."""
        rows = [{"metric": m, "model": self.model[m], "ngram": self.ngram[m]} for m in ("top1", "top5", "cer")]
        for bucket in self.model["cer_by_gap"]:
            mg, ng = self.model["cer_by_gap"][bucket], self.ngram["cer_by_gap"][bucket]
            if mg["chars"]:
                rows.append({"metric": f"cer gap {bucket} ({mg['gaps']} gaps)", "model": mg["cer"], "ngram": ng["cer"]})
        return rows


def fit_ngram(train_rows: Sequence[dict], order: int, vocab_size: int) -> NgramModel:
    return NgramModel(order, vocab_size).fit(r["input_ids"] for r in train_rows)


def select_ngram(train_rows: Sequence[dict], val_rows: Sequence[dict], vocab_size: int,
                 orders: Sequence[int] = (3, 4, 5, 6, 7)) -> NgramModel:
    """The n-gram (of `orders`) with the best top-1 on the validation masks: a fair, tuned baseline."""
    best, best_top1 = None, -1.0
    rows = [r for r in val_rows if MASK_ID in r["masked_ids"]]
    for order in orders:
        ngram, scores = fit_ngram(train_rows, order, vocab_size), Scores()
        for r in rows:
            scores.add_example(np.asarray(r["labels"]), ngram.restore(r["masked_ids"]))
        if scores.summary()["top1"] > best_top1:
            best, best_top1 = ngram, scores.summary()["top1"]
    return best


def evaluate(model, test_rows: Sequence[dict], ngram: NgramModel, device="cpu", batch_size: int = 16) -> EvalReport:
    """Model and n-gram baseline on the same masked positions of `test_rows`."""
    rows = [r for r in test_rows if MASK_ID in r["masked_ids"]]
    model_scores, ngram_scores = Scores(), Scores()
    for r, top in zip(rows, model_topk(model, rows, batch_size, device=device)):
        labels = np.asarray(r["labels"])
        model_scores.add_example(labels, top)
        ngram_scores.add_example(labels, ngram.restore(r["masked_ids"]))
    return EvalReport(model_scores.summary(), ngram_scores.summary(), len(rows),
                      len({r["fragment_id"] for r in rows}), ngram.order)


# ----------------------------------------------------------------------------- interactive restoration
@torch.no_grad()
def restore_text(model, vocab: CharVocab, text: str, mask_char: str = "_", top_k: int = 5,
                 atf: bool = False) -> dict[str, Any]:
    """Top candidates for every `mask_char` in `text` (one line or several, joined by newlines).

    With atf=True the text is cleaned first with default options (gaps -> <gap>), "_" still marking
    the characters to restore. Returns {"text", "best", "positions": [{index, candidates: [(char, p)]}]}.
    """
    if atf:
        text = LINE_SEP.join(_clean_keep_masks(line, mask_char) for line in text.splitlines() if line.strip())
    if mask_char not in text:
        raise ValueError(f"mark the characters to restore with {mask_char!r}")
    if len(text) + 1 > model.cfg.max_len:
        raise ValueError(f"text has {len(text)} characters; the model reads at most {model.cfg.max_len - 1}")
    ids = [BOS_ID] + [MASK_ID if ch == mask_char else _char_id(vocab, ch) for ch in text]
    probs = torch.softmax(model.eval()(torch.tensor([ids])).float()[0], dim=-1)
    probs[:, :len(SPECIALS)] = 0
    best, positions = list(text), []
    for i, ch in enumerate(text):
        if ch != mask_char:
            continue
        p, idx = probs[i + 1].topk(top_k)
        cands = [(vocab.token(int(t)), float(q)) for q, t in zip(p, idx)]
        positions.append({"index": i, "candidates": cands})
        best[i] = cands[0][0]
    return {"text": text, "best": "".join(best), "positions": positions}


def _char_id(vocab: CharVocab, ch: str) -> int:
    """A character's id; the gap spellings x and … (never content in cleaned text) are <gap>."""
    idx = vocab.id_of(ch)
    return GAP_ID if idx == UNK_ID and ch in ("x", "…") else idx


def _clean_keep_masks(line: str, mask_char: str) -> str:
    """Clean one ATF line (with or without a line number), protecting the mask characters."""
    from fra_core.atf import classify_line

    parsed = classify_line(line)
    content = parsed.content if parsed.kind == "text" else line
    placeholder = "\ue000"  # a private-use character no ATF markup rule touches
    cleaned = clean_text_line("", content.replace(mask_char, placeholder), CleanOptions())
    return cleaned.text.replace(placeholder, mask_char)
