"""Every job config field is checked against its declared type, with one line naming field, value, type."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fra_core.config import ConfigError, JobConfig
from fra_core.jobs import JOB_KINDS, config_class


@dataclass(frozen=True)
class Typed(JobConfig):
    name: str = "x"
    layer: int = 1
    lr: float = 1e-3
    flag: bool = True
    heads: tuple[int, ...] = ()
    refs: tuple[str, ...] = ()
    limit: int | None = None


@pytest.mark.parametrize("field, value, expected", [
    ("flag", "no", "flag = 'no' (str); expected bool"),
    ("flag", 0, "flag = 0 (int); expected bool"),
    ("layer", 1.5, "layer = 1.5 (float); expected int"),
    ("layer", True, "layer = True (bool); expected int"),
    ("layer", "1", "layer = '1' (str); expected int"),
    ("lr", "fast", "lr = 'fast' (str); expected float"),
    ("name", 3, "name = 3 (int); expected str"),
    ("heads", [0, "1"], "heads = [0, '1'] (list); expected list of int"),
    ("heads", "3", "heads = '3' (str); expected list of int"),
    ("refs", 3, "refs = 3 (int); expected list of str"),
    ("limit", 2.5, "limit = 2.5 (float); expected int or null"),
])
def test_wrong_types_are_refused_in_one_line(field, value, expected):
    with pytest.raises(ConfigError) as info:
        Typed.from_dict({field: value})
    message = str(info.value)
    assert message == f"Typed: {expected}" and "\n" not in message


def test_right_types_pass_and_lists_become_tuples():
    cfg = Typed.from_dict({"name": "n", "layer": 2, "lr": 1, "flag": False, "heads": [0, 1], "refs": ["a"],
                           "limit": None})
    assert cfg == Typed(name="n", layer=2, lr=1, flag=False, heads=(0, 1), refs=("a",), limit=None)
    assert Typed.from_dict({"limit": 5}).limit == 5
    # a YAML scalar for a list field is a list of one (`q_saes: my-sae` in a hand-written config)
    assert Typed.from_dict({"heads": 3, "refs": "demo"}) == Typed(heads=(3,), refs=("demo",))
    assert Typed.from_dict({"refs": ""}).refs == ()


def test_the_issue_examples_on_the_real_accumulation_config():
    cls = config_class("accumulate")
    with pytest.raises(ConfigError, match=r"include_diagonal = 'no' \(str\); expected bool"):
        cls.from_yaml("include_diagonal: 'no'\n")
    with pytest.raises(ConfigError, match=r"layer = 1\.5 \(float\); expected int"):
        cls.from_yaml("layer: 1.5\n")


@pytest.mark.parametrize("kind", sorted(JOB_KINDS))
def test_every_job_configs_defaults_round_trip(kind):
    cls = config_class(kind)
    cfg = cls()
    assert cls.from_yaml(cfg.to_yaml()) == cfg
