"""Learnability of SSD on SyntheticPedestrians: `fastladder train det` with a reduced-width SSD300
on 2 CPU threads, then AP@0.5 on the val split.

The issue's target: within 10 minutes on 2 CPU cores, AP@0.5 (VOC all-point, consider-0 boxes
ignored) >= 0.7. :data:`CONFIG` is the run that is meant to reach it; the script trains it, then
reports the steps, the AP by every definition, the wall-clock minutes, the process's CPU minutes
(on a shared machine the wall clock is inflated by the other processes; CPU time / threads is
closer to the time on an idle machine, though contention inflates it too) and the load average
before and after, and writes them as JSON.

    python benchmarks/bench_ssd_learn.py [--out runs/ssd-learn] [--steps N] [--json FILE]
    FASTLADDER_SLOW=1 pytest benchmarks/bench_ssd_learn.py          # the same run, AP asserted

Recorded (benchmarks/results/ssd-learn-cpu-1000steps.json, this script on the shared 2-core build
machine): val AP@0.5 0.216, 0.680, 0.820, 0.833 after 250, 500, 750, 1000 steps, 10.9 min wall, 12.6
CPU minutes. The first 250 steps ran under a load average of 4-5 and took 9.1 min; the last 750 steps
and three evaluations took 1.7 min once the machine was quiet. On 2 idle cores the whole run took
2.7 min wall, 5.3 CPU minutes, with the same AP (ssd-learn-cpu-1000steps-idle.json). The same run
under a load of 4-11 took 41 min; its losses and APs were identical.
With ``--steps 750`` the AP was 0.737 (ssd-learn-cpu-750steps.json).

The equivalent command line::

    fastladder train det --dataset synthetic --root runs/ssd-learn/synthetic-data \\
        --dataset-kwargs '{"num_sequences": 8, "frames_per_sequence": 60, "size": [120, 160]}' \\
        --image-size 120x160 --model-kwargs '<CONFIG["model_kwargs"] as JSON>' --optimizer adam \\
        --lr 1e-3 --schedule cosine --warmup-steps 50 --clip-grad-norm 10 --batch-size 8 --steps 1000 \\
        --zoom-out 1.5 --workers 0 --val-batch-size 16 --eval-every 250 --out runs/ssd-learn
"""
import argparse
import json
import os
import sys
import time

import pytest
import torch

# The SSD300 layout shrunk for 120×160 frames: VGG16 at 1/8 width (8 … 64 channels, fc 128), the
# conv4_3 (15×20) and fc7 (8×10) maps plus two extra blocks (4×5, 2×3); prior sides 16 … 150 px
# with the tall ratios of walking people (w/h 0.5 and 0.33) besides the squares.
MODEL_KWARGS = {
    "width": 0.125,
    "extra_layers": [[256, 512, 3, 2, 1], [128, 256, 3, 2, 1]],
    "min_sizes": [16, 36, 70, 110],
    "max_sizes": [36, 70, 110, 150],
    "aspect_ratios": [[0.5, 0.33]] * 4,
    "flip": False,
    "steps": None,
}

CONFIG = dict(
    model="ssd300_vgg16", model_kwargs=MODEL_KWARGS, image_size=[120, 160],
    dataset="synthetic", dataset_kwargs={"num_sequences": 8, "frames_per_sequence": 60, "size": [120, 160]},
    # From scratch and without batch norm, Adam with a short warmup and gradient clipping trains the
    # plain VGG reliably; SGD at SSD's lr needs ImageNet weights (and full width) to be stable.
    optimizer="adam", lr=1e-3, weight_decay=5e-4, schedule="cosine", warmup_steps=50, clip_grad_norm=10.0,
    batch_size=8, val_batch_size=16, steps=1000, eval_every=250, log_every=10, zoom_out=1.5,
    workers=0, seed=0,
)
TARGET_AP = 0.7
THREADS = 2


def run(out: str, steps: int = None, progress: bool = True) -> dict:
    """Trains :data:`CONFIG` into ``out`` (fresh) on :data:`THREADS` CPU threads; returns the report."""
    from fastladder.train.detection import detection_config
    from fastladder.train.loop import train

    torch.set_num_threads(THREADS)
    values = dict(CONFIG, out=out, device="cpu", progress=progress,
                  root=os.path.join(out, "synthetic-data"))
    if steps is not None:   # a shorter (or longer) run: the warmup keeps its share of it at most
        values["steps"] = steps
        share = steps * CONFIG["warmup_steps"] // CONFIG["steps"]
        values["warmup_steps"] = min(CONFIG["warmup_steps"], share)
    config = detection_config(**values)
    # The frames are generated before the clock starts: the budget is for training.
    from fastladder.data.synthetic_detection import generate_synthetic_pedestrians
    generate_synthetic_pedestrians(values["root"], progress=progress, **CONFIG["dataset_kwargs"])
    load_before = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    summary = train(config)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    metrics = summary["metrics"]
    return {
        "steps": summary["step"], "batch_size": config.batch_size, "image_size": config.image_size,
        "ap": metrics["ap"], "ap_methods": metrics["ap_methods"], "best": summary["best"],
        "val_images": metrics["images"], "wall_minutes": wall / 60, "cpu_minutes": cpu / 60,
        "cpu_minutes_per_thread": cpu / 60 / THREADS, "threads": THREADS,
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "torch": torch.__version__, "config": config.to_dict(), "log": summary["log"],
        "curves": summary["curves"],
    }


def _print(report: dict):
    methods = ", ".join(f"{name} {value:.3f}" for name, value in report["ap_methods"].items())
    print(f"\nSSD learnability on SyntheticPedestrians: {report['steps']} steps of {report['batch_size']} "
          f"images at {report['image_size'][0]}x{report['image_size'][1]}")
    print(f"AP@0.5 {report['ap']:.3f} (target {TARGET_AP}); by definition: {methods}")
    print(f"wall {report['wall_minutes']:.1f} min, CPU {report['cpu_minutes']:.1f} min on "
          f"{report['threads']} threads ({report['cpu_minutes_per_thread']:.1f} min per thread); "
          f"load average before {report['load_average_before'][0]:.2f}, "
          f"after {report['load_average_after'][0]:.2f}")


@pytest.mark.skipif(os.environ.get("FASTLADDER_SLOW") != "1",
                    reason="a 10-minute training: set FASTLADDER_SLOW=1")
def test_ssd_learns_synthetic_pedestrians(tmp_path):
    report = run(str(tmp_path / "run"), progress=False)
    _print(report)
    assert report["ap"] >= TARGET_AP


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ssd-learn", help="run folder (its previous run is replaced)")
    parser.add_argument("--steps", type=int, default=None, help=f"override the run's {CONFIG['steps']} steps")
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    for name in ("last.pt", "best.pt", "log.csv", "metrics.json"):
        path = os.path.join(args.out, name)
        if os.path.exists(path):
            os.remove(path)   # a fresh run, never a resume
    report = run(args.out, args.steps, progress=not args.no_progress)
    _print(report)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["ap"] >= TARGET_AP else 1


if __name__ == "__main__":
    sys.exit(main())
