"""Text back from stored token strings (for opening a stored example in the explorer)."""

import pytest

from fra_core.models.demo import demo_texts, load_demo_model
from fra_core.models.prompting import PromptError, prompt_tokens, text_for_str_tokens


@pytest.fixture(scope="module")
def demo():
    return load_demo_model("cpu")


def test_text_for_str_tokens_round_trips_with_and_without_bos(demo):
    text = demo_texts(1, seed=3, n_words=20)[0]
    stored = [str(t) for t in demo.to_str_tokens(prompt_tokens(demo, text)[0])]
    assert stored[0] == demo.tokenizer.bos_token
    again, offset = text_for_str_tokens(demo, stored)
    assert offset == 0 and [str(t) for t in demo.to_str_tokens(prompt_tokens(demo, again)[0])] == stored
    again, offset = text_for_str_tokens(demo, stored[1:])  # a job run without BOS: positions shift by one
    assert offset == 1 and [str(t) for t in demo.to_str_tokens(prompt_tokens(demo, again)[0])][1:] == stored[1:]


def test_tokens_no_text_reproduces_are_a_clear_error(demo):
    with pytest.raises(PromptError, match="do not come back"):
        text_for_str_tokens(demo, ["<bos>", "wolf", "not-a-demo-word-at-all"])
