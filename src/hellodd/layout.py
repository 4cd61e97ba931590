"""A run folder's layout: every path and file name under ``--out`` is spelled here and nowhere else.

::

    <out>/.hellodd.lock                       held by the command writing into the folder
    <out>/teachers/                           the teacher trajectory
        pool/epoch_<e>.safetensors            one checkpoint per pool epoch
        final.safetensors                     the last weights: the observer and the online teacher
        pool.json                             the index of the pool (epochs, accuracies, sha256)
    <out>/projector/<window>/                 one projector per weak-teacher window
        adapters.safetensors                  the LoRA adapters (all the labels' bytes)
        random-base/                          the seeded-random-base ablation, when asked for
    <out>/distill/ipc<N>-<variant>/           one distilled set (see :mod:`hellodd.sets` for its files)
        init.safetensors, init-classes/       the selection, kept while it is being made
    <out>/evaluate/ipc<N>-<variant>/          the students trained on that set
        runs/<source>-<arch>-seed<s>.json     one finished student run
        <source>-labels/seed<s>/rank<r>/      stored labels, one file per epoch
        results.md, results.json              the table
    <out>/cache/                              head initialisations derived from the base (rebuilt if absent)
    <out>/export/<preset>-ipc<N>-<variant>/   what ``hellodd export`` packs (``--format hf``: its images as
                                              data/train-*.parquet shards, README.md the dataset card)
    <out>/report.md, report.json, frontier*.png

Every stage folder also holds ``config.json``, ``metrics.json`` and ``storage.json``, and, while a loop
runs, ``state.pt`` (its resume point).
"""

from __future__ import annotations

from pathlib import Path

from hellodd.config import Config, spec_of

LOCK_FILE = ".hellodd.lock"
CONFIG_FILE, METRICS_FILE, STORAGE_FILE = "config.json", "metrics.json", "storage.json"
STATE_FILE = "state.pt"  # a loop's resume point, removed when the loop finishes
ADAPT_STATE_FILE = "adapt_state.pt"  # the view adaptation's, beside the image update's in a set's folder
FINAL_FILE = "final.safetensors"
POOL_INDEX = "pool.json"
POOL_FOLDER = "pool"
ADAPTER_FILE = "adapters.safetensors"  # stage 3's, and distill's view-adapted one beside the images
IMAGES_FILE = "images.safetensors"
MANIFEST_FILE = "manifest.json"
PNG_FOLDER, CONTACT_SHEET = "png", "contact_sheet.png"
RESULTS_MD, RESULTS_JSON = "results.md", "results.json"
REPORT_MD, REPORT_JSON = "report.md", "report.json"
RANDOM_BASE_FOLDER = "random-base"
INIT_FILE, INIT_CLASSES_FOLDER = "init.safetensors", "init-classes"  # the selection, while it is made
CARD_FILE = "README.md"  # an export's card (a Hugging Face dataset card with --format hf)
HF_DATA_FOLDER = "data"  # an hf export's parquet shards


def class_folder(index: int, name: str) -> str:
    """``003_dress``: the folder of a class in a set's PNG tree (sorted folder order = class order)."""
    return f"{index:03d}_" + "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def stage_dir(cfg: Config, stage: str) -> Path:
    return Path(cfg.out) / stage


def cache_dir(cfg: Config) -> Path:
    return Path(cfg.out) / "cache"


# teachers


def pool_file(epoch: float) -> str:
    """A pool checkpoint's path relative to the teachers' folder."""
    return f"{POOL_FOLDER}/epoch_{epoch:07.3f}.safetensors"


def pool_index_path(cfg: Config) -> Path:
    return stage_dir(cfg, "teachers") / POOL_INDEX


def final_teacher_path(cfg: Config) -> Path:
    return stage_dir(cfg, "teachers") / FINAL_FILE


# projector


def window_name(cfg: Config) -> str:
    """The projector folder of this config's weak teachers (``teachers-<epochs>``, or ``rule-ipc<IPC>`` for
    the position rule), so the IPCs of one run, whose windows differ, each keep their projector."""
    epochs = cfg.projector.teacher_epochs
    return "teachers-" + "-".join(f"{e:g}" for e in epochs) if epochs else f"rule-ipc{cfg.distill.ipc}"


def projector_path(cfg: Config) -> Path:
    """Stage 3's adapters for this config's weak teachers."""
    return stage_dir(cfg, "projector") / window_name(cfg) / ADAPTER_FILE


# distilled sets and their evaluation


def variant(cfg: Config) -> str:
    d = cfg.distill
    if d.init in ("random", "folder"):
        return d.init  # no image update on either: real images, or someone else's finished set
    return "rded-update" if d.update else "rded"


def set_name(cfg: Config) -> str:
    return f"{spec_of(cfg).set_stem(cfg)}-{variant(cfg)}"  # how many images (the task says how), how made


def distilled_dir(cfg: Config) -> Path:
    return stage_dir(cfg, "distill") / set_name(cfg)


def adapted_projector_path(cfg: Config) -> Path:
    """Where distill writes the view-adapted adapters of this distilled set."""
    return distilled_dir(cfg) / ADAPTER_FILE


def evaluate_dir(cfg: Config) -> Path:
    """One folder per distilled set, so evaluating one never overwrites another."""
    return stage_dir(cfg, "evaluate") / set_name(cfg)


def student_runs_dir(cfg: Config) -> Path:
    return evaluate_dir(cfg) / "runs"


def student_run_file(runs: Path, source: str, arch: str, seed: int) -> Path:
    """A finished student run's row, bound to its key."""
    return runs / f"{source}-{arch}-seed{seed}.json"


def student_state_file(runs: Path, source: str, arch: str, seed: int) -> Path:
    """An unfinished student run's resume point."""
    return runs / f"{source}-{arch}-seed{seed}.{STATE_FILE}"


def label_store_dir(cfg: Config, source: str, seed: int) -> Path:
    """Stored labels of one seed (a ``rank<r>/`` folder per process below it)."""
    return evaluate_dir(cfg) / f"{source}-labels" / f"seed{seed}"


def evaluations_in(run: Path) -> list[Path]:
    """The ``metrics.json`` of every evaluated set of a run folder (what ``hellodd report`` reads)."""
    return sorted((Path(run) / "evaluate").glob(f"*/{METRICS_FILE}"))


def teacher_metrics_in(run: Path) -> Path:
    return Path(run) / "teachers" / METRICS_FILE


def frontier_plot(ipc: int | None) -> str:
    """The report's plot: one for a single IPC, else one per IPC."""
    return "frontier.png" if ipc is None else f"frontier-ipc{ipc}.png"


def export_dir(cfg: Config) -> Path:
    return Path(cfg.out) / "export" / f"{cfg.preset}-{set_name(cfg)}"


def hf_shard(split: str, index: int, count: int) -> str:
    """An hf export's shard, relative to the export (the Hub's ``data/<split>-00000-of-00001.parquet``)."""
    return f"{HF_DATA_FOLDER}/{split}-{index:05d}-of-{count:05d}.parquet"


def hf_shards_glob(split: str) -> str:
    """The pattern of a split's shards, as a dataset card's ``configs`` names them."""
    return f"{HF_DATA_FOLDER}/{split}-*.parquet"
