import pytest

from hellodd import config as C
from hellodd.errors import UserError


@pytest.mark.parametrize("name", list(C.PRESETS))
def test_every_preset_builds_and_validates(name):
    cfg = C.preset(name)
    C.validate(cfg)
    assert cfg.preset == name


PAPER = ("imagenet-100", "imagenet-1k", "places365")
RANKS = {"imagenet-100": (8, 64), "imagenet-1k": (8, 128), "places365": (8, 128)}  # supplement A.4

# (table, item, what the preset or the code must give, the supplement's value); every row of
# supplement Tables 1-3 and the numbers of A.4 and A.5
SUPPLEMENT = [
    ("1", "optimizer", lambda c: _opt("teacher", c), "SGD"),
    ("1", "base learning rate", lambda c: c.teacher.lr, 0.1),
    ("1", "scheduler: step (x gamma every step size)", lambda c: _step_lr(c), [0.1, 0.1, 0.01, 0.001]),
    ("1", "weight decay", lambda c: c.teacher.weight_decay, 1e-4),
    ("1", "learning-rate step size", lambda c: c.teacher.lr_step, 30),
    ("1", "momentum", lambda c: c.teacher.momentum, 0.9),
    ("1", "batch size", lambda c: c.teacher.batch_size, 256),
    ("1", "model pool size (weak teachers)", lambda c: len(c.projector.teacher_epochs), 9),
    ("1", "model pool size (projector.num_teachers)", lambda c: c.projector.num_teachers, 9),
    ("1", "training epochs", lambda c: c.teacher.epochs, 90),
    ("A.2", "teacher architecture", lambda c: c.teacher.arch, "resnet18"),
    ("2", "optimizer", lambda c: _opt("projector", c), "AdamW"),
    ("2", "learning rate", lambda c: c.projector.lr, 5e-4),
    ("2", "head learning rate (same)", lambda c: c.projector.head_lr or c.projector.lr, 5e-4),
    ("2", "training epochs", lambda c: c.projector.epochs, 20),
    ("2", "loss type MSE + CE (weight 0.1)", lambda c: _transfer_loss(c), True),
    ("2", "CE weight", lambda c: c.projector.ce_weight, 0.1),
    ("2", "batch size", lambda c: c.projector.batch_size, 256),
    ("3", "optimizer", lambda c: _opt("student", c), "AdamW"),
    ("3", "learning rate", lambda c: c.evaluate.lr, 1e-3),
    ("3", "training epochs", lambda c: c.evaluate.epochs, 300),
    ("3", "loss type MSE + CE", lambda c: c.evaluate.loss, "mse"),
    ("3", "CE weight", lambda c: c.evaluate.ce_weight, 0.025),
    ("3", "batch size", lambda c: c.evaluate.batch_size, 100),
    ("3", "augmentation CutMix, alpha", lambda c: c.evaluate.cutmix_alpha, 1.0),
    ("3", "student", lambda c: c.evaluate.students, ["resnet18"]),
    ("A.3", "projector base CLIP ResNet-50", lambda c: c.projector.base, "clip:RN50"),
    ("A.4", "encoder rank", lambda c: c.projector.encoder_rank, "RANK0"),
    ("A.4", "head rank", lambda c: c.projector.head_rank, "RANK1"),
    ("A.4", "every encoder layer adapted", lambda c: c.projector.frozen_depth, 0.0),
    ("A.5", "image-update optimizer", lambda c: _opt("update", c), "Adam"),
    ("A.5", "image-update learning rate", lambda c: c.distill.update_lr, 0.01),
    ("A.5", "image-update epochs", lambda c: c.distill.update_epochs, 300),
    (
        "A.5",
        "RDED initialisation, then the update",
        lambda c: (c.distill.init, c.distill.update),
        ("rded", True),
    ),
    ("-", "hellodd's view adaptation off", lambda c: c.distill.adapt_steps, 0),
    ("-", "hellodd's CutMix-ed transfer batches off", lambda c: c.projector.cutmix_prob, 0.0),
]


