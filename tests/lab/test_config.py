"""The run configuration: files, typed overrides, and every bad key or value named clearly."""

from __future__ import annotations

import pytest

from seglosses.lab.config import (
    ABSENT,
    RunConfig,
    apply_overrides,
    config_diff,
    config_from_dict,
    config_to_dict,
    envelope_config,
    load_config,
    save_config,
)


def test_yaml_round_trip_keeps_every_value(tmp_path):
    config = apply_overrides(RunConfig(), ["train.epochs=7", "optim.name=sgd", "loss.name=dice",
                                           "loss.options.squared=true", "envelope.preset=atk_sm",
                                           "data.image_size=[64, 96]"])
    save_config(config, tmp_path / "config.yaml")
    loaded = load_config(tmp_path / "config.yaml")
    assert loaded == config
    assert loaded.data.image_size == (64, 96)  # a tuple again, as typed
    assert config_to_dict(loaded)["loss"] == {"name": "dice", "options": {"squared": True}}


def test_toml_and_yaml_give_the_same_config(tmp_path):
    (tmp_path / "run.toml").write_text('[train]\nepochs = 3\nbatch_size = 2\n[optim]\nlr = 3e-4\n'
                                       '[loss]\nname = "focal"\n[loss.options]\ngamma = 2.0\n')
    (tmp_path / "run.yaml").write_text("train: {epochs: 3, batch_size: 2}\noptim: {lr: 3e-4}\n"
                                       "loss: {name: focal, options: {gamma: 2.0}}\n")
    from_toml, from_yaml = load_config(tmp_path / "run.toml"), load_config(tmp_path / "run.yaml")
    assert from_toml == from_yaml
    assert from_yaml.optim.lr == 3e-4  # YAML 1.1 reads 3e-4 as a string; the float field converts it


def test_a_typo_in_a_file_names_the_file_and_the_closest_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epcohs: 3\n")
    with pytest.raises(ValueError, match=r"`train`.*'epcohs'.*run\.yaml.*Did you mean 'train\.epochs'\?"):
        load_config(path)
    path.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ValueError, match=r"Did you mean 'train'\?"):
        load_config(path)


@pytest.mark.parametrize(("values", "error", "pattern"), [
    ({"train": {"epochs": "three"}}, TypeError, r"`train\.epochs` to be an integer, but got 'three'"),
    ({"train": {"epochs": 0}}, ValueError, r"`train\.epochs` to be positive, but got 0"),
    ({"train": {"amp": "yes"}}, TypeError, r"`train\.amp` to be true or false"),
    ({"train": {"select": "bset"}}, ValueError, r"`train\.select` to be one of .*Did you mean 'best'"),
    ({"optim": {"name": "adam"}}, ValueError, r"`optim\.name` to be one of \['adamw', 'sgd'\]"),
    ({"optim": {"lr": -1.0}}, ValueError, r"`optim\.lr` to be positive"),
    ({"train": {"device": "gpu"}}, ValueError, r"`train\.device`"),
    ({"loss": {"name": "dise"}}, ValueError, r"`loss\.name` to be a registered loss, but got 'dise'\. Did you mean"),
    ({"model": {"name": "unet3"}}, ValueError, r"`model\.name` to be one of .*Did you mean 'unet'"),
    ({"envelope": {"preset": "paper_bset"}}, ValueError, r"`envelope\.preset`.*Did you mean 'paper_best'"),
    ({"envelope": {"options": {"kapa": 2.0}}}, ValueError, r"`envelope\.options`.*'kapa'.*envelope\.options\.kappa"),
    ({"envelope": {"options": {"kappa": -1.0}}}, ValueError, r"`kappa`.*envelope\.options"),
    ({"data": {"image_size": [64]}}, ValueError, r"`data\.image_size` to be a list of 2 values"),
])
def test_bad_values_name_their_dotted_key(values, error, pattern):
    with pytest.raises(error, match=pattern):
        config_from_dict(values)


def test_overrides_are_parsed_by_the_type_of_their_key():
    config = apply_overrides(RunConfig(), [
        "train.epochs=3", "optim.lr=1e-3", "train.amp=false", "data.max_train=null", "train.out_dir=123",
        "data.image_size=[32,48]", "loss.options.class_weights=[1, 2.5]", "envelope.options.kappa=1.5",
        "train.augment.rotation_degrees=15",
    ])
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.optim.lr == 1e-3 and config.train.amp is False
    assert config.train.out_dir == "123"  # a string field keeps the text
    assert config.data.max_train is None and config.data.image_size == (32, 48)
    assert config.loss.options == {"class_weights": [1, 2.5]}
    assert config.envelope.preset == "erm" and config.envelope.options == {"kappa": 1.5}
    assert config.train.augment.rotation_degrees == 15.0
    assert apply_overrides(config, ["envelope=none"]).envelope is None


def test_bad_overrides_suggest_the_closest_key():
    with pytest.raises(ValueError, match=r"'btach_size'\. Did you mean 'train\.batch_size'\?"):
        apply_overrides(RunConfig(), ["train.btach_size=4"])
    with pytest.raises(ValueError, match=r"'section\.key=value'"):
        apply_overrides(RunConfig(), ["train.epochs"])
    with pytest.raises(TypeError, match=r"`optim\.lr` to be a number, but got 'fast'"):
        apply_overrides(RunConfig(), ["optim.lr=fast"])


def test_envelope_total_epochs_follow_the_run_unless_overridden():
    config = apply_overrides(RunConfig(), ["train.epochs=12", "envelope.preset=paper_best"])
    assert envelope_config(config).total_epochs == 12
    assert envelope_config(apply_overrides(config, ["envelope.options.total_epochs=20"])).total_epochs == 20


def test_config_diff_lists_the_dotted_keys_that_differ():
    first = RunConfig()
    second = apply_overrides(first, ["train.epochs=3", "loss.options.squared=true", "envelope.preset=atk"])
    diff = config_diff(first, second)
    assert diff["train.epochs"] == (50, 3)
    assert diff["loss.options.squared"] == (ABSENT, True)
    assert diff["envelope"] == (None, ABSENT) and diff["envelope.preset"] == (ABSENT, "atk")
    assert config_diff(first, config_from_dict(config_to_dict(first))) == {}


def test_missing_and_unparsable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        load_config(tmp_path / "nothere.yaml")
    (tmp_path / "broken.yaml").write_text("train: [epochs: 3\n")
    with pytest.raises(ValueError, match=r"valid YAML.*broken\.yaml"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "broken.toml").write_text("[train\n")
    with pytest.raises(ValueError, match=r"valid TOML.*broken\.toml"):
        load_config(tmp_path / "broken.toml")
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.toml"):
        load_config(tmp_path / "run.json")
