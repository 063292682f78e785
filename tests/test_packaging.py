"""A non-editable install carries every data file the package reads (configs, the paper's
numbers): each one must be declared in setup.cfg's package_data, or `pip install .` users
lose it while the source checkout keeps working."""
from pathlib import Path

from setuptools.config.setupcfg import read_configuration

ROOT = Path(__file__).resolve().parents[1]


def test_every_data_file_of_every_package_is_declared():
    options = read_configuration(ROOT / "setup.cfg")["options"]
    declared = options.get("package_data", {})
    undeclared = []
    for package in options["packages"]:
        folder = ROOT / options["package_dir"].get(package, package.replace(".", "/"))
        shipped = {path for pattern in declared.get(package, ()) for path in folder.glob(pattern)}
        subpackages = {ROOT / options["package_dir"].get(p, p.replace(".", "/"))
                       for p in options["packages"] if p.startswith(package + ".")}
        for path in folder.rglob("*"):
            if (path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts
                    or any(sub in path.parents for sub in subpackages)):
                continue
            if path not in shipped:
                undeclared.append(str(path.relative_to(ROOT)))
    assert not undeclared, f"files setup.cfg's package_data does not ship: {undeclared}"