def _opt(which: str, cfg) -> str:
    import torch

    from hellodd.image_update import update_optimizer
    from hellodd.projector.transfer import adapter_optimizer
    from hellodd.students import student_optimizer
    from hellodd.teachers import teacher_optimizer

    lin = torch.nn.Linear(2, 2)
    lin.lora_A = torch.nn.Parameter(torch.zeros(1))  # a parameter the adapter optimiser trains
    make = {
        "teacher": lambda: teacher_optimizer(lin, cfg.teacher),
        "projector": lambda: adapter_optimizer(lin, cfg.projector),
        "student": lambda: student_optimizer(lin, cfg.evaluate.lr, cfg.evaluate.weight_decay),
        "update": lambda: update_optimizer(torch.zeros(1, requires_grad=True), cfg),
    }[which]
    return type(make()).__name__


def _step_lr(cfg) -> list[float]:
    from hellodd.teachers import lr_at

    return [round(lr_at(cfg, e * 10, 10), 6) for e in (0, 29, 30, 60)]  # epochs 0, 29, 30, 60 (10 steps each)


def _transfer_loss(cfg) -> bool:
    import torch
    import torch.nn.functional as F

    from hellodd.projector.transfer import transfer_loss

    class Fab:
        @staticmethod
        def autocast():
            import contextlib

            return contextlib.nullcontext()

    torch.manual_seed(0)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    student, teacher = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    from hellodd.tasks import TASKS

    loss, mse, ce = transfer_loss(
        Fab, student, [teacher], x, y, cfg.projector.ce_weight, TASKS["classification"]
    )
    want = F.mse_loss(student(x), teacher(x)) + 0.1 * F.cross_entropy(student(x), y)
    return bool(torch.allclose(loss, want))


@pytest.mark.parametrize("name", PAPER)
@pytest.mark.parametrize("table, item, get, want", SUPPLEMENT, ids=[f"T{r[0]}-{r[1]}" for r in SUPPLEMENT])
def test_paper_presets_equal_the_supplement(name, table, item, get, want):
    cfg = C.preset(name)
    if isinstance(want, str) and want.startswith("RANK"):
        want = RANKS[name][int(want[-1])]
    assert get(cfg) == want, f"{name}: supplement {table}, {item}"


@pytest.mark.parametrize(
    "name, ipc, window",
    [
        ("imagenet-100", 1, [float(e) for e in range(1, 10)]),
        ("imagenet-100", 10, [float(e) for e in range(5, 50, 5)]),
        ("imagenet-100", 50, [float(e) for e in range(10, 100, 10)]),
        ("imagenet-1k", 1, [float(e) for e in range(2, 20, 2)]),
        ("imagenet-1k", 10, [float(e) for e in range(10, 55, 5)]),
        ("imagenet-1k", 50, [float(e) for e in range(50, 95, 5)]),
        ("places365", 10, [float(e) for e in range(10, 55, 5)]),
    ],
)
def test_weak_teacher_window_moves_with_dataset_and_ipc(name, ipc, window):
    cfg = C.apply_overrides(C.preset(name), [f"distill.ipc={ipc}"])
    assert cfg.projector.teacher_epochs == window
    assert set(window) <= set(cfg.teacher.pool_epochs)  # the trajectory keeps every checkpoint it needs
    assert C.apply_overrides(cfg, ["projector.teacher_epochs=3,4"]).projector.teacher_epochs == [3.0, 4.0]


def test_paper_windows_differ_by_dataset_and_ipc():
    windows = {
        (n, ipc): tuple(C.apply_overrides(C.preset(n), [f"distill.ipc={ipc}"]).projector.teacher_epochs)
        for n in ("imagenet-100", "imagenet-1k")
        for ipc in (1, 10, 50)
    }
    assert len(set(windows.values())) == 6
    for n in ("imagenet-100", "imagenet-1k"):  # later checkpoints for larger IPC
        assert windows[(n, 1)][0] < windows[(n, 10)][0] < windows[(n, 50)][0]
    assert windows[("imagenet-100", 10)][0] < windows[("imagenet-1k", 10)][0]  # and for more classes


