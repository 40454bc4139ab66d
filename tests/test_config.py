"""Training configuration: defaults < YAML file < --set overrides < command-line options, all checked."""

from __future__ import annotations

import warnings

import pytest
import yaml

from minconv_cli.core.errors import MinconvError
from minconv_cli.training.config import (
    SAMPLE_DEFAULTS,
    Config,
    DataConfig,
    config_from_dict,
    parse_overrides,
    resolve_config,
)


def test_defaults_cover_every_section_and_round_trip_through_yaml(tmp_path):
    cfg = resolve_config(options={"data.paths": ["data.nc"]})
    assert cfg == Config(data=DataConfig(paths=["data.nc"]))
    text = cfg.to_yaml()
    assert set(yaml.safe_load(text)) == {"data", "model", "train", "optim"}
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert resolve_config(path) == cfg


def test_layers_apply_in_order_file_then_set_then_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model:\n  name: convlstm\n  width: 12\noptim:\n  lr: 0.01\n  weight_decay: 0.1\n"
    )
    cfg = resolve_config(
        path,
        ["optim.weight_decay=0.01", "optim.lr=3e-4", "data.variables=[z, t]"],
        {"optim.lr": 1e-3, "model.layers": None},
    )
    assert cfg.model.name == "convlstm" and cfg.model.width == 12  # from the file
    assert cfg.optim.weight_decay == 0.01  # --set beats the file
    assert cfg.optim.lr == 1e-3  # an option beats --set
    assert cfg.model.layers == Config().model.layers  # None: option not given
    assert cfg.data.variables == ["z", "t"]


def test_set_values_are_yaml_scalars():
    assert parse_overrides(["a.b=0.5", "a.c=true", "a.d=null", "a.e=[1, 2]", "a.f=text"]) == {
        "a.b": 0.5,
        "a.c": True,
        "a.d": None,
        "a.e": [1, 2],
        "a.f": "text",
    }
    cfg = resolve_config(overrides=["train.max_time=60", "train.clip_grad=null"])
    assert cfg.train.max_time == 60.0 and isinstance(cfg.train.max_time, float)
    assert cfg.train.clip_grad is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "optim.weight_dekay=0.01",
            "--set: optim.weight_dekay: unknown key (did you mean 'weight_decay'?)",
        ),
        ("trian.epochs=3", "--set: trian: unknown key (did you mean 'train'?)"),
        ("train.epochs=ten", "--set: train.epochs: expected int, got str 'ten'"),
        ("train.epochs=2.5", "--set: train.epochs: expected int, got float 2.5"),
        ("train.amp=1", "--set: train.amp: expected bool, got int 1"),
        ("train.max_time=soon", "--set: train.max_time: expected float or null, got str 'soon'"),
        ("model.name=minconvgr", "got 'minconvgr' (did you mean 'minconvgru'?)"),
        ("optim=3", "--set: optim: expected a mapping of keys, got int"),
        ("train.context=0", "train.context: must be at least 1"),
        ("optim.lr=-1", "optim.lr: must be positive"),
        ("model.kernel_size=4", "model.kernel_size: must be odd"),
        ("epochs", "--set 'epochs': expected SECTION.KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key_and_what_was_expected(override, message):
    with pytest.raises(MinconvError) as err:
        resolve_config(overrides=[override])
    assert message in str(err.value)


def test_bad_files_are_named(tmp_path):
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("train:\n  epoch: 3\n")
    with pytest.raises(
        MinconvError, match=r"bad_key.yaml: train.epoch: unknown key \(did you mean 'epochs'\?\)"
    ):
        resolve_config(bad_key)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(MinconvError, match="broken.yaml: not valid YAML"):
        resolve_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(MinconvError, match="scalar.yaml: expected a mapping"):
        resolve_config(scalar)
    with pytest.raises(MinconvError, match="missing.yaml: cannot read config"):
        resolve_config(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert resolve_config(empty) == resolve_config()


def test_precision_defaults_to_auto_and_the_old_amp_key_still_reads(tmp_path):
    assert resolve_config().train.precision == "auto"
    assert resolve_config(options={"train.precision": "bf16"}).train.precision == "bf16"
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  amp: true\n")
    with pytest.warns(FutureWarning, match="train.amp is deprecated.*precision=bf16"):
        cfg = resolve_config(old)
    assert cfg.train.precision == "bf16" and "amp" not in cfg.to_dict()["train"]
    # an old run's stored config (amp: false, no precision) resumes in fp32, silently
    stored = Config().to_dict()
    stored["train"].pop("precision")
    stored["train"]["amp"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_config(base=stored).train.precision == "fp32"
        assert config_from_dict(stored).train.precision == "fp32"
    with pytest.raises(MinconvError, match="train.precision: expected one of fp32, bf16, auto"):
        resolve_config(overrides=["train.precision=fp16"])


def test_a_single_name_is_accepted_where_a_list_is_expected():
    cfg = resolve_config(options={"data.variables": "z", "data.static": ["lsm"]})
    assert cfg.data.variables == ["z"] and cfg.data.static == ["lsm"]


def test_a_stored_config_is_a_base_that_later_layers_override():
    stored = resolve_config(overrides=["model.width=7", "train.epochs=2"]).to_dict()
    assert config_from_dict(stored).model.width == 7
    cfg = resolve_config(options={"train.epochs": 5}, base=stored)
    assert cfg.model.width == 7 and cfg.train.epochs == 5


def test_without_data_the_sample_defaults_apply_below_everything_the_user_says(tmp_path):
    sample = resolve_config()
    assert sample.data.paths == []
    assert sample.train.max_time == SAMPLE_DEFAULTS["train"]["max_time"]
    assert sample.data.stride == SAMPLE_DEFAULTS["data"]["stride"]
    assert resolve_config(overrides=["train.max_time=null"]).train.max_time is None
    assert resolve_config(options={"data.paths": ["d.nc"]}).train.max_time is None
