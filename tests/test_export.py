"""Export and hellodd.load: a set travels alone, is verified part by part, and trains a student anywhere."""

import json
import re
import shutil
import subprocess
import tarfile

import pytest
import torch

from conftest import PYTHON, REPO, cli_env
from hellodd.cli import main
from hellodd.errors import UserError

pytestmark = pytest.mark.xdist_group("export")  # under xdist, one worker builds the module's export


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A synthetic run (every stage, evaluated) and its export, made with --tar and --png."""
    out = tmp_path_factory.mktemp("run")
    for stage in ("teachers", "projector", "distill", "evaluate"):
        assert main([stage, "--preset", "synthetic", "--out", str(out)]) == 0
    dest = tmp_path_factory.mktemp("shared") / "synthetic-set"
    assert (
        main(["export", "--preset", "synthetic", "--out", str(out), "--to", str(dest), "--tar", "--png"]) == 0
    )
    return out, dest


def _fresh_copy(src, tmp_path):
    dest = tmp_path / src.name
    shutil.copytree(src, dest)
    return dest


def test_manifest_describes_every_part_and_the_results(exported):
    out, dest = exported
    m = json.loads((dest / "manifest.json").read_text())
    on_disk = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m["parts"]) == on_disk  # every file but the manifest itself, with its bytes and sha256
    assert all(m["parts"][k]["bytes"] == (dest / k).stat().st_size for k in on_disk)
    assert len([k for k in on_disk if k.startswith("png/")]) == m["count"] == 8
    assert (
        m["bytes"]["labels"] == (out / "distill" / "ipc2-rded-update" / "adapters.safetensors").stat().st_size
    )
    assert m["classes"] and m["base"]["name"] == "clip:hellodd-RN-tiny" and m["base"]["seed"] == 0
    assert m["views"]["crop_scale"][0] == 0.5 and m["loss"]["name"] == "mse"
    projector = m["results"]["per_source"]["projector"]["convnet-d2-w16"]
    rows = [r for r in json.loads((out / "evaluate" / "ipc2-rded-update" / "results.json").read_text())]
    mine = [r["score"] for r in rows if r["source"] == "projector"]
    assert projector["seeds"] == 2 and projector["mean"] == pytest.approx(sum(mine) / len(mine))
    assert m["base"]["head_init"].startswith("clip-text") and any(
        k.startswith("base/text-head-") for k in on_disk
    )
    card = (dest / "README.md").read_text()
    assert "hellodd.load" in card and f"{m['bytes']['labels']:,}" in card
    names = tarfile.open(dest.with_suffix(".tar")).getnames()
    assert "synthetic-set/manifest.json" in names and len(names) > len(on_disk)


def test_load_reproduces_the_runs_labeller_and_stream(exported):
    import hellodd
    from hellodd.augment import Stream, render
    from hellodd.projector import load_projector, merged_for_inference

    out, dest = exported
    ds = hellodd.load(dest.with_suffix(".tar"))  # the archive, unpacked and checked
    assert len(ds) == 8 and ds.images.dtype == torch.uint8 and len(ds.classes) == 4
    ref = merged_for_inference(load_projector(out / "distill" / "ipc2-rded-update" / "adapters.safetensors"))
    x, y, target = next(iter(ds.loader(batch_size=4, epochs=1, seed=5)))
    idx, crops, mix = Stream(8, 16, 4, 5, min_scale=0.5, cutmix_alpha=1.0).batch_params(0, 0)
    assert torch.equal(x, render(ds.images, idx, crops, mix, "cpu")) and torch.equal(y, ds.labels[idx])
    with torch.no_grad():
        assert torch.allclose(target, ref(x), atol=1e-5)
    loss = ds.loss(torch.zeros(4, 4, requires_grad=True), target, y)
    assert loss.requires_grad and loss.item() > 0
    image, label = ds.dataset()[3]
    assert image.shape == (3, 16, 16) and 0 <= image.min() and image.max() <= 1 and label == int(ds.labels[3])


def test_readme_loop_runs_as_written_in_a_fresh_process(exported, tmp_path):
    """The README's loop, pointed at a copy of the export: no run folder, no hellodd state beside it."""
    _, dest = exported
    copy = _fresh_copy(dest, tmp_path)
    block = re.search(r"<!-- load-loop -->\s*```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md lacks the load-loop example"
    code = re.sub(r'hellodd\.load\("[^"]*"\)', f'hellodd.load("{copy.name}")', block.group(1))
    assert code != block.group(1) and code.count("\n") <= 12
    code, n = re.subn(r"epochs=\d+", "epochs=3", code)  # the loop as written, for 3 of its epochs
    assert n == 1
    done = subprocess.run(
        [PYTHON, "-c", code + "\nprint('final loss', float(loss))"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "final loss" in done.stdout


@pytest.mark.parametrize(
    "part", ["images.safetensors", "adapters.safetensors", "README.md", "manifest.json", "png", "base"]
)
def test_a_changed_byte_anywhere_is_refused_with_one_line(exported, tmp_path, part, capsys):
    _, dest = exported
    copy = _fresh_copy(dest, tmp_path)
    target = {
        "png": next((copy / "png").rglob("*.png")),
        "base": next((copy / "base").iterdir()),
    }.get(part, copy / part)
    data = bytearray(target.read_bytes())
    if part == "manifest.json":  # a value changed, the JSON still valid
        data = bytearray(bytes(data).replace(b'"flip": 0.5', b'"flip": 0.0'))
    else:
        data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(UserError, match=re.escape(target.name)):
        import hellodd

        hellodd.load(copy)
    assert main(["verify", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("hellodd: error:") and target.name in err


def test_a_truncated_or_missing_part_is_refused(exported, tmp_path):
    import hellodd

    _, dest = exported
    copy = _fresh_copy(dest, tmp_path)
    a = copy / "adapters.safetensors"
    a.write_bytes(a.read_bytes()[:-10])
    with pytest.raises(UserError, match="adapters.safetensors: .* bytes, the manifest says"):
        hellodd.load(copy)
    a.unlink()
    with pytest.raises(UserError, match="adapters.safetensors: missing"):
        hellodd.load(copy)
    with pytest.raises(UserError, match="not a hellodd export"):
        hellodd.load(tmp_path / "nowhere")


def test_verify_prints_what_it_checked(exported, capsys):
    _, dest = exported
    assert main(["verify", str(dest)]) == 0
    assert "8 images" in capsys.readouterr().out


def test_export_without_a_set_is_one_line(tmp_path, capsys):
    assert main(["export", "--preset", "synthetic", "--out", str(tmp_path)]) == 2
    assert "no distilled set to export" in capsys.readouterr().err


def test_a_pretrained_base_needs_its_own_checkpoint(exported, tmp_path, capsys):
    """A CLIP base from a user's file: the export records its sha256; load takes the file from the user and
    refuses any other (one line, exit code 2 through `hellodd verify`)."""
    import open_clip

    from hellodd.projector.clip import _register_model_configs

    out, _ = exported
    _register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("hellodd-RN-tiny", pretrained=None)
    ckpt = tmp_path / "clip.pt"
    torch.save(model.state_dict(), ckpt)
    run = tmp_path / "run"
    shutil.copytree(out / "teachers", run / "teachers")
    common = ["--preset", "synthetic", "--out", str(run), "--clip-checkpoint", str(ckpt)]
    common += ["--set", "projector.random_init=false", "--set", "distill.adapt_steps=0"]
    for stage in ("projector", "distill"):
        assert main([stage, *common]) == 0
    assert main(["export", *common, "--to", str(tmp_path / "exp")]) == 0
    m = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert m["base"]["pretrained"] and m["base"]["seed"] is None and len(m["base"]["checkpoint_sha256"]) == 64
    moved = tmp_path / "elsewhere.pt"
    ckpt.rename(moved)  # another machine: the recorded path does not exist there
    assert main(["verify", str(tmp_path / "exp")]) == 2
    assert "needs its base checkpoint" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "exp"), "--base-checkpoint", str(moved)]) == 0
    capsys.readouterr()
    with torch.no_grad():
        model.visual.conv1.weight.add_(0.01)
    torch.save(model.state_dict(), tmp_path / "other.pt")
    assert main(["verify", str(tmp_path / "exp"), "--base-checkpoint", str(tmp_path / "other.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "other.pt: not the base checkpoint" in err and err.count("\n") == 0