@pytest.mark.parametrize(
    "override, getter, expected",
    [
        ("teacher.epochs=3", lambda c: c.teacher.epochs, 3.0),
        ("teacher.batch_size=17", lambda c: c.teacher.batch_size, 17),
        ("teacher.arch=resnet18", lambda c: c.teacher.arch, "resnet18"),
        ("projector.random_init=true", lambda c: c.projector.random_init, True),
        ("projector.random_init=0", lambda c: c.projector.random_init, False),
        ("teacher.pool_epochs=0.5,1", lambda c: c.teacher.pool_epochs, [0.5, 1.0]),
        ('evaluate.students=["convnet", "resnet18"]', lambda c: c.evaluate.students, ["convnet", "resnet18"]),
        ("evaluate.seeds=4,5", lambda c: c.evaluate.seeds, [4, 5]),
        (
            "evaluate.students=[convnet, mobilenet_v2]",
            lambda c: c.evaluate.students,
            ["convnet", "mobilenet_v2"],
        ),
        ("evaluate.seeds=[0]", lambda c: c.evaluate.seeds, [0]),
        ("projector.frozen_depth=0.5", lambda c: c.projector.frozen_depth, 0.5),
        ("projector.cutmix_prob=1", lambda c: c.projector.cutmix_prob, 1.0),
        ("out=/tmp/x", lambda c: c.out, "/tmp/x"),
    ],
)
def test_overrides_are_coerced_to_field_types(override, getter, expected):
    cfg = C.apply_overrides(C.preset("fashion-mnist"), [override])
    value = getter(cfg)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("teacher.nope=1", "unknown key 'teacher.nope'"),
        ("nosection.x=1", "unknown key 'nosection'"),
        ("teacher.batch_size=abc", "teacher.batch_size"),
        ("projector.random_init=maybe", "projector.random_init"),
        ("teacher.epochs", "expected key=value"),
        ("teacher=3", "name a field"),
        ("teacher.epochs=-1", "teacher.epochs"),
        ("distill.init=magic", "distill.init"),
        ("teacher.pool_epochs=0.5,9", "teacher.pool_epochs"),
        ("evaluate.label_sources=hard,psychic", "evaluate.label_sources"),
        ("projector.head_lr=-1", "projector.head_lr"),
        ("projector.cutmix_prob=1.5", "projector.cutmix_prob"),
        ("projector.frozen_depth=1", "projector.frozen_depth"),
        ("evaluate.seeds=[0", "evaluate.seeds"),
        ("distill.adapt_steps=-5", "distill.adapt_steps"),
        ("distill.update_epochs=-1", "distill.update_epochs"),
        ("distill.crop_min_scale=0", "distill.crop_min_scale"),
        ("evaluate.label_sources=[]", "evaluate.label_sources"),
        ("evaluate.baseline_sources=hard,oracle", "evaluate.baseline_sources"),
        ("evaluate.compressed_topk=0", "evaluate.compressed_topk"),
        ("evaluate.compressed_epoch_fraction=0", "evaluate.compressed_epoch_fraction"),
        ("evaluate.compressed_epoch_fraction=1.5", "evaluate.compressed_epoch_fraction"),
        ("projector.adapter_dtype=int8", "projector.adapter_dtype"),
    ],
)
def test_bad_overrides_name_the_option(override, fragment):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        C.apply_overrides(C.preset("fashion-mnist"), [override])


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown preset 'cifar-99'"):
        C.preset("cifar-99")


def test_dict_round_trip_and_unknown_keys():
    cfg = C.apply_overrides(C.preset("imagenet-100"), ["teacher.epochs=95", "evaluate.students=vgg11"])
    back = C.from_dict(C.to_dict(cfg))
    assert back == cfg
    data = C.to_dict(cfg)
    data["teacher"]["bogus"] = 1
    with pytest.raises(UserError, match="unknown key 'teacher.bogus'"):
        C.from_dict(data, where="x.json")


