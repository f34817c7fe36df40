"""The project reads nothing outside its own checkout: a clone anywhere runs its tests.

Test data copied from elsewhere lives under tests/vectors/ with a README naming its origin.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A relative path ("../x"), not inside a URL or another path: it must stay in the checkout.
RELATIVE = re.compile(r"(?<![\w/:.])\.\./[\w./-]*")
PARENTS = re.compile(r"parents\[(\d+)\]")


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return [ROOT / f for f in out if f.endswith((".py", ".md", ".sh", ".yaml", ".yml", ".toml",
                                                 ".json", ".c"))
            or f in ("Makefile", "cni/meshnode-cni", ".ci/run")]


def test_no_file_points_outside_the_checkout() -> None:
    """Every relative path a file names resolves inside the checkout, seen from the file's
    own folder, and no file names an absolute path beside the checkout (its parent dir)."""
    beside = re.compile(re.escape(str(ROOT.parent) + "/") + r"(?!" + re.escape(ROOT.name) + r"\b)")
    offenders = []
    for path in tracked():
        if path.is_relative_to(ROOT / "tests" / "vectors") or path == Path(__file__):
            continue  # copied data; and this file, whose checker test plants a climb-out
        text = path.read_text(errors="replace")
        for m in RELATIVE.finditer(text):
            if not (path.parent / m.group(0)).resolve().is_relative_to(ROOT):
                offenders.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
        offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in beside.finditer(text)]
    assert offenders == []


def test_the_path_check_catches_a_climb_out() -> None:
    here = ROOT / "tests" / "unit" / "x.py"
    [m] = RELATIVE.findall('VECTORS = "../../../elsewhere/vectors"')
    assert not (here.parent / m).resolve().is_relative_to(ROOT)
    assert RELATIVE.findall('"spiffe://td/ns/../sa/b"') == []


def test_parents_index_stays_inside_the_checkout() -> None:
    offenders = []
    for path in tracked():
        if path.suffix != ".py" or path == Path(__file__):
            continue
        depth = len(path.relative_to(ROOT).parts) - 1  # parents[depth] is ROOT itself
        for m in PARENTS.finditer(path.read_text()):
            if int(m.group(1)) > depth:
                offenders.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert offenders == []


def test_copied_vectors_are_here_with_their_origin() -> None:
    vectors = ROOT / "tests" / "vectors" / "istio"
    assert "istio/istio at commit" in (vectors / "README.md").read_text()
    assert len(list((vectors / "iptables").glob("*.golden"))) == 14
    assert len(list((vectors / "nftables").glob("*.golden"))) >= 2
    assert (vectors / "install" / "list.conflist.golden").is_file()
