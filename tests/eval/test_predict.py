"""Model loading from checkpoints, image I/O, and the `predict` / `eval seg` commands on tiny files."""
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from fastladder import cli
from fastladder.data.cityscapes import Cityscapes
from fastladder.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_LABELS, CITYSCAPES_PALETTE, colorize
from fastladder.data.voc import voc_colormap
from fastladder.errors import ArgumentError
from fastladder.eval import _common
from fastladder.eval._images import collect_inputs, overlay, read_image, save_grid, save_png
from fastladder.eval.inference import normalize_image, predict
from fastladder.models import create_model

TINY_LDN = dict(growth_rate=4, block_config=[1, 1, 1, 2], num_init_features=8, context_channels=16,
                upsample_channels=8)
MEAN, STD = [75.2, 85.0, 75.1], [46.9, 47.6, 46.5]
NORMALIZATION = ["--mean", *map(str, MEAN), "--std", *map(str, STD)]
EVALUATED_IDS = {label.id for label in CITYSCAPES_LABELS if label.train_id != 255}


def tiny_model(num_classes=19):
    model = create_model("ladder_densenet121", num_classes, **TINY_LDN)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
            # a large classifier bias spread: predictions cover many classes rather than one
            if isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.uniform_(-1, 1)
    return model.eval()


def save_checkpoint(model, path, num_classes=19, **extra):
    torch.save(dict(model=model.state_dict(), model_name="ladder_densenet121", model_kwargs=dict(TINY_LDN),
                    num_classes=num_classes, optimizer={"state": {}, "param_groups": []}, epoch=3, **extra),
               path)
    return path


def write_image(path, generator, height, width):
    array = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return torch.from_numpy(array).permute(2, 0, 1)


# --- images ---------------------------------------------------------------------------------------

