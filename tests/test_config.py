from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from seqtwins.config import TrainConfig, build, parse_override, to_dict
from seqtwins.errors import SeqtwinsError


@dataclass
class Inner:
    dim: int = 8
    rate: float = 0.5
    ops: tuple[str, ...] = ("a", "b")
    name: str | None = None

    def __post_init__(self) -> None:
        if self.dim % 2:
            raise ValueError(f"inner.dim={self.dim} must be even")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    flag: bool = False


def test_layers_and_overrides_compose():
    cfg = build(
        Outer,
        {"inner": {"dim": 4}},
        {"flag": True},
        overrides=["inner.rate=1", "inner.ops=[x, y, z]", "inner.name=abc"],
    )
    assert cfg.inner.dim == 4 and cfg.flag is True
    assert cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float)
    assert cfg.inner.ops == ("x", "y", "z")
    assert cfg.inner.name == "abc"
    assert to_dict(cfg) == {
        "inner": {"dim": 4, "rate": 1.0, "ops": ["x", "y", "z"], "name": "abc"},
        "flag": True,
    }
    # round trip through plain data
    assert build(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.dim=abc", "inner.dim='abc' must be an integer"),
        ("inner.dim=2.5", "inner.dim=2.5 must be an integer"),
        ("flag=3", "flag=3 must be true or false"),
        ("inner.rate=fast", "inner.rate='fast' must be a number"),
        ("inner.dimm=3", "unknown setting 'inner.dimm'"),
        ("nothing=1", "unknown setting 'nothing'"),
        ("inner.dim=3", "inner.dim=3 must be even"),
        ("inner.dim", "must look like key=value"),
    ],
)
def test_bad_overrides_name_the_setting(override, message):
    with pytest.raises(SeqtwinsError, match=message.replace(".", r"\.").replace("[", r"\[")):
        build(Outer, overrides=[override])


def test_parse_override_reads_yaml_scalars():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=x=y") == ("a", "x=y")


def test_train_config_validation():
    with pytest.raises(SeqtwinsError, match="train.epochs=0"):
        build(TrainConfig, {"epochs": 0})
    with pytest.raises(SeqtwinsError, match="train.precision='fp16'"):
        build(TrainConfig, {"precision": "fp16"})


def test_nested_post_init_validation_is_one_line():
    """A nested dataclass that validates in ``__post_init__`` (AugmentConfig) fails inside
    ``from_dict``; ``build`` still turns it into a SeqtwinsError, not a traceback."""
    from seqtwins.config import PretrainConfig

    with pytest.raises(SeqtwinsError, match=r"augment\.mask_rate=2\.0 must be in \[0, 1\]"):
        build(PretrainConfig, overrides=["augment.mask_rate=2.0"])


def test_to_dict_copies_nested_mappings():
    from seqtwins.experiment import DataSpec, ExperimentConfig

    cfg = ExperimentConfig(data=DataSpec(synth={}), objectives={"barlow": {"train": {"lr": 0.1}}})
    out = to_dict(cfg)
    out["objectives"]["barlow"]["train"]["lr"] = 9.0
    assert cfg.objectives["barlow"]["train"]["lr"] == 0.1


def test_derived_augment_max_len_follows_the_encoder():
    from seqtwins.config import PretrainConfig

    cfg = build(PretrainConfig, overrides=["encoder.max_len=200"])
    assert cfg.augment.max_len == 200
    assert build(PretrainConfig, to_dict(cfg)) == cfg  # a saved config.yaml reloads as is
    with pytest.raises(SeqtwinsError, match="augment.max_len=50 must equal encoder.max_len=200"):
        build(PretrainConfig, overrides=["encoder.max_len=200", "augment.max_len=50"])


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused(value):
    from seqtwins.config import PretrainConfig

    with pytest.raises(SeqtwinsError, match=r"train\.lr=.* must be a finite number"):
        build(PretrainConfig, overrides=[f"train.lr={value}"])


def test_config_dataclasses_validate_at_construction():
    """Built in Python, a config fails where it is made, naming the dotted key."""
    from seqtwins.config import PretrainConfig
    from seqtwins.models.encoder import EncoderConfig

    with pytest.raises(ValueError, match=r"train\.lr=-1\.0 must be a finite number > 0"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="encoder.dim=70 must be divisible by encoder.heads=4"):
        PretrainConfig(encoder=EncoderConfig(dim=70, heads=4))


def test_yaml_problems_are_one_line(tmp_path):
    from seqtwins.config import load_yaml

    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(SeqtwinsError, match=r"twice.yaml line 3: .*'lr' is given twice"):
        load_yaml(twice)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SeqtwinsError, match="latin.yaml is not UTF-8 text"):
        load_yaml(latin)


def test_scientific_notation_without_a_dot_is_a_number():
    assert build(TrainConfig, overrides=["lr=3e-3"]).lr == 0.003
    with pytest.raises(SeqtwinsError, match="train.lr='fast' must be a number"):
        build(TrainConfig, overrides=["lr=fast"], prefix="train")


def test_prefix_names_the_key_where_the_user_wrote_it():
    with pytest.raises(SeqtwinsError, match=r"^train\.lr=-1\.0 must be a finite number > 0$"):
        build(TrainConfig, {"lr": -1}, prefix="train")
    with pytest.raises(SeqtwinsError, match=r"^pretrain\.train\.epochs=0 must be >= 1$"):
        build(TrainConfig, {"epochs": 0}, prefix="pretrain")


def test_a_batch_holds_two_users_at_least():
    with pytest.raises(SeqtwinsError, match=r"train\.batch_size=1 must be >= 2"):
        build(TrainConfig, {"batch_size": 1}, prefix="train")
