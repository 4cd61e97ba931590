import pytest

from hellodd import config as C
from hellodd.errors import UserError


@pytest.mark.parametrize("name", list(C.PRESETS))
def test_every_preset_builds_and_validates(name):
    cfg = C.preset(name)
    C.validate(cfg)
    assert cfg.preset == name


def test_paper_presets_carry_the_supplement_tables():
    cfg = C.preset("imagenet-1k")
    t, p, e = cfg.teacher, cfg.projector, cfg.evaluate
    assert (t.arch, t.lr, t.momentum, t.weight_decay, t.lr_step, t.batch_size, t.epochs) == (
        "resnet18",
        0.1,
        0.9,
        1e-4,
        30,
        256,
        90,
    )
    assert len(t.pool_epochs) == 9
    assert (p.encoder_rank, p.head_rank, p.lr, p.epochs, p.batch_size, p.ce_weight) == (
        8,
        128,
        5e-4,
        20,
        256,
        0.1,
    )
    assert (e.lr, e.epochs, e.batch_size, e.ce_weight, e.cutmix_alpha) == (1e-3, 300, 100, 0.025, 1.0)
    assert C.preset("imagenet-100").projector.head_rank == 64
    assert (cfg.distill.update_lr, cfg.distill.update_iters) == (0.01, 300)
    assert cfg.distill.adapt_steps == 0  # the view adaptation is hellodd's, off in the paper presets


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
