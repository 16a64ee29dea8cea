"""The one model loader: checkpoints with ModelMeta, old checkpoints, plain state_dicts, bad files."""
import warnings
import zipfile

import pytest
import torch
import torch.nn as nn

from fastladder.data.registry import CITYSCAPES_MEAN, IMAGENET_MEAN, IMAGENET_STD
from fastladder.errors import CheckpointError
from fastladder.models import (ModelMeta, create_model, load_model, load_model_and_meta, read_checkpoint,
                               read_state_dict, strip_wrapper_prefixes)

TINY_LDN = dict(growth_rate=4, block_config=[1, 1, 1, 2], num_init_features=8, context_channels=16,
                upsample_channels=8)
TINY_SSD = dict(width=0.0625, image_size=64, extra_layers=[[256, 512, 3, 2, 1], [128, 256, 3, 2, 1]],
                min_sizes=[12, 24, 40, 56], max_sizes=[24, 40, 56, 64], aspect_ratios=[[2]] * 4, steps=None)


def tiny_model(num_classes=19):
    model = create_model("ladder_densenet121", num_classes, **TINY_LDN)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def old_checkpoint(model, path, num_classes=19, **extra):
    """A checkpoint as training wrote it before ModelMeta existed."""
    torch.save(dict(model=model.state_dict(), model_name="ladder_densenet121", model_kwargs=dict(TINY_LDN),
                    num_classes=num_classes, optimizer={"state": {}, "param_groups": []}, epoch=3, **extra),
               path)
    return path


def meta_checkpoint(model, path, **meta):
    meta = ModelMeta(**{"model_name": "ladder_densenet121", "num_classes": 19, "model_kwargs": dict(TINY_LDN),
                        **meta})
    torch.save({"model": model.state_dict(), "meta": meta.to_dict(), "step": 7}, path)
    return path, meta


def test_checkpoint_state_dict_and_wrapped_keys_load_the_same_model(tmp_path, seed):
    model = tiny_model()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    path, _ = meta_checkpoint(model, tmp_path / "ckpt.pt")
    loaded = [load_model(path)]
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    loaded.append(load_model(tmp_path / "plain.pt", "ladder_densenet121", 19, **TINY_LDN))
    # DataParallel / DDP ("module.") and torch.compile ("_orig_mod.") prefixes, also nested
    for prefix in ("module.", "_orig_mod.", "module._orig_mod."):
        torch.save({f"{prefix}{k}": v for k, v in model.state_dict().items()}, tmp_path / "wrapped.pt")
        loaded.append(load_model(str(tmp_path / "wrapped.pt"), "ladder_densenet121", 19, **TINY_LDN))
    for model_ in loaded:
        assert not model_.training
        with torch.no_grad():
            torch.testing.assert_close(model_(x), expected, rtol=0, atol=0)


def test_meta_round_trips_and_comes_back_without_warning(tmp_path, seed):
    path, meta = meta_checkpoint(tiny_model(), tmp_path / "ckpt.pt", task="seg", dataset="camvid",
                                 mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert ModelMeta.from_dict(meta.to_dict()) == meta
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, loaded = load_model_and_meta(path)
    assert loaded == meta and loaded.mean == IMAGENET_MEAN and loaded.dataset == "camvid"
    # a plain torch.load with weights_only reads it (only plain Python values in "meta")
    assert torch.load(path, weights_only=True)["meta"]["mean"] == list(IMAGENET_MEAN)
    # constructor arguments given at load time override the recorded ones and show in the meta
    _, overridden = load_model_and_meta(path, memory_efficient=True)
    assert overridden.model_kwargs == {**TINY_LDN, "memory_efficient": True}


def test_meta_validation_names_the_field():
    with pytest.raises(CheckpointError, match="num_classes"):
        ModelMeta("ladder_densenet121", 0)
    with pytest.raises(CheckpointError, match="class_names"):
        ModelMeta("ladder_densenet121", 3, class_names=("a", "b"))
    with pytest.raises(CheckpointError, match="std"):
        ModelMeta("ladder_densenet121", 3, mean=(1, 2, 3), std=(1, 0, 1))
    with pytest.raises(CheckpointError, match="x.pt: 'meta' has unknown keys \\['colour'\\]"):
        ModelMeta.from_dict({"model_name": "m", "num_classes": 2, "colour": 1}, "x.pt")


def test_old_checkpoint_warns_naming_the_defaults(tmp_path, seed):
    path = old_checkpoint(tiny_model(), tmp_path / "old.pt")
    with pytest.warns(UserWarning, match=r"old.pt.*assuming dataset 'cityscapes', mean \[75.2, 85.0, 75.1\]"):
        _, meta = load_model_and_meta(path)
    assert meta.mean == CITYSCAPES_MEAN and meta.task == "seg" and meta.num_classes == 19
    # with the run's config recorded, its dataset's normalization is used
    path = old_checkpoint(tiny_model(11), tmp_path / "camvid.pt", num_classes=11,
                          config={"dataset": "camvid"})
    with pytest.warns(UserWarning, match=r"mean \[123.675, 116.28, 103.53\]"):
        _, meta = load_model_and_meta(path)
    assert meta.dataset == "camvid" and meta.mean == IMAGENET_MEAN and meta.class_names[0] == "Sky"


def test_plain_state_dict_needs_model_name_and_num_classes(tmp_path, seed):
    torch.save(tiny_model().state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="plain.pt is a plain state_dict without a model name"):
        load_model(tmp_path / "plain.pt", num_classes=19, **TINY_LDN)
    with pytest.raises(CheckpointError, match="plain state_dict without the number of classes"):
        load_model(tmp_path / "plain.pt", "ladder_densenet121", **TINY_LDN)
    _, meta = load_model_and_meta(tmp_path / "plain.pt", "ladder_densenet121", 19, **TINY_LDN)
    assert meta.task == "seg" and meta.mean is None and meta.dataset is None


def test_ssd_meta_records_the_input_size(tmp_path, seed):
    model = create_model("ssd300_vgg16", 2, **TINY_SSD)
    torch.save(model.state_dict(), tmp_path / "ssd.pt")
    _, meta = load_model_and_meta(tmp_path / "ssd.pt", "ssd300_vgg16", 2, **TINY_SSD)
    assert meta.task == "det" and meta.input_size == (64, 64)


def test_mismatched_weights_are_listed(tmp_path, seed):
    state = tiny_model().state_dict()
    path = old_checkpoint(tiny_model(), tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="num_classes=21 but checkpoint .* 19 classes"):
        load_model(path, num_classes=21)
    with pytest.raises(CheckpointError, match="model_name='dilated8_densenet121' but checkpoint"):
        load_model(path, "dilated8_densenet121")
    torch.save(state, tmp_path / "plain.pt")
    mismatch = (r"shape mismatches \(4\): aux_classifier.*, classifier\.conv\.bias: "
                r"weights \(19,\) vs model \(21,\)")
    with pytest.raises(CheckpointError, match=mismatch):
        load_model(tmp_path / "plain.pt", "ladder_densenet121", 21, **TINY_LDN)
    missing = dict(state)
    del missing["classifier.conv.weight"]
    missing["extra.weight"] = torch.zeros(1)
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError,
                       match=r"missing keys \(1\): classifier\.conv\.weight; "
                             r"unexpected keys \(1\): extra\.weight"):
        load_model(tmp_path / "missing.pt", "ladder_densenet121", 19, **TINY_LDN)