def test_collect_inputs_expands_folders_sorted_and_keeps_subfolders(tmp_path, generator):
    for name in ("b.png", "a.jpg", "sub/c.png", "notes.txt"):
        if name.endswith(".txt"):
            (tmp_path / "in" / name).write_text("x")
        else:
            write_image(tmp_path / "in" / name, generator, 4, 5)
    single = write_image(tmp_path / "single.png", generator, 6, 7)
    sources = collect_inputs([tmp_path / "in", tmp_path / "single.png"])
    assert [s.name for s in sources] == ["a", "b", "sub/c", "single"]
    assert torch.equal(read_image(tmp_path / "single.png"), single)
    with pytest.raises(ArgumentError, match="missing.png"):
        collect_inputs([tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="neither an image"):
        collect_inputs([tmp_path / "in" / "notes.txt"])
    with pytest.raises(ValueError, match="would both write outputs named 'single'"):
        collect_inputs([tmp_path / "single.png", tmp_path / "single.png"])


def test_video_without_av_is_a_clear_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 16)
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` fail even where av is installed
    with pytest.raises(ArgumentError, match="needs the `av` package.*pip install av"):
        collect_inputs([tmp_path / "clip.mp4"])
    assert cli.main(["predict", "--weights", "unused.pt", str(tmp_path / "clip.mp4"),
                     "--out", str(tmp_path / "o")]) == 2
    assert "pip install av" in capsys.readouterr().err


def test_predict_on_a_video_names_frames(tmp_path, generator, seed):
    av = pytest.importorskip("av")
    frames = [torch.randint(0, 256, (64, 96, 3), dtype=torch.uint8, generator=generator) for _ in range(3)]
    with av.open(str(tmp_path / "clip.mp4"), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.numpy(), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    path = save_checkpoint(tiny_model(), tmp_path / "ckpt.pt")
    assert cli.main(["predict", "--weights", str(path), str(tmp_path / "clip.mp4"),
                     "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress", *NORMALIZATION]) == 0
    for index in range(3):
        with Image.open(tmp_path / "out" / f"clip_{index:06d}_color.png") as image:
            assert image.size == (96, 64)
    assert not (tmp_path / "out" / "clip_000003_color.png").exists()


def test_overlay_blends_half_and_half(generator):
    image = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8, generator=generator)
    colors = torch.randint(0, 256, (4, 5, 3), dtype=torch.uint8, generator=generator)
    blended = overlay(image, colors)
    expected = ((image.permute(1, 2, 0).double() + colors.double()) / 2).round()
    assert blended.dtype == torch.uint8 and blended.shape == (4, 5, 3)
    assert (blended.double() - expected).abs().max() <= 0.5  # .5 sums round either way in float32


def test_save_grid_places_pictures_in_cells(tmp_path, generator):
    a = torch.randint(0, 256, (10, 12, 3), dtype=torch.uint8, generator=generator)
    b = torch.randint(0, 256, (8, 6, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 256, (10, 12), dtype=torch.uint8, generator=generator)
    path = tmp_path / "deep" / "grid.png"
    save_grid([[a, b, labels], [b, a]], path, gap=2)
    with Image.open(path) as image:
        grid = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
    # columns 12, 12, 12 wide; rows 10 and 10 tall; gaps of 2
    assert grid.shape == (2 + 10 + 2 + 10 + 2, 2 + 12 + 2 + 12 + 2 + 12 + 2, 3)
    assert torch.equal(grid[2:12, 2:14], a)
    assert torch.equal(grid[2:10, 16:22], b)
    assert torch.equal(grid[2:12, 30:42], labels[..., None].expand(-1, -1, 3))
    assert torch.equal(grid[14:22, 2:8], b) and torch.equal(grid[14:24, 16:28], a)
    assert (grid[10:12, 16:22] == 255).all()  # the unused part of a cell is background
    save_grid([[a, b]], tmp_path / "titled.png", titles=["image", "prediction"], gap=2)
    with Image.open(tmp_path / "titled.png") as image:
        titled = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
    assert titled.shape[0] > 2 + 10 + 2 and titled.shape[1] == 2 + 12 + 2 + 6 + 2
    assert torch.equal(titled[-12:-2, 2:14], a)
    assert (titled[:titled.shape[0] - 14] < 128).any()  # the titles' ink
    with pytest.raises(ValueError, match="uint8"):
        save_grid([[a.float()]], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="3 titles for a grid of 2 columns"):
        save_grid([[a, b]], tmp_path / "bad.png", titles=["x", "y", "z"])


def test_save_png_round_trip_and_errors(tmp_path, generator):
    ids = torch.randint(0, 34, (5, 7), dtype=torch.uint8, generator=generator)
    save_png(ids, tmp_path / "ids.png")
    with Image.open(tmp_path / "ids.png") as image:
        assert image.mode == "L" and torch.equal(torch.from_numpy(np.asarray(image).copy()), ids)
    with pytest.raises(ValueError, match=r"uint8 \[H, W\] or \[H, W, 3\]"):
        save_png(torch.zeros(3, 5, 7, dtype=torch.uint8), tmp_path / "chw.png")


# --- the predict command --------------------------------------------------------------------------

def test_predict_writes_color_overlay_and_submission_pngs(tmp_path, generator, seed):
    model = tiny_model()
    path = save_checkpoint(model, tmp_path / "ckpt.pt")
    stem = "city_000000_000001_leftImg8bit"
    images = {stem: write_image(tmp_path / "in" / f"{stem}.png", generator, 64, 96),
              "sub/other": write_image(tmp_path / "in" / "sub" / "other.jpg", generator, 70, 65)}
    out = tmp_path / "out"
    assert cli.main(["predict", "--weights", str(path), str(tmp_path / "in"), "--out", str(out),
                     "--device", "cpu", "--scales", "1", "1.25", "--flip", "--no-progress",
                     *NORMALIZATION]) == 0
    for name, image in images.items():
        if name == "sub/other":  # jpg: compare with what was decoded, not with what was encoded
            image = read_image(tmp_path / "in" / "sub" / "other.jpg")
        expected = predict(model, normalize_image(image[None], MEAN, STD), scales=(1, 1.25), flip=True)[0]
        files = {kind: Image.open(out / f"{name}_{kind}.png") for kind in ("color", "overlay", "labelIds")}
        for kind, png in files.items():
            assert png.size == (image.shape[2], image.shape[1]), kind
        assert files["labelIds"].mode == "L" and files["color"].mode == "RGB"
        label_ids = torch.from_numpy(np.asarray(files["labelIds"]).copy())
        assert set(label_ids.unique().tolist()) <= EVALUATED_IDS
        # the label ids are the prediction's train ids mapped back
        id_to_train = {label.id: label.train_id for label in CITYSCAPES_LABELS}
        assert torch.equal(label_ids.long().apply_(id_to_train.get), expected)
        color = torch.from_numpy(np.asarray(files["color"]).copy())
        assert torch.equal(color, colorize(expected, CITYSCAPES_PALETTE))
        blended = torch.from_numpy(np.asarray(files["overlay"]).copy())
        assert torch.equal(blended, overlay(image, color))
        for png in files.values():
            png.close()


def test_predict_with_another_palette_and_class_count(tmp_path, generator, seed, capsys):
    model = tiny_model(num_classes=21)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    image = write_image(tmp_path / "a.png", generator, 64, 64)
    out = tmp_path / "out"
    assert cli.main(["predict", "--model", "ladder_densenet121", "--num-classes", "21", "--model-kwargs",
                     json.dumps(TINY_LDN), "--weights", str(tmp_path / "plain.pt"), str(tmp_path / "a.png"),
                     "--out", str(out), "--dataset", "voc", "--device", "cpu", "--no-progress",
                     *NORMALIZATION]) == 0
    # no labelIds: the model has 21 classes
    assert sorted(p.name for p in out.iterdir()) == ["a_color.png", "a_overlay.png"]
    expected = predict(model, normalize_image(image[None], MEAN, STD))[0]
    with Image.open(out / "a_color.png") as png:
        assert torch.equal(torch.from_numpy(np.asarray(png).copy()), colorize(expected, voc_colormap(21)))
    assert cli.main(["predict", "--model", "ladder_densenet121", "--num-classes", "21", "--model-kwargs",
                     json.dumps(TINY_LDN), "--weights", str(tmp_path / "plain.pt"), str(tmp_path / "a.png"),
                     "--out", str(out), "--outputs", "labelIds", "--device", "cpu", "--no-progress",
                     *NORMALIZATION]) == 2
    assert "--outputs labelIds needs a 19-class Cityscapes model" in capsys.readouterr().err


def test_predict_outputs_selects_the_pngs(tmp_path, generator, seed):
    path = save_checkpoint(tiny_model(), tmp_path / "ckpt.pt")
    write_image(tmp_path / "a.png", generator, 64, 64)
    assert cli.main(["predict", "--weights", str(path), str(tmp_path / "a.png"),
                     "--out", str(tmp_path / "out"), "--outputs", "labelIds", "--device", "cpu",
                     "--no-progress",
                     *NORMALIZATION]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_labelIds.png"]


def test_normalization_flags_then_checkpoint_then_dataset():
    from fastladder.data.registry import dataset_info

    parse = cli.build_parser().parse_args
    args = parse(["predict", "--weights", "w.pt", "x.png", "--out", "o"])
    with pytest.raises(ArgumentError, match="w.pt does not record the input normalization"):
        _common.normalization(args, {}, "seg")   # a plain state_dict
    recorded = {"mean": [9.0, 9.0, 9.0], "std": [8.0, 8.0, 8.0], "dataset": "camvid"}
    assert _common.normalization(args, recorded, "seg") == ([9.0] * 3, [8.0] * 3)
    camvid = dataset_info("seg", "camvid")
    expected = list(camvid.mean), list(camvid.std)
    assert _common.normalization(args, {"dataset": "camvid"}, "seg") == expected
    args = parse(["predict", "--weights", "w.pt", "x.png", "--out", "o", "--mean", "1", "2", "3", "--std",
                  "4", "5", "6"])
    assert _common.normalization(args, recorded, "seg") == ([1, 2, 3], [4, 5, 6])


# --- the eval seg command -------------------------------------------------------------------------

def write_cityscapes(root, generator, split="val", sizes=((64, 80), (72, 64))):
    """A tiny Cityscapes layout: leftImg8bit and gtFine label-id PNGs (with void and unused ids)."""
    ids = torch.tensor(sorted(EVALUATED_IDS) + [0, 1, 4, 9])  # 9 (parking) and 0/1/4 are ignored in eval
    for index, (h, w) in enumerate(sizes):
        city = ["aachen", "bremen"][index % 2]
        stem = f"{city}_{index:06d}_000019"
        write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", generator, h, w)
        label_ids = ids[torch.randint(0, len(ids), (h, w), generator=generator)].to(torch.uint8)
        save_png(label_ids, root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


def test_eval_seg_prints_the_table_and_writes_json(tmp_path, generator, seed, capsys):
    root = tmp_path / "cityscapes"
    write_cityscapes(root, generator)
    model = tiny_model()
    path = save_checkpoint(model, tmp_path / "ckpt.pt")
    out = tmp_path / "result.json"
    assert cli.main(["eval", "seg", "--weights", str(path), "--dataset", "cityscapes", "--root", str(root),
                     "--scales", "1", "1.25", "--flip", "--workers", "0", "--device", "cpu", "--no-progress",
                     "--json", str(out), *NORMALIZATION]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    dataset = Cityscapes(root, "val")
    confusion = sum(torch.bincount(
        (label[label != 255] * 19 + predict(model, normalize_image(image[None], MEAN, STD), scales=(1, 1.25),
                                            flip=True)[0][label != 255]), minlength=19 * 19).reshape(19, 19)
        for image, label in (dataset[i] for i in range(len(dataset))))
    assert result["confusion"] == confusion.tolist() and result["num_images"] == 2
    true_positive = confusion.diagonal().double()
    iou = true_positive / (confusion.sum(0) + confusion.sum(1) - true_positive)
    assert result["miou"] == pytest.approx(iou[~iou.isnan()].mean().item())
    assert list(result["iou"]) == list(CITYSCAPES_CLASSES)
    for name in ("road", "bicycle", "mIoU", "pixel accuracy"):
        assert name in printed
    assert f"{100 * result['miou']:6.2f}" in printed
    assert cli.main(["eval", "seg", "--weights", str(path), "--root", str(root), "--limit", "1", "--workers",
                     "0", "--device", "cpu", "--no-progress", "--json", str(out), *NORMALIZATION]) == 0
    assert json.loads(out.read_text())["num_images"] == 1


def test_eval_seg_reports_what_is_wrong(tmp_path, generator, seed, capsys):
    from fastladder.testing import write_camvid

    path = save_checkpoint(tiny_model(), tmp_path / "ckpt.pt")
    assert cli.main(["eval", "seg", "--weights", str(path), "--device", "cpu", *NORMALIZATION]) == 2
    assert "--dataset cityscapes needs --root" in capsys.readouterr().err
    # a dataset of another class count than the checkpoint's
    write_camvid(tmp_path / "camvid", "val", generator)
    assert cli.main(["eval", "seg", "--weights", str(path), "--dataset", "camvid", "--root",
                     str(tmp_path / "camvid"), "--device", "cpu", *NORMALIZATION]) == 2
    assert "predicts 19 classes, --dataset camvid has 11" in capsys.readouterr().err
