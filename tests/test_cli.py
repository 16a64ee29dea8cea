"""The fastladder command and the benchmark harness behind it."""
import json

import pytest

from fastladder import benchmark, cli


def test_info(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "with_cuda" in info


def test_bench_ladder_blend_small(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert cli.main(["bench", "ladder-blend", "--height", "128", "--width", "256", "--no-compile",
                     "--repeats", "1", "--device", "cpu", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "time vs reference" in out and "memory vs reference" in out
    rows = json.loads(path.read_text())["rows"]
    assert [r["case"] for r in rows] == ["1/64->1/32", "1/32->1/16", "1/16->1/8", "1/8->1/4", "total"]
    for row in rows:
        assert row["seconds"]["fastladder"] > 0 and row["time_ratio"]["reference"] > 0
    # the largest shape's tensors are megabytes: well above the RSS measurement's page granularity
    assert rows[3]["peak_bytes"]["reference"] > 2**20 and rows[3]["peak_bytes"]["fastladder"] > 0


def test_ladder_blend_cases_follow_the_ldn_strides():
    cases = benchmark.ladder_blend_cases(1024, 2048)
    assert [(c.low_size, c.skip_size) for c in cases] == [
        ((16, 32), (32, 64)), ((32, 64), (64, 128)), ((64, 128), (128, 256)), ((128, 256), (256, 512))]


def test_time_side_by_side_interleaves_and_reports_medians():
    calls = []
    medians = benchmark.time_side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                          repeats=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])


def _with_command(monkeypatch, func):
    """The parser with `info` running ``func``: the runner's handling of what a command raises."""
    parser = cli.build_parser()
    parser._subparsers._group_actions[0].choices["info"].set_defaults(func=func)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug")
    _with_command(monkeypatch, broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["info"])


def test_a_file_that_cannot_be_opened_is_one_line(monkeypatch, capsys, tmp_path):
    def opens(args):
        open(tmp_path / "nowhere" / "x.json")
    _with_command(monkeypatch, opens)
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastladder info: error: ") and "nowhere" in err[0]