def test_bad_files_name_the_file_and_say_which(tmp_path, seed):
    good = old_checkpoint(tiny_model(), tmp_path / "good.pt")
    data = good.read_bytes()
    cases = {"nowhere.pt": (None, "checkpoint file does not exist"),
             "empty.pt": (b"", r"is empty \(0 bytes\)"),
             "truncated.pt": (data[:len(data) // 2], "is truncated"),
             "random.pt": (bytes(torch.randint(0, 256, (3000,), dtype=torch.uint8).tolist()),
                           "is not a PyTorch checkpoint")}
    # a zip whose central directory is intact but whose pickled record is damaged
    with zipfile.ZipFile(good) as archive:
        record = next(info for info in archive.infolist() if info.filename.endswith("data.pkl"))
    start = record.header_offset + 30 + len(record.filename.encode()) + len(record.extra)
    corrupt = bytearray(data)
    corrupt[start + 2:start + 40] = bytes(38)
    cases["corrupt.pt"] = (bytes(corrupt), r"is corrupt \(\d+ bytes; the record .*data.pkl is damaged\)")
    for name, (contents, message) in cases.items():
        path = tmp_path / name
        if contents is not None:
            path.write_bytes(b"\x00" + contents[1:] if name == "random.pt" else contents)
        for call in (lambda: load_model(path, "ladder_densenet121", 19), lambda: read_checkpoint(path)):
            with pytest.raises(CheckpointError, match=f"{name}: {message}") as error:
                call()
            assert "weights_only=False" not in str(error.value)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt: is not a checkpoint .*list"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="junk.pt: is not a checkpoint"):
        load_model(tmp_path / "junk.pt", "ladder_densenet121", 19)
    with pytest.raises(CheckpointError, match="is not a file"):
        read_checkpoint(tmp_path)


class _Opaque:
    """An object that torch.load(weights_only=True) refuses to unpickle."""


def test_checkpoint_with_arbitrary_objects_needs_trust(tmp_path, seed):
    path = old_checkpoint(tiny_model(), tmp_path / "ckpt.pt", args=_Opaque())
    with pytest.raises(CheckpointError, match="ckpt.pt: holds Python objects.*weights_only=False"):
        load_model(path)
    with pytest.warns(UserWarning):
        assert isinstance(load_model(path, weights_only=False), nn.Module)


def test_read_state_dict_unwraps_containers(seed):
    state = {"module.a": torch.zeros(2), "module.b": torch.ones(1)}
    assert read_state_dict({"state_dict": state}).keys() == {"a", "b"}
    assert read_state_dict({"model": state}).keys() == {"a", "b"}
    assert strip_wrapper_prefixes({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}  # not every key
    with pytest.raises(CheckpointError, match="backbone_weights must be a path or a state_dict"):
        read_state_dict(42, what="backbone_weights")


def test_create_model_uses_each_builders_default_classes():
    assert create_model("densenet121", growth_rate=4, block_config=[1, 1, 1, 1],
                        num_init_features=8).classifier.out_features == 1000
    assert create_model("ssd300_vgg16", **TINY_SSD).num_classes == 21
    assert create_model("ladder_densenet121", **TINY_LDN).classifier.conv.out_channels == 19


def test_the_old_checkpoint_warning_points_at_the_callers_line(tmp_path, seed):
    path = old_checkpoint(tiny_model(), tmp_path / "old.pt")
    for load in (load_model, load_model_and_meta):
        with pytest.warns(UserWarning) as record:
            load(path)
        assert record[0].filename == __file__
