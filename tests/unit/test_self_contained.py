"""The project reads nothing outside its own checkout: a clone anywhere runs its tests.

Test data copied from elsewhere lives under tests/vectors/ with a README naming its origin.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A path that climbs out of the checkout: "../shared", a parents[N] deeper than the file's
# own depth is checked separately below, and any mention of the steering repo's shared/ dir.
OUTSIDE = re.compile(r"\.\./shared|\.\./\.library|/work/shared|shared/vectors|BRIEF\.md")
PARENTS = re.compile(r"parents\[(\d+)\]")


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return [ROOT / f for f in out if f.endswith((".py", ".md", ".sh", ".yaml", ".yml", ".toml",
                                                 ".json", ".c"))
            or f in ("Makefile", "cni/meshnode-cni", ".ci/run")]


def test_no_file_points_outside_the_checkout() -> None:
    offenders = []
    for path in tracked():
        if path.is_relative_to(ROOT / "tests" / "vectors") or path == Path(__file__):
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert offenders == []


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
