"""`fastladder demo --quick`: every step runs and writes what it promises."""
import json

from PIL import Image

from fastladder import cli


def test_quick_demo_writes_its_pictures_and_summary(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "mIoU", "fastladder / reference time"):
        assert step in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0.0 <= summary["miou"] <= 1.0 and 0.0 <= summary["pixel_accuracy"] <= 1.0
    assert set(summary["seconds_per_frame"]) == {"fastladder", "reference"}
    grid = Image.open(summary["predictions"])
    assert grid.mode == "RGB" and grid.width > 3 * 128  # image | ground truth | prediction, 128 wide each
    assert Image.open(summary["curves"]).size[0] > 0
    assert (tmp_path / "train" / "log.csv").read_text().count("\n") >= 2

    # the demo's checkpoint describes its data, so the commands need no flags for it: evaluating it
    # again gives the demo's own score
    checkpoint = tmp_path / "train" / "best.pt"
    assert cli.main(["eval", "seg", "--weights", str(checkpoint), "--root", str(tmp_path / "data"),
                     "--workers", "0", "--no-progress", "--device", "cpu", "--json",
                     str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["miou"] == summary["miou"]