def test_demo_settings_follow_the_ipc_and_explicit_overrides_win():
    at10 = C.preset("fashion-mnist")
    assert at10.distill.ipc == 10 and at10.distill.adapt_steps == 1200 and at10.projector.teacher_epochs
    assert at10.distill.adapt_batch == 25 and at10.evaluate.baseline_sources == ["hard", "projector"]
    at1 = C.apply_overrides(C.preset("fashion-mnist"), ["distill.ipc=1"])
    want1 = C.ipc_settings("fashion-mnist", 1)
    assert at1.distill.adapt_steps == want1["distill.adapt_steps"] != at10.distill.adapt_steps
    assert at1.distill.adapt_batch == 0  # an IPC-1 set's 10 images per step, as the students see them
    mine = C.apply_overrides(C.preset("fashion-mnist"), ["distill.adapt_steps=7", "distill.ipc=1"])
    assert mine.distill.adapt_steps == 7  # set by the user: the IPC's row does not replace it
    assert mine.distill.adapt_lr_scale == want1["distill.adapt_lr_scale"]
    at50 = C.apply_overrides(C.preset("fashion-mnist"), ["distill.ipc=50"])
    assert at50.distill.candidates_per_class >= 50  # RDED keeps IPC x factor^2 candidates per class
    # the rows are copies: changing one config's window leaves the table alone
    at1.projector.teacher_epochs.append(9.0)
    assert 9.0 not in C.ipc_settings("fashion-mnist", 1)["projector.teacher_epochs"]


def test_too_few_rded_candidates_are_refused_when_the_config_is_built():
    with pytest.raises(UserError, match="distill.candidates_per_class"):
        C.apply_overrides(C.preset("fashion-mnist"), ["distill.ipc=50", "distill.candidates_per_class=20"])
    C.apply_overrides(C.preset("fashion-mnist"), ["distill.ipc=50", "distill.init=random"])  # no candidates


@pytest.mark.parametrize(
    "sources, ok",
    [("[teacher+gift,projector+gift,stored+gift]", True), ("[hard+gift]", False), ("[teacher+foo]", False)],
)
def test_refined_label_sources(sources, ok):
    if ok:
        C.apply_overrides(C.preset("synthetic"), [f"evaluate.label_sources={sources}"])
    else:
        with pytest.raises(UserError, match="evaluate.label_sources"):
            C.apply_overrides(C.preset("synthetic"), [f"evaluate.label_sources={sources}"])


def test_each_config_asks_its_task_and_old_records_name_theirs():
    scenes, glyphs = C.preset("synthetic-scenes"), C.preset("synthetic")
    assert C.spec_of(scenes).name == C.spec_of(scenes.data).name == "segmentation"
    assert C.spec_of(glyphs) is C.named("classification") is C.named(None)  # a manifest without a task
    assert C.preset("fashion-mnist-scenes").evaluate.label_sources == list(C.spec_of(scenes).label_sources)
    with pytest.raises(UserError, match="unknown task 'depth' \\(one of classification, segmentation\\)"):
        C.named("depth")
    # result rows of this version, and of the one before the neutral keys (the metric's own key)
    for record, task, score in (
        ({"score": 1.0, "score_name": "mIoU"}, "segmentation", 1.0),
        ({"metric": "miou", "miou": 2.0, "pixel_accuracy": 9.0}, "segmentation", 2.0),
        ({"metric": "top1", "top1": 3.0, "top5": 9.0}, "classification", 3.0),
        ({"epoch": 1, "miou": 4.0}, "segmentation", 4.0),  # a teacher pool entry keeps its metric's key
        ({"task": "segmentation", "final_val_miou": 5.0}, "segmentation", None),
    ):
        assert (C.scored_by(record).name, C.scored_by(record).read(record)) == (task, score)
