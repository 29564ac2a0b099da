from dataclasses import dataclass

import pytest

from fra_core.config import ConfigError, JobConfig


@dataclass(frozen=True)
class ExampleConfig(JobConfig):
    model: str = "demo"
    layer: int = 1
    heads: tuple[int, ...] = (0, 1)
    lr: float = 1e-3


def test_yaml_round_trip_and_hash_stable():
    cfg = ExampleConfig(heads=(2, 3), lr=5e-4)
    again = ExampleConfig.from_yaml(cfg.to_yaml())
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()
    assert ExampleConfig(layer=0).config_hash() != cfg.config_hash()


def test_unknown_key_and_wrong_job_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown keys"):
        ExampleConfig.from_dict({"model": "demo", "layers": 3})
    with pytest.raises(ConfigError, match="expected 'ExampleConfig'"):
        ExampleConfig.from_yaml("job: OtherConfig\nmodel: demo\n")
    with pytest.raises(ConfigError, match="mapping"):
        ExampleConfig.from_yaml("- 1\n- 2\n")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ExampleConfig.load_yaml(tmp_path / "nope.yaml")
