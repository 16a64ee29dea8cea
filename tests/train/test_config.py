"""fastladder.train.config.TrainConfig: files, overrides, unknown keys, validation; the CLI's flags."""
import json

import pytest

from fastladder import cli
from fastladder.errors import ArgumentError
from fastladder.train.commands import config_from_args
from fastladder.train.config import TrainConfig


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: ladder_densenet169\nlr: 0.001\ncrop_size: [448, 896]\n"
                    "model_kwargs: {mode: add}\nbackbone_lr_divisor: 2\n")
    config = TrainConfig.from_file(str(path), overrides={"lr": 2e-4, "out": "runs/x"})
    assert config.model == "ladder_densenet169" and config.model_kwargs == {"mode": "add"}
    assert config.lr == 2e-4 and config.out == "runs/x" and config.crop_size == [448, 896]
    assert config.backbone_lr_divisor == 2 and config.poly_power == 1.5  # the default


def test_json_file_and_save_round_trip(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"crop_size": 64, "steps": 10, "amp": True}))
    config = TrainConfig.from_file(str(path))
    assert config.crop_size == [64, 64] and config.steps == 10 and config.amp
    config.save(str(tmp_path / "saved" / "config.json"))
    assert TrainConfig.from_file(str(tmp_path / "saved" / "config.json")) == config


def test_unknown_keys_are_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 0.1\nlr: 0.2\nbatchsize: 3\n")
    with pytest.raises(ValueError, match=r"run\.yaml: unknown option\(s\) 'batchsize', 'learning_rate'"):
        TrainConfig.from_file(str(path))
    with pytest.raises(ValueError, match="unknown option.*'epoch'"):
        TrainConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "batch_size must be a positive int"),
    ("lr", -1.0, "lr must be a positive number"),
    ("crop_size", [448], "crop_size must be"),
    ("optimizer", "lamb", "optimizer must be one of"),
    ("amp_dtype", "float8", "amp_dtype must be one of"),
    ("model_kwargs", "growth_rate=8", "model_kwargs must be a dict"),
    ("amp", "yes", "amp must be true or false"),
])
def test_bad_values_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({field: value})


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: 0.1\nmodel: [unclosed\n")
    with pytest.raises(ValueError, match=r"bad\.yaml:\d+:\d+: invalid YAML"):
        TrainConfig.from_file(str(path))


def _parse(argv):
    return cli.build_parser().parse_args(["train", "seg", *argv])


def test_cli_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.001\nbatch_size: 8\ndataset: voc\nchannels_last: true\n")
    args = _parse(["--config", str(path), "--lr", "0.01", "--crop-size", "32x48", "--model-kwargs",
                   '{"growth_rate": 8}', "--no-channels-last", "--out", str(tmp_path / "out"), "--resume",
                   "--set", "poly_power=0.9"])
    config = config_from_args(args)
    assert config.lr == 0.01 and config.batch_size == 8 and config.dataset == "voc"
    assert config.crop_size == [32, 48] and config.model_kwargs == {"growth_rate": 8}
    assert config.channels_last is False and config.resume == "last" and config.poly_power == 0.9
    assert config_from_args(_parse(["--resume", "ckpt.pt"])).resume == "ckpt.pt"
    assert config_from_args(_parse([])).resume is None


def test_cli_rejects_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _parse(["--model-kwargs", "{growth_rate: 8"])
    assert "not valid JSON" in capsys.readouterr().err
    assert cli.main(["train", "seg", "--set", "learning_rate=0.1", "--out", str(tmp_path)]) == 2
    assert "unknown option(s) 'learning_rate'" in capsys.readouterr().err


@pytest.mark.parametrize("values, field", [
    ({"scale_range": 5}, "scale_range"),
    ({"scale_range": [2.0, 1.0]}, "scale_range"),
    ({"milestones": ["a", "b"]}, "milestones"),
    ({"milestones": [20, 10]}, "milestones"),
    ({"device": "gpu7"}, "device"),
    ({"model_kwargs": {"growth_rat": 8}}, "model_kwargs"),
    ({"lr": float("inf")}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"weight_decay": float("inf")}, "weight_decay"),
    ({"model": "ladder_densenet122"}, "model"),
    ({"dataset": "mot15"}, "dataset"),
    ({"dataset_kwargs": {"num_imgs": 3}}, "dataset_kwargs"),
    ({"backbone_weights": "nowhere.pth"}, "backbone_weights"),
    ({"task": "cls"}, "task"),
    ({"overwrite": "yes"}, "overwrite"),
    ({"workers": -1}, "workers"),
    ({"out": ""}, "out"),
])
def test_every_field_is_checked_and_named(values, field):
    with pytest.raises(ArgumentError, match=f"^config: {field} ") as error:
        TrainConfig.from_dict(values)
    assert "\n" not in str(error.value)


def test_bad_field_in_yaml_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: .inf\n")
    with pytest.raises(ArgumentError, match=r"run\.yaml: lr must be a positive number \(finite\), got inf"):
        TrainConfig.from_file(str(path))


def test_repeated_config_files_merge_in_order(tmp_path):
    base, small = tmp_path / "base.yaml", tmp_path / "small.yaml"
    base.write_text("lr: 0.001\nbatch_size: 8\nmodel_kwargs: {mode: add}\n")
    small.write_text("batch_size: 2\nmodel_kwargs: {growth_rate: 8}\n")
    config = config_from_args(_parse(["--config", str(base), "--config", str(small)]))
    assert config.lr == 0.001 and config.batch_size == 2 and config.model_kwargs == {"growth_rate": 8}
    assert TrainConfig.from_files([str(small), str(base)]).batch_size == 8


def test_a_bad_set_is_blamed_on_set_not_on_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.001\n")
    with pytest.raises(ArgumentError, match=r"^--set: lr must be"):
        config_from_args(_parse(["--config", str(path), "--set", "lr=-1"]))
    path.write_text("lr: -1\n")
    with pytest.raises(ArgumentError, match=r"run\.yaml: lr must be"):
        config_from_args(_parse(["--config", str(path), "--set", "batch_size=3"]))
    with pytest.raises(ArgumentError, match=r"^command line: batch_size must be"):
        config_from_args(_parse(["--config", str(path), "--set", "lr=0.1", "--batch-size", "0"]))
    with pytest.raises(ArgumentError, match=r"^--config: file .*missing\.yaml does not exist"):
        config_from_args(_parse(["--config", str(tmp_path / "missing.yaml")]))


def test_detection_gets_detection_defaults_however_it_is_made(tmp_path):
    path = tmp_path / "det.yaml"
    path.write_text("task: det\nsteps: 600\n")
    for config in (TrainConfig(task="det"), TrainConfig.from_dict({"task": "det"}),
                   TrainConfig.from_file(str(path)), config_from_args(_parse(["--steps", "600"]), "det")):
        assert (config.model, config.optimizer, config.schedule) == ("ssd300_vgg16", "sgd", "step")
        assert config.lr == 1e-3
        assert (config.dataset, config.backbone_lr_divisor, config.warmup_steps) == ("voc", 1.0, 500)
    assert TrainConfig.from_file(str(path)).milestones == [400, 500]
    seg = TrainConfig()
    assert (seg.model, seg.optimizer, seg.schedule, seg.lr) == ("ladder_densenet121", "adam", "poly", 5e-4)
    # an explicit value wins over the task's default
    assert TrainConfig(task="det", optimizer="adam", lr=1e-4).optimizer == "adam"
