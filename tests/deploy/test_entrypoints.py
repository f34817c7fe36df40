"""The image's entrypoint and every container's command line are real `meshnode` commands,
as the CLI's own parser reads them, and the files they name are mounted."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import pytest

from cli.main import build_parser
from tests.deploy.manifests import DEPLOY, find, plain, pod_specs, render

Obj = dict[str, Any]


def parse(argv: list[str]) -> Any:
    """The CLI's parse of argv; argparse exits (code 2) on anything it does not know."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`meshnode {shlex.join(argv)}` is not a valid command line "
                             f"(exit {exc.code})") from None


def subcommands() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(sub.choices or ())


def dockerfile_instruction(name: str) -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text()
    hits = re.findall(rf"^{name}\s+(.+)$", text, flags=re.M)
    assert len(hits) == 1, f"{name}: {hits}"
    value: list[str] = json.loads(hits[0])  # exec form only: no shell in between
    return value


def test_image_entrypoint_is_the_cli() -> None:
    assert dockerfile_instruction("ENTRYPOINT") == ["meshnode"]
    cmd = dockerfile_instruction("CMD")
    assert cmd[0] in subcommands()
    parse(cmd)


def test_the_parser_knows_the_daemons() -> None:
    assert {"agent", "proxy", "controlplane"} <= subcommands()


def _ids(v: object) -> str:
    return v if isinstance(v, str) else ""


def workloads() -> list[tuple[str, list[Obj]]]:
    return [("plain", [o for _f, o in plain()]), ("helm", render()),
            ("helm-ebpf", render({"capture": {"backend": "ebpf"}}))]


@pytest.mark.parametrize(("source", "objs"), workloads(), ids=_ids)
def test_every_container_runs_a_meshnode_command(source: str, objs: list[Obj]) -> None:
    seen = set()
    for workload, spec in pod_specs(objs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{source}: {workload}/{c['name']}"
            assert c.get("command") == ["meshnode"], where
            args = parse(c["args"])
            seen.add(args.command)
    assert seen == {"agent", "proxy", "controlplane"}


def mounted_files(spec: Obj, c: Obj, objs: list[Obj]) -> dict[str, tuple[str, str]]:
    """mountPath -> (ConfigMap name, key) for every ConfigMap file or directory mount."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    out = {}
    for m in c.get("volumeMounts", []):
        cm = volumes[m["name"]].get("configMap")
        if cm is None:
            continue
        data = find(objs, "ConfigMap", cm["name"])["data"]
        if "subPath" in m:
            out[m["mountPath"]] = (cm["name"], m["subPath"])
        else:
            for key in data:
                out[f"{m['mountPath']}/{key}"] = (cm["name"], key)
    return out


@pytest.mark.parametrize(("source", "objs"), workloads(), ids=_ids)
def test_config_files_on_the_command_line_are_mounted(source: str, objs: list[Obj]) -> None:
    for workload, spec in pod_specs(objs):
        for c in spec["containers"]:
            args = parse(c["args"])
            path = getattr(args, "config", None) or getattr(args, "mesh", None)
            if path is None:
                # The control plane's source is the API server (no file): in-cluster.
                assert (args.command, args.kubeconfig) == ("controlplane", None), workload
                continue
            files = mounted_files(spec, c, objs)
            assert path in files, f"{source}: {workload}/{c['name']}: {path} is not mounted"
            cm, key = files[path]
            assert key in find(objs, "ConfigMap", cm)["data"], (cm, key)
