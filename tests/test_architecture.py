"""Imports point one way: config -> models/hooks/data -> losses -> distiller -> training -> tasks -> deploy -> cli.

Every module of the package sits in one tier below; it may import its own tier and the tiers before it, never
a later one (read from the source, lazy imports inside functions included). A new module must be given a tier
here: that is the moment to decide where it belongs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# installed name -> folder in the repository (pyproject's package-dir)
PACKAGES = {"yolodistill": ROOT / "yolodistill", "yolodistill.hooks": ROOT / "hooks",
            "yolodistill.classification": ROOT / "classification"}

TIERS = [
    # foundations: no knowledge of models or training (options: how a dataclass field becomes a flag)
    ["yolodistill", "yolodistill.errors", "yolodistill.paths", "yolodistill.checkpoint", "yolodistill.run_logger",
     "yolodistill.options", "yolodistill.data_options", "yolodistill.synth", "yolodistill.losses.registry",
     "yolodistill.classification.digits", "yolodistill.image_lists", "yolodistill.media", "yolodistill.detection",
     "yolodistill.classification"],
    # what to distil, where the process runs, every command's options
    ["yolodistill.config", "yolodistill.distributed", "yolodistill.detection.train_options",
     "yolodistill.detection.inference_options", "yolodistill.classification.options", "yolodistill.deploy.options",
     "yolodistill.quickstart_options"],
    # models, hooks and adapters, data, compression, runtimes (runtime/ runs model files; deploy/ builds them)
    ["yolodistill.yolo_backend", "yolodistill.detection.class_map", "yolodistill.detection.teacher",
     "yolodistill.hooks", "yolodistill.compress", "yolodistill.runtime", "yolodistill.classification.models",
     "yolodistill.classification.data",
     "yolodistill.classification.store", "yolodistill.classification.clip_teacher",
     "yolodistill.classification.teachers", "yolodistill.students"],
    # losses: pure tensors
    ["yolodistill.losses", "yolodistill.classification.losses"],
    ["yolodistill.distiller"],
    ["yolodistill.training"],
    # the tasks: training, inference
    ["yolodistill.detection.distillation", "yolodistill.detection.unlabeled", "yolodistill.detection.run_setup",
     "yolodistill.detection.trainer", "yolodistill.detection.inference", "yolodistill.classification.trainer",
     "yolodistill.classification.distill", "yolodistill.classification.clip_distill",
     "yolodistill.classification.predict", "yolodistill.classification.embed", "yolodistill.classification.filter"],
    # deployment reads what the tasks wrote
    ["yolodistill.deploy", "yolodistill.quickstart"],
    # the commands
    ["yolodistill.cli", "yolodistill.__main__", "yolodistill.classification.cli", "yolodistill.deploy.cli"],
]


def _module_name(path: Path) -> str:
    for pkg, folder in sorted(PACKAGES.items(), key=lambda kv: -len(kv[0])):
        if folder in path.parents:
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([pkg, *parts])
    raise ValueError(path)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for folder in PACKAGES.values() for p in sorted(folder.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports (a `from pkg import mod` counts as importing pkg.mod)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {t for t in found if t == "yolodistill" or t.startswith("yolodistill.")}


def _tier(name: str) -> int:
    """The tier of the longest listed prefix (yolodistill.deploy.cli before yolodistill.deploy)."""
    best, tier = -1, None
    for i, names in enumerate(TIERS):
        for listed in names:
            if (name == listed or name.startswith(listed + ".")) and len(listed) > best:
                best, tier = len(listed), i
    if tier is None:
        raise KeyError(name)
    return tier


def test_every_module_has_a_tier():
    missing = []
    for name in _modules():
        try:
            _tier(name)
        except KeyError:
            missing.append(name)
    assert not missing, f"give these modules a tier in tests/test_architecture.py: {missing}"


def test_imports_point_one_way():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        for target in _imports(name, path, set(modules)):
            if target in modules and _tier(target) > _tier(name):
                upward.append(f"{name} (tier {_tier(name)}) imports {target} (tier {_tier(target)})")
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


def test_only_the_backend_imports_yolov5():
    users = [name for name, path in _modules().items()
             if any(t == "yolov5" or t.startswith("yolov5.") for t in _all_imports(path))]
    assert users and all(name.startswith("yolodistill.yolo_backend.") for name in users), users


def _all_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("folder", ["hooks", "classification"])
def test_root_folders_import_the_package_by_its_installed_name(folder):
    """hooks/ and classification/ install as yolodistill.hooks/.classification: `from ..errors` would hide
    where an import lands, so imports that leave the folder spell out `yolodistill.`."""
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.relative_to(ROOT)}:{node.lineno}: use `from yolodistill...`"


def test_every_package_is_listed_for_the_wheel():
    """pyproject lists its packages by hand (hooks/ and classification/ live at the root): a folder left out
    would import from a checkout and be missing from an installed wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {_module_name(init) for folder in PACKAGES.values() for init in folder.rglob("__init__.py")}
    assert on_disk - listed == set()


TASKS = ("yolodistill.detection", "yolodistill.classification")
# The command layer may import the tasks (it runs them), and so may what reads both tasks' finished checkpoints.
COMMANDS = ("yolodistill.cli", "yolodistill.__main__", "yolodistill.quickstart", "yolodistill.deploy",
            # load_student reads both tasks' finished checkpoints (classification.models rebuilds a classifier from
            # one), as deploy/ does; runtime/ reaches it only lazily, for a .pt file
            "yolodistill.students")


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_the_core_imports_no_task():
    """The core (config, hooks, losses, distiller, training, ...) knows no task: detection/ and classification/
    import it, never the other way, so a task is added or changed without touching the core."""
    modules = _modules()
    for name, path in modules.items():
        if not _within(name, TASKS + COMMANDS):
            bad = [t for t in _imports(name, path, set(modules)) if _within(t, TASKS)]
            assert not bad, f"{name} imports {bad}"


def test_deploy_imports_no_trainer():
    """Deployment reads checkpoints; it never builds a training run."""
    modules = _modules()
    training = ("yolodistill.training", "yolodistill.detection.run_setup", "yolodistill.detection.trainer",
                "yolodistill.classification.trainer", "yolodistill.classification.distill",
                "yolodistill.classification.clip_distill")
    for name, path in modules.items():
        if name.startswith("yolodistill.deploy.") and name != "yolodistill.deploy.cli":
            bad = [t for t in _imports(name, path, set(modules)) if t.startswith(training)]
            assert not bad, f"{name} imports {bad}"


def test_every_public_name_resolves():
    """The lazily loaded public names point at something that exists (a rename must update them)."""
    import yolodistill
    import yolodistill.classification as classification

    for package in (yolodistill, classification):
        for name in package.__all__:
            assert getattr(package, name) is not None, (package.__name__, name)


def test_the_command_line_parser_imports_no_torch():
    """`yolodistill --help` and a typo's usage line come at once: torch, yolov5 and timm load only once a
    subcommand runs."""
    import subprocess
    import sys

    code = ("import sys; from yolodistill.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'yolov5', 'timm', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
