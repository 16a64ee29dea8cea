"""A user's mistakes, as the commands meet them: each case exits non-zero with one line that names the
file or the argument, prints no traceback, and leaves what earlier runs wrote as it was."""
import hashlib
import json
import os
import random
import shutil

import pytest
import torch
from PIL import Image

from fastladder import cli
from fastladder.testing import write_camvid, write_mot15_sequence

TINY_LADDER = {"growth_rate": 4, "block_config": [1, 1, 1, 2], "num_init_features": 8, "context_channels": 16,
               "upsample_channels": 8}
# this process, on the CPU, no progress bars
QUIET = ["--workers", "0", "--no-progress", "--device", "cpu"]
TINY_SSD = {"width": 0.0625, "extra_layers": [[256, 512, 3, 2, 1], [128, 256, 3, 2, 1]],
            "min_sizes": [12, 24, 40, 56], "max_sizes": [24, 40, 56, 64],
            "aspect_ratios": [[0.5, 0.33]] * 4, "flip": False, "steps": None}


def run(argv, capsys):
    """(exit status, stderr lines) of the command run in this process."""
    capsys.readouterr()
    try:
        status = cli.main(argv)
    except SystemExit as exit:
        status = exit.code
    return status, capsys.readouterr().err.strip().splitlines()


def assert_one_line(status, lines, *names):
    assert status == 2, lines
    assert len(lines) == 1 and "error: " in lines[0], lines
    assert not any("Traceback" in line for line in lines)
    for name in names:
        assert str(name) in lines[0], (name, lines[0])


