"""Command line: parse, build the config, dispatch to a stage.  Nothing else lives here.

    hellodd run        every stage in order, a random real subset beside the distilled set, then the report
    hellodd teachers   stage 1: teacher trajectory and model pool
    hellodd projector  stages 2-3: projector (base + text head) and LoRA transfer from weak teachers
    hellodd distill    stage 4: RDED initialisation and the projector-aware image update (segmentation:
                       the observer's or a random subset of whole images)
    hellodd evaluate   stage 5: students trained on the distilled set with each label source
    hellodd storage    bytes of every label source, at this run's scale and at the paper's
    hellodd report     the storage-accuracy frontier of one or more runs (table and plot)
    hellodd export     a distilled set and its adapters as one folder anyone opens with hellodd.load
    hellodd verify     check an export part by part and rebuild its labeller

Bad input prints one line, ``hellodd: error: ...``, and exits with code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from hellodd import config as C
from hellodd.errors import UserError
from hellodd.io import read_json
from hellodd.lock import FolderLock
from hellodd.summary import announce, summarise
from hellodd.version import __version__

# The modules of a command (stages, engine, report, export) are imported when it runs, not here: so
# `hellodd --help`, a usage error and a refused option answer without importing torch, which costs more
# than everything else such a command does.

PLANNED = ("run", "teachers", "projector", "distill", "evaluate", "export")  # commands checked by preflight
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "4000000000"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``hellodd: error: ...``) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"hellodd: error: {message} (see 'hellodd --help')\n")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--preset", default="fashion-mnist", help="dataset preset (default: fashion-mnist)")
    common.add_argument("--config", help="a config.json written by an earlier run (replaces --preset)")
    common.add_argument("--out", help="output folder (default: runs/<preset>)")
    common.add_argument(
        "--data", help="dataset folder (Fashion-MNIST IDX files, or an ImageFolder root with train/ and val/)"
    )
    common.add_argument("--clip-checkpoint", help="local CLIP weights file for a clip: projector base")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set teacher.epochs=3 (repeatable)",
    )
    common.add_argument("--accelerator", help="auto | cpu | cuda")
    common.add_argument("--devices", type=int, help="processes (GPUs) per node")
    common.add_argument("--num-nodes", type=int, help="number of nodes")
    common.add_argument(
        "--precision",
        help="auto (default: bf16-mixed where the device computes bf16 natively, else 32-true) | 32-true | bf16-mixed | 16-mixed",
    )
    common.add_argument("--seed", type=int, help="global seed")
    p = _Parser(
        prog="hellodd",
        description=(
            "Dataset distillation with light labels (HeLlO): a few images per class, labelled by a small LoRA\n"
            "projector instead of stored teacher outputs. 'hellodd run' runs every stage; each command below\n"
            "runs one. Outputs go to --out (default runs/<preset>); each stage prints where it wrote."
        ),
        epilog=(
            "examples:\n"
            "  hellodd run                                   the Fashion-MNIST demo, every stage (a 2-core CPU)\n"
            "  hellodd run --preset fashion-mnist-scenes     class maps: dense light labels\n"
            "  hellodd run --preset imagenet-1k --data DIR --clip-checkpoint RN50.pt --devices 8\n"
            "  hellodd evaluate --out runs/x --set 'evaluate.students=[resnet18]'\n"
            "  hellodd export --out runs/x --tar             one folder (or .tar) anyone opens with hellodd.load\n"
            "  hellodd export --out runs/x --format hf       a Hugging Face dataset (datasets.load_dataset opens it)\n"
            "Run 'hellodd COMMAND --help' for a command's options; bad input exits with code 2 and one line."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    p.add_argument("--version", action="version", version=f"hellodd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    rn = sub.add_parser("run", parents=[common], help="run every stage in order")
    rn.add_argument(
        "--ipc",
        nargs="+",
        type=int,
        metavar="N",
        help="several IPCs over one trajectory, each with its preset settings, e.g. --ipc 1 10 50",
    )
    te = sub.add_parser("teachers", parents=[common], help="train the teacher trajectory (model pool)")
    te.add_argument(
        "--import",
        dest="import_paths",
        nargs="+",
        metavar="CKPT",
        help="build the pool from existing checkpoints instead (files, folders, or PATH@EPOCH)",
    )
    sub.add_parser("projector", parents=[common], help="build the projector and train its LoRA adapters")
    sub.add_parser("distill", parents=[common], help="make the distilled images")
    sub.add_parser("evaluate", parents=[common], help="train students with each label source")
    st = sub.add_parser("storage", parents=[common], help="storage of every label source")
    st.add_argument(
        "--paper", action="store_true", help="the paper's ImageNet settings (builds the real adapters)"
    )
    ex = sub.add_parser("export", parents=[common], help="package a distilled set and its light labels")
    ex.add_argument("--to", help="export folder (default: <out>/export/<preset>-<set>)")
    ex.add_argument("--tar", action="store_true", help="also write <folder>.tar")
    ex.add_argument("--png", action="store_true", help="also include the images as an ImageFolder PNG tree")
    ex.add_argument(
        "--format",
        dest="fmt",
        choices=("folder", "hf"),
        default="folder",
        help="folder (default) or hf: a Hugging Face dataset (parquet shards and a dataset card; needs "
        "pip install 'hellodd[hf]')",
    )
    ex.add_argument(
        "--license", default="unknown", help="the card's license for --format hf (default: unknown)"
    )
    vf = sub.add_parser("verify", help="check an export (folder or .tar) and rebuild its labeller")
    vf.add_argument(
        "export", metavar="EXPORT", help="a folder or .tar written by 'hellodd export' (either format)"
    )
    vf.add_argument("--base-checkpoint", help="the base checkpoint file, for a pretrained CLIP base")
    rp = sub.add_parser("report", help="table and plot of the score against label bytes for one or more runs")
    rp.add_argument(
        "runs", nargs="+", metavar="RUN", help="run folders (each with evaluate/<set>/metrics.json)"
    )
    rp.add_argument(
        "--to", help="folder for report.md, report.json and frontier.png (default: the first RUN)"
    )
    return p


def build_config(args: argparse.Namespace, ipc: int | None = None):
    """The config of ``args``; with ``ipc``, that IPC's (the preset's settings for it, then ``--set``)."""

    if args.config:
        data = read_json(args.config)
        data = data.get("config", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise UserError(
                f"--config {args.config}: not a hellodd config (a JSON object, as config.json holds)"
            )
        cfg = C.from_dict(data, where=args.config)
    else:
        cfg = C.preset(args.preset)
    overrides = list(args.overrides)
    for flag, key in (
        ("out", "out"),
        ("data", "data.root"),
        ("clip_checkpoint", "projector.checkpoint"),
        ("accelerator", "engine.accelerator"),
        ("devices", "engine.devices"),
        ("num_nodes", "engine.num_nodes"),
        ("precision", "engine.precision"),
        ("seed", "engine.seed"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.insert(0, f"{key}={value}")
    if ipc is not None:
        if any(o.split("=", 1)[0].strip() == "distill.ipc" for o in overrides):
            raise UserError("--ipc and --set distill.ipc: give the IPCs once, with --ipc")
        overrides.insert(0, f"distill.ipc={ipc}")
    cfg = C.apply_overrides(cfg, overrides)
    from hellodd.precision import choose  # lazy: it asks torch what the device computes natively

    chosen = choose(cfg.engine.precision, cfg.engine.accelerator)
    cfg.engine.precision, cfg.engine.precision_why = chosen.precision, chosen.why
    return cfg


def say_precision(cfg) -> None:
    """The first line of a run that computes: the precision and why (a warning where bf16 is emulated)."""
    from hellodd.precision import line

    if os.environ.get("RANK", "0") == "0":
        text, warn = line(cfg.engine.precision, cfg.engine.precision_why)
        print(f"hellodd: {text}", file=sys.stderr if warn else sys.stdout, flush=True)


WRITERS = ("run", "teachers", "projector", "distill", "evaluate", "export")  # commands that write into --out


def dispatch(cfg, command: str, args: argparse.Namespace) -> None:
    if command in WRITERS:
        with FolderLock(cfg.out, command):  # one writer per run folder
            _dispatch(cfg, command, args)
    else:
        _dispatch(cfg, command, args)


def _dispatch(cfg, command: str, args: argparse.Namespace) -> None:
    from hellodd import engine

    if command == "report":
        from pathlib import Path

        from hellodd.frontier import write_report

        runs = [Path(r) for r in args.runs]
        print(write_report(runs, Path(args.to) if args.to else runs[0])["table"])
        return
    if command == "verify":
        from hellodd.lightset import load

        ds = load(args.export, args.base_checkpoint)
        ds.labeller("cpu")
        print(f"{ds!r}: every part matches the manifest; the labeller builds")
        return
    if command == "export":
        from hellodd.export import run_export

        print(run_export(cfg, args.to, args.tar, args.png, args.fmt, args.license)["summary"])
        return
    if command == "storage":
        from hellodd import storage

        print(storage.storage_table(cfg, paper=args.paper))
        return
    fabric = engine.make_fabric(cfg.engine)
    if command == "run":
        from hellodd.pipeline import run_all

        ipcs = getattr(args, "ipc", None)
        results = run_all([build_config(args, n) for n in dict.fromkeys(ipcs)] if ipcs else cfg, fabric)
        if fabric.is_global_zero:
            print("\n" + summarise(cfg, results))
        return
    if command == "teachers" and args.import_paths:
        from hellodd.pool_import import import_teachers

        result = import_teachers(cfg, fabric, args.import_paths)
    else:
        result = run_stage(cfg, fabric, command)
    announce(cfg, fabric, command, result)
    if command == "evaluate" and fabric.is_global_zero:
        print("\n" + result["table"])


def run_stage(cfg, fabric, stage: str) -> dict:
    """One stage by name (``teachers``, ``projector``, ``distill``, ``evaluate``): its metrics."""
    from hellodd.tasks import stage_function  # lazy: the CLI parses before it imports torch

    return stage_function(cfg, stage)(cfg, fabric)


def _one_line(e: UserError) -> str:
    """The message of a UserError, also when a DataLoader worker re-raised it wrapped in its traceback."""
    text = str(e).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split("UserError: ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point usable in-process (tests): returns the exit code instead of exiting."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed its one-line error
        return int(e.code or 0)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # torch.compile on a machine without CUDA warns once per process that it found no CUDA runtime: noise here
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from hellodd import engine

    handlers = engine.install_stop_handlers()  # SIGTERM / Ctrl-C: checkpoint, then stop (engine.Preempted)
    try:
        cfg = None if args.command in ("report", "verify") else build_config(args)
        ipcs = getattr(args, "ipc", None) or []
        cfgs = [build_config(args, n) for n in dict.fromkeys(ipcs)] or [cfg]  # every IPC's, checked first
        if args.command in PLANNED:  # the whole plan, before the lock or any stage writes a file
            from hellodd.preflight import check_plan

            check_plan(args.command, cfgs)
            say_precision(cfg)
        dispatch(cfg, args.command, args)
    except UserError as e:
        print(f"hellodd: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except engine.Preempted as e:
        print(f"hellodd: {e}", file=sys.stderr)
        return 143 if e.signal.startswith("SIGTERM") else 130
    except KeyboardInterrupt:
        print(
            "hellodd: interrupted before the next checkpoint; run the same command to resume from the last one",
            file=sys.stderr,
        )
        return 130
    finally:
        engine.restore_handlers(handlers)
    return 0


def entry() -> None:
    """Console script: re-exec once with glibc malloc tuned (must be set before the process starts)."""
    if os.environ.get("HELLODD_NO_REEXEC") != "1" and any(
        os.environ.get(k) != v for k, v in MALLOC_ENV.items()
    ):
        env = {**os.environ, **MALLOC_ENV, "HELLODD_NO_REEXEC": "1"}
        os.execve(sys.executable, [sys.executable, "-m", "hellodd", *sys.argv[1:]], env)
    sys.exit(main())
