"""The ``fastladder`` command.

    fastladder demo                 the main job on a fresh machine: synthetic scenes, train, evaluate,
                                    pictures
    fastladder train seg|det        train a segmentation model or an SSD detector
    fastladder eval seg|det         per-class IoU table / Average Precision on a dataset
    fastladder predict              segment (or detect in) images, folders or a video
    fastladder visualize            filters and activation maximization of a trained model
    fastladder attack               adversarial examples (DeepFool, DDN, FGSM, PGD, DAG)
    fastladder export               a trained model to ONNX, its preprocessing in the metadata
    fastladder bench ladder-blend   ladder_blend vs its baselines (time and memory ratios)
    fastladder info                 what this build contains

Commands of a pipeline (train, eval, predict, ...) live beside it, in a ``commands`` module with
``register(subparsers)``; ``_COMMAND_MODULES`` lists them. Their imports happen when they run.
"""
import argparse
import importlib
import json
import os
import sys
import traceback

__all__ = ["main"]

# Each module defines register(subparsers): adds its subcommands, each with set_defaults(func=...).
_COMMAND_MODULES = (
    "fastladder.train.commands",
    "fastladder.eval.commands",
    "fastladder.analysis.commands",
    "fastladder.models.commands",
)


def _device_default():
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _run_ladder_blend_bench(height, width, *, device, channels_last, with_compile, memory, repeats,
                            json_path):
    import torch
    from tqdm import tqdm

    from fastladder.benchmark import ladder_blend_cases, format_table, run_ladder_blend_benchmark

    dtype = torch.float16 if device == "cuda" else torch.float32
    cases = ladder_blend_cases(height, width)
    with tqdm(total=len(cases), desc=f"ladder_blend {height}x{width} {device}", unit="shape") as bar:
        def progress(name):
            bar.set_postfix_str(name)
            bar.update(1)
        rows = run_ladder_blend_benchmark(height, width, device=device, dtype=dtype,
                                          channels_last=channels_last, with_compile=with_compile,
                                          memory=memory, repeats=repeats, progress=progress)
    layout = "channels_last" if channels_last else "NCHW"
    print(f"\nladder_blend: the four LDN-121 transition-up shapes for a {height}x{width} input, batch 1, "
          f"{str(dtype).replace('torch.', '')}, {layout}, {device}")
    print("(ratios are fastladder / baseline: below 1.00x fastladder is faster or uses less memory)\n")
    print(format_table(rows))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(dict(device=device, dtype=str(dtype), layout=layout, height=height, width=width,
                           rows=rows), f, indent=2)
        print(f"\nwrote {json_path}")
    return rows


def cmd_demo(args):
    import fastladder
    from fastladder.demo import run_demo

    info = fastladder.build_info()
    print(f"fastladder {fastladder.__version__}: compiled extension built against torch "
          f"{info['torch_version']}, "
          f"CUDA kernels {'compiled' if info['with_cuda'] else 'not compiled'}, "
          f"CUDA device {'available' if info['cuda_available'] else 'not available'}")
    run_demo(args.out, quick=args.quick, device=args.device, seed=args.seed)
    return 0


def cmd_bench(args):
    _run_ladder_blend_bench(args.height, args.width, device=args.device, channels_last=args.channels_last,
                            with_compile=not args.no_compile, memory=not args.no_memory, repeats=args.repeats,
                            json_path=args.json)
    return 0


def cmd_info(args):
    import fastladder
    print(json.dumps(fastladder.build_info(), indent=2))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="fastladder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a user error too (also FASTLADDER_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the built-in demo (no data or weights to download)")
    demo.add_argument("--quick", action="store_true",
                      help="toy sizes: a smoke test of the whole demo (about a minute)")
    demo.add_argument("--out", default="fastladder-demo",
                      help="folder for the data, the run and the pictures")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="speed and memory of fastladder vs its baselines")
    bench.add_argument("suite", choices=["ladder-blend"])
    bench.add_argument("--height", type=int, default=1024)
    bench.add_argument("--width", type=int, default=2048)
    bench.add_argument("--device", default=None)
    bench.add_argument("--channels-last", action="store_true")
    bench.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--json", help="also write the results to this JSON file")
    bench.set_defaults(func=cmd_bench)

    info = sub.add_parser("info", help="what this build of fastladder contains")
    info.set_defaults(func=cmd_info)

    for module in _COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def _command_name(args) -> str:
    """``eval det``, ``train seg``, ``predict``...: the words of the command that ran."""
    command = args.command
    task = args.task if command == "train" else getattr(args, f"{command}_task", None)
    return f"{command} {task}" if task else command


def _user_error_message(error: BaseException):
    """The one line to print for a user's mistake, or None for a bug (which keeps its traceback)."""
    from fastladder.errors import FastladderError

    if isinstance(error, FastladderError):
        text = str(error)
        if "Original Traceback" in text:
            # raised in a DataLoader worker: torch re-raises it with the worker's traceback in the
            # message, whose last line is "module.Class: the message"
            text = text.strip().splitlines()[-1].split(": ", 1)[-1]
        return text
    if isinstance(error, OSError) and error.filename is not None:
        # a missing, unreadable or unwritable file the user named: the OS's reason and the path
        reason = error.strerror or type(error).__name__
        return f"{error.filename}: {reason}"
    return None


def main(argv=None):
    """Runs the ``fastladder`` command; returns its exit status.

    A user's mistake (a FastladderError, or a file that cannot be opened) is one line
    ``fastladder <command>: error: <message>`` on stderr and status 2; ``--debug`` or
    FASTLADDER_DEBUG=1 shows its traceback instead. Other exceptions are bugs and propagate with
    their traceback. Ctrl-C is one line and status 130.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, not only before the command
    debug = "--debug" in argv or os.environ.get("FASTLADDER_DEBUG", "") not in ("", "0")
    argv = [word for word in argv if word != "--debug"]
    args = build_parser().parse_args(argv)
    command = _command_name(args)
    try:
        if getattr(args, "device", "cpu") is None:
            args.device = _device_default()
        status = args.func(args)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"fastladder {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = _user_error_message(error)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"fastladder {command}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    return 0 if status is None else status


if __name__ == "__main__":
    sys.exit(main())
