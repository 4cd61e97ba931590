"""The README's result tables come from the reports checked into docs/reports, and it names what exists."""

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_tables_equal_their_checked_in_reports():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- report (\S+) -->", readme)
    assert "docs/reports/fashion-mnist.json" in blocks  # the default demo's table is one of them
    assert _script().rendered(readme) == readme, "run: python scripts/readme_tables.py"


def test_a_changed_report_is_caught_by_the_check(tmp_path):
    """The check fails on drift: the demo's projector row moved by 0.01 no longer matches the README."""
    script = _script()
    report = json.loads((ROOT / "docs/reports/fashion-mnist.json").read_text())
    row = next(e for e in report["entries"] if e["source"] == "projector" and not e["random"])
    row["mean"] += 0.01
    (tmp_path / "docs/reports").mkdir(parents=True)
    (tmp_path / "docs/reports/fashion-mnist.json").write_text(json.dumps(report))
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text().split("## Results where labels are heavy")[0])
    script.ROOT = tmp_path
    assert script.main(["--check", "--readme", str(readme)]) == 1
    assert script.main(["--readme", str(readme)]) == 0  # regenerated from the changed report
    assert f"{row['mean']:.2f} ± {row['std']:.2f} (3)" in readme.read_text()
    assert script.main(["--check", "--readme", str(readme)]) == 0


def test_the_readme_names_every_preset():
    from hellodd.config.presets import PRESETS

    readme = (ROOT / "README.md").read_text()
    missing = [name for name in PRESETS if f"`{name}`" not in readme]
    assert not missing, f"presets the README does not name: {missing}"


def test_the_readme_layout_names_every_module():
    """Each module of src/hellodd has its own line in the README's Layout section, and no line names a module
    that is gone."""
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    layout = layout.split("src/hellodd/", 1)[1].split("\ntests/", 1)[0]  # the package's block
    named = set(re.findall(r"^ +(\S+\.py) ", layout, re.MULTILINE))
    package = ROOT / "src" / "hellodd"
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py")}
    assert modules - named == set(), "modules the README's Layout does not name"
    assert named - modules == set(), "the README's Layout names modules that do not exist"