def tree_digest(folder):
    """{relative path: sha1} of every file under folder."""
    digest = {}
    for directory, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
    return digest


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CamVid run (data, run folder, last.pt) shared by the cases."""
    base = tmp_path_factory.mktemp("trained")
    generator = torch.Generator().manual_seed(random.SystemRandom().randrange(2**31))
    write_camvid(base / "camvid", "train", generator)
    write_camvid(base / "camvid", "val", generator)
    status = cli.main(["train", "seg", "--dataset", "camvid", "--root", str(base / "camvid"), "--out",
                       str(base / "run"), "--steps", "1", "--batch-size", "2", *QUIET, "--model-kwargs",
                       json.dumps(TINY_LADDER), "--crop-size", "64"])
    assert status == 0
    return base


def commands_on(weights, base, out):
    image = str(base / "camvid" / "val" / "0001TP_006690.png")
    return {
        "eval": ["eval", "seg", "--weights", str(weights), "--root", str(base / "camvid"), "--workers", "0",
                 "--no-progress", "--device", "cpu", "--json", str(out / "report.json")],
        "predict": ["predict", "--weights", str(weights), image, "--out", str(out), "--no-progress",
                    "--device", "cpu"],
        "visualize": ["visualize", "--weights", str(weights), "--objective", "channel:context:0", "--steps",
                      "1", "--size", "64", "--num-images", "1", "--out", str(out), "--device", "cpu"],
        "attack": ["attack", "--attack", "dag", "--weights", str(weights), image, "--max-iter", "1", "--out",
                   str(out), "--device", "cpu"],
    }


@pytest.mark.parametrize("command", ["eval", "predict", "visualize", "attack"])
@pytest.mark.parametrize("damage", ["random bytes", "truncated", "missing", "not a checkpoint"])
def test_bad_checkpoint_is_one_line_naming_it(trained, tmp_path, capsys, command, damage):
    weights = tmp_path / "model.pt"
    if damage == "random bytes":
        weights.write_bytes(os.urandom(2000))
    elif damage == "truncated":
        data = (trained / "run" / "last.pt").read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "not a checkpoint":
        torch.save([1, 2, 3], weights)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("earlier")
    status, lines = run(commands_on(weights, trained, out)[command], capsys)
    assert_one_line(status, lines, weights)
    assert "weights_only=False" not in lines[0]
    assert (out / "report.json").read_text() == "earlier"


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
@pytest.mark.parametrize("command", ["eval", "visualize", "attack"])
def test_ddp_and_compiled_checkpoints_load_everywhere(trained, tmp_path, capsys, command, prefix):
    checkpoint = torch.load(trained / "run" / "last.pt", map_location="cpu", weights_only=True)
    checkpoint["model"] = {prefix + key: value for key, value in checkpoint["model"].items()}
    weights = tmp_path / "wrapped.pt"
    torch.save(checkpoint, weights)
    status, lines = run(commands_on(weights, trained, tmp_path / "out")[command], capsys)
    assert status == 0, lines


def test_plain_state_dict_needs_the_model_flags(trained, tmp_path, capsys):
    checkpoint = torch.load(trained / "run" / "last.pt", map_location="cpu", weights_only=True)
    weights = tmp_path / "plain.pt"
    torch.save(checkpoint["model"], weights)
    argv = commands_on(weights, trained, tmp_path)["eval"]
    status, lines = run(argv, capsys)
    assert_one_line(status, lines, weights, "--model")
    status, lines = run(argv + ["--model", "ladder_densenet121", "--num-classes", "11", "--model-kwargs",
                                json.dumps(TINY_LADDER), "--dataset", "camvid"], capsys)
    assert status == 0, lines


def test_unknown_model_kwargs_and_visualize_layer_are_named(trained, tmp_path, capsys):
    weights = trained / "run" / "last.pt"
    argv = commands_on(weights, trained, tmp_path)["eval"] + ["--model-kwargs", '{"growth_rat": 4}']
    status, lines = run(argv, capsys)
    assert_one_line(status, lines, "growth_rat")
    argv = commands_on(weights, trained, tmp_path)["visualize"]
    argv[argv.index("channel:context:0")] = "channel:upsample.9:0"
    status, lines = run(argv, capsys)
    assert_one_line(status, lines, "upsample.9", "upsample.0")


def test_predict_reports_each_unreadable_image_and_goes_on(trained, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    good = trained / "camvid" / "val" / "0001TP_006690.png"
    for name in ("a.png", "c.png"):
        (folder / name).write_bytes(good.read_bytes())
    buffer = tmp_path / "full.jpg"
    Image.open(good).convert("RGB").resize((64, 64)).save(buffer, quality=90)
    (folder / "b.jpg").write_bytes(buffer.read_bytes()[:300])   # a truncated JPEG
    (folder / "d.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("earlier")
    capsys.readouterr()
    status = cli.main(["predict", "--weights", str(trained / "run" / "last.pt"), str(folder), "--out",
                       str(out), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "b.jpg" in err and "d.png" in err
    last = err.strip().splitlines()[-1]
    assert "2 input(s) could not be read" in last and "b.jpg" in last and "d.png" in last
    assert {p.name for p in out.iterdir()} >= {"a_color.png", "c_color.png", "earlier.txt"}
    assert (out / "earlier.txt").read_text() == "earlier"


def test_attack_names_a_truncated_jpeg(trained, tmp_path, capsys):
    image = tmp_path / "cut.jpg"
    Image.new("RGB", (48, 48), (10, 200, 30)).save(tmp_path / "full.jpg", quality=95)
    image.write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    argv = commands_on(trained / "run" / "last.pt", trained, tmp_path / "out")["attack"]
    argv[argv.index(str(trained / "camvid" / "val" / "0001TP_006690.png"))] = str(image)
    status, lines = run(argv, capsys)
    assert_one_line(status, lines, image)


def test_eval_synthetic_reads_never_regenerates(trained, tmp_path, capsys):
    weights = trained / "run" / "last.pt"
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["eval", "seg", "--weights", str(weights), "--dataset", "synthetic", "--root", str(empty),
            "--workers", "0", "--no-progress", "--device", "cpu", "--num-classes", "11"]
    status, lines = run(argv, capsys)
    assert_one_line(status, lines, empty)
    assert list(empty.iterdir()) == []
    status, lines = run(argv[:7] + [str(tmp_path / "nowhere")] + argv[8:], capsys)
    assert_one_line(status, lines, tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_eval_synthetic_leaves_the_training_data_as_it_was(tmp_path, capsys):
    data, run_dir = tmp_path / "scenes", tmp_path / "run"
    assert cli.main(["train", "seg", "--dataset", "synthetic", "--root", str(data), "--out", str(run_dir),
                     "--steps", "1", "--batch-size", "2", *QUIET, "--model-kwargs",
                         json.dumps(TINY_LADDER), "--crop-size", "64", "--dataset-kwargs",
                     json.dumps({"num_images": 2, "size": [64, 96]})]) == 0
    before = tree_digest(data)
    status, lines = run(["eval", "seg", "--weights", str(run_dir / "last.pt"), "--root", str(data), *QUIET],
                        capsys)
    assert status == 0, lines
    assert tree_digest(data) == before
    # another split than the one generated: an error, nothing written
    status, lines = run(["eval", "seg", "--weights", str(run_dir / "last.pt"), "--root", str(data), "--split",
                         "test", "--workers", "0", "--no-progress", "--device", "cpu"], capsys)
    assert status == 2 and "Traceback" not in "".join(lines)
    assert tree_digest(data) == before


def test_eval_det_writes_only_what_is_asked(tmp_path, capsys):
    """No PR plot beside --weights (which may be read-only); the JSON and --plot where they say."""
    generator = torch.Generator().manual_seed(random.SystemRandom().randrange(2**31))
    for name in ("ADL-Rundle-6", "TUD-Campus"):
        write_mot15_sequence(tmp_path / "mot", name, 5, generator)
    run_dir = tmp_path / "run"
    assert cli.main(["train", "det", "--dataset", "mot15", "--root", str(tmp_path / "mot"), "--out",
                     str(run_dir), "--steps", "1", "--batch-size", "2", *QUIET, "--model-kwargs",
                         json.dumps(TINY_SSD), "--image-size", "64", "--zoom-out", "1"]) == 0
    before = sorted(os.listdir(run_dir))
    argv = ["eval", "det", "--weights", str(run_dir / "last.pt"), "--root", str(tmp_path / "mot"), *QUIET,
            "--json", str(tmp_path / "r.json")]
    status, lines = run(argv, capsys)
    assert status == 0, lines
    assert sorted(os.listdir(run_dir)) == before and (tmp_path / "r.json").is_file()
    status, lines = run(argv + ["--plot", str(tmp_path / "plots" / "pr.png")], capsys)
    assert status == 0 and (tmp_path / "plots" / "pr.png").is_file()
    # a truncated frame: one line naming it
    frame = tmp_path / "mot" / "train" / "TUD-Campus" / "img1" / "000005.jpg"
    frame.write_bytes(frame.read_bytes()[:100])
    status, lines = run(argv, capsys)
    assert_one_line(status, lines, "000005.jpg")


def test_interrupt_is_one_line_and_status_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    parser = cli.build_parser()
    parser._subparsers._group_actions[0].choices["info"].set_defaults(func=interrupted)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    status, lines = run(["info"], capsys)
    assert status == 130 and lines == ["fastladder info: interrupted"]


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "missing.pt"
    argv = ["eval", "seg", "--weights", str(missing), "--root", str(tmp_path), "--device", "cpu"]
    status, lines = run(argv, capsys)
    assert_one_line(status, lines, missing)
    status, lines = run(argv + ["--debug"], capsys)
    assert status == 2 and any("Traceback" in line for line in lines)
    monkeypatch.setenv("FASTLADDER_DEBUG", "1")
    status, lines = run(argv, capsys)
    assert status == 2 and any("Traceback" in line for line in lines)


def test_a_truncated_image_read_in_a_worker_is_one_line(trained, tmp_path, capsys):
    """eval's default --workers 2: the error comes back from a DataLoader worker."""
    shutil.copytree(trained / "camvid", tmp_path / "camvid")
    image = tmp_path / "camvid" / "val" / "Seq05VD_f00000.png"
    image.write_bytes(image.read_bytes()[:200])
    (tmp_path / "report.json").write_text("earlier")
    status, lines = run(["eval", "seg", "--weights", str(trained / "run" / "last.pt"), "--root",
                         str(tmp_path / "camvid"), "--no-progress", "--device", "cpu", "--json",
                         str(tmp_path / "report.json")], capsys)
    assert_one_line(status, lines, image)
    assert (tmp_path / "report.json").read_text() == "earlier"
