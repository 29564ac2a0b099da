"""The built-in demo model: real circuits, readable tokens, deterministic data."""

import subprocess
import sys

import pytest

from fra_core.models.demo import INDUCTION_THRESHOLD, WORDS, demo_texts, load_demo_model
from fra_core.models.head_scores import head_scores


@pytest.fixture(scope="module")
def demo():
    return load_demo_model("cpu")


def test_demo_has_induction_and_previous_token_heads(demo):
    scores = head_scores(demo, n_seq=16)
    assert float(scores["induction"][1].max()) >= INDUCTION_THRESHOLD
    assert float(scores["induction"][0].max()) < 0.3  # layer 0 cannot do induction on its own
    assert float(scores["previous_token"][0].max()) > 0.5


def test_demo_tokens_read_as_words(demo):
    text = demo_texts(1, seed=3)[0]
    str_tokens = demo.to_str_tokens(text)
    assert str_tokens[0] == "<bos>"
    assert str_tokens[1:] == text.split()
    assert set(text.split()) <= set(WORDS)


def test_demo_texts_are_deterministic_and_repeat_a_span():
    assert demo_texts(3, seed=1) == demo_texts(3, seed=1)
    assert demo_texts(3, seed=1) != demo_texts(3, seed=2)
    words = demo_texts(1, seed=0, n_words=48)[0].split()
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    assert len(set(grams)) < len(grams)  # some 4-gram occurs twice: the repeated span


def test_demo_cli_prints_heads_and_exits_zero(workspace):
    proc = subprocess.run([sys.executable, "-m", "fra_core", "demo"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert sum(line.startswith("L") for line in lines) == 8
    assert "OK" in lines[-1]
