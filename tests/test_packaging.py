"""The wheel has one top-level package, `llmkit`, with commands and presets inside it."""

import subprocess
import sys
import zipfile

from helpers import ROOT


def test_wheel_has_exactly_one_top_level_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("llmkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"llmkit"}
    # the wheel holds every module and every preset of the tree (not a list kept by hand)
    tree = {str(path.relative_to(ROOT / "src")) for path in (ROOT / "src" / "llmkit").rglob("*")
            if path.is_file() and path.suffix in (".py", ".yaml", ".json", ".jinja") and "__pycache__" not in path.parts}
    assert "llmkit/commands/sft.py" in tree and "llmkit/presets/tokenize/bpe-4k.yaml" in tree
    assert tree <= set(names), sorted(tree - set(names))
    metadata = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    for dependency in ("torch", "transformers", "tokenizers", "datasets", "peft", "bitsandbytes", "accelerate",
                       "deepspeed", "typer", "rich", "pyyaml"):
        assert f"Requires-Dist: {dependency}" in text
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "llmkit = llmkit.commands:main" in entry


def test_installed_versions_satisfy_the_declared_ranges():
    from importlib import metadata

    from packaging.requirements import Requirement

    for line in metadata.requires("llmkit"):
        requirement = Requirement(line)
        if requirement.marker is not None:
            continue
        installed = metadata.version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), (requirement, installed)
    torch = next(Requirement(line) for line in metadata.requires("llmkit") if Requirement(line).name == "torch")
    assert torch.specifier.contains("2.13.0")  # the CPU build this project installs must stay inside the range
