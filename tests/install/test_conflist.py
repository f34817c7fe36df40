"""Pure conflist logic, including istio-cni's install vectors (cni/pkg/install/testdata)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from agent.install import PluginEntry, conflist
from agent.install.conflist import ConfigError, NetConfig, choose_primary, parse_config
from tests.install import CALICO, OUR_TYPE, VECTORS

ISTIO_TYPE = "istio-cni"
# input file -> golden (after istio-cni chained itself in)
GOLDEN = {
    "bridge.conf": "bridge.conf.golden",
    "list.conflist": "list.conflist.golden",
    "list-with-istio.conflist": "list-with-istio.conflist.golden",
}


def vector(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def ours_for_istio(doc: Any, entry: dict[str, Any]) -> Any:
    """`doc` with every istio-cni plugin entry replaced by `entry`."""
    out = copy.deepcopy(doc)
    if "plugins" in out:
        out["plugins"] = [copy.deepcopy(entry) if p.get("type") == ISTIO_TYPE else p
                          for p in out["plugins"]]
    return out


def template_entry() -> dict[str, Any]:
    """istio-cni.conf.template with our type: an entry with a cniVersion and odd keys."""
    entry = vector("istio-cni.conf.template")
    entry["type"] = entry["name"] = OUR_TYPE
    return dict(entry)


def stale_entry() -> dict[str, Any]:
    return {"type": OUR_TYPE, "name": OUR_TYPE, "agent_socket": "/old/agent.sock",
            "kubernetes": {"kubeconfig": "/path/to/kubeconfig"}}


ENTRIES = {
    "plugin-entry": PluginEntry().to_dict(),
    "template-entry": template_entry(),
}


def test_vectors_present() -> None:
    names = {p.name for p in VECTORS.iterdir()}
    assert set(GOLDEN) | set(GOLDEN.values()) | {"istio-cni.conf.template"} <= names


@pytest.mark.parametrize("entry_name", sorted(ENTRIES))
@pytest.mark.parametrize("source", sorted(GOLDEN))
def test_istio_vector_chain(source: str, entry_name: str) -> None:
    entry = ENTRIES[entry_name]
    expected_entry = {k: v for k, v in entry.items() if k != "cniVersion"}
    # A vector's old istio-cni entry stands for a stale entry of ours.
    src = ours_for_istio(vector(source), stale_entry())
    cfg = parse_config(source, json.dumps(src).encode())
    # istio-cni's naming of a wrapped .conf, to match its golden exactly.
    target, doc = conflist.chain(cfg, entry, wrap_name="k8s-pod-network",
                                 wrap_cni_version="0.3.1")
    expected = ours_for_istio(vector(GOLDEN[source]), expected_entry)
    assert doc == expected
    assert target == conflist.list_filename(source)
    assert target.endswith(".conflist")
    assert json.loads(conflist.render(doc)) == expected
    # The result is itself a valid list with our entry once, as configured.
    assert conflist.entry_problem(parse_config(target, conflist.render(doc)), entry) is None


def test_wrap_keeps_network_name_and_version_by_default() -> None:
    """Deliberate deviation from istio's bridge.conf.golden: name and cniVersion kept.

    host-local IPAM (/var/lib/cni/networks/<name>) and the runtime's result cache are keyed
    by network name; istio-cni forcing cniVersion 0.3.1 broke terway (istio#32137). libcni's
    own .conf -> list up-conversion keeps both, so that is the default here.
    """
    entry = PluginEntry().to_dict()
    cfg = parse_config("bridge.conf", (VECTORS / "bridge.conf").read_bytes())
    _, doc = conflist.chain(cfg, entry)
    expected = ours_for_istio(vector("bridge.conf.golden"), entry)
    expected["name"] = "dbnet"
    expected["cniVersion"] = "0.4.0"
    assert doc == expected


def test_uninstall_vector() -> None:
    """list-with-istio minus our entry is list-no-istio."""
    src = ours_for_istio(vector("list-with-istio.conflist"), PluginEntry().to_dict())
    doc, removed = conflist.remove_ours(src, OUR_TYPE)
    assert removed == 1
    assert doc == vector("list-no-istio.conflist")


@pytest.mark.parametrize("name", ["invalid-arr.conflist", "invalid-map.conflist"])
def test_invalid_vectors_rejected(name: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(name, (VECTORS / name).read_bytes())


def test_invalid_vectors_skipped_for_primary() -> None:
    files = [(n, (VECTORS / n).read_bytes())
             for n in ("invalid-arr.conflist", "invalid-map.conflist", "list.conflist")]
    sel = choose_primary(files)
    assert sel.primary is not None and sel.primary.filename == "list.conflist"
    assert [s[0] for s in sel.skipped] == ["invalid-arr.conflist", "invalid-map.conflist"]


@pytest.mark.parametrize(("name", "data"), [
    ("00-broken.conflist", b"{not json"),
    ("00-empty.conflist", b""),
    ("00-noplugins.conflist", b'{"name": "x", "cniVersion": "0.3.1"}'),
    ("00-emptyplugins.conflist", b'{"name": "x", "plugins": []}'),
    ("00-notype.conflist", b'{"name": "x", "plugins": [{"foo": 1}]}'),
    ("00-noname.conflist", b'{"plugins": [{"type": "bridge"}]}'),
    ("00-list-in-conf.conf", b'{"name": "x", "plugins": [{"type": "bridge"}]}'),
    ("00-notype.conf", b'{"name": "x"}'),
    ("00-array.json", b"[]"),
    ("00-nan.conf", b'{"type": "bridge", "mtu": NaN}'),
    ("00-unreadable.conflist", None),
])
def test_invalid_files_are_skipped(name: str, data: bytes | None) -> None:
    good = ("50-good.conflist", json.dumps(CALICO).encode())
    sel = choose_primary([good, (name, data)])
    assert sel.primary is not None
    assert sel.primary.filename == "50-good.conflist"
    assert sel.skipped[0][0] == name


def test_primary_is_lexicographically_first_valid() -> None:
    conf = json.dumps({"cniVersion": "0.4.0", "name": "n", "type": "bridge"}).encode()
    lst = json.dumps(CALICO).encode()
    files = [("20-b.conflist", lst), ("10-a.json", conf), ("README.md", b"x"),
             ("05-x.conf.bak", conf), ("30-a.conf", conf)]
    sel = choose_primary(files)
    assert sel.primary is not None and sel.primary.filename == "10-a.json"
    # byte order, as Go's sort.Strings: upper case sorts before lower case
    sel = choose_primary([("a.conflist", lst), ("B.conflist", lst)])
    assert sel.primary is not None and sel.primary.filename == "B.conflist"
    assert choose_primary([("x.txt", lst)]).primary is None


def test_conf_sorts_before_its_conflist() -> None:
    conf = json.dumps({"cniVersion": "0.4.0", "name": "n", "type": "bridge"}).encode()
    sel = choose_primary([("10-x.conflist", json.dumps(CALICO).encode()), ("10-x.conf", conf)])
    assert sel.primary is not None and sel.primary.filename == "10-x.conf"


def test_list_filename() -> None:
    assert conflist.list_filename("10-bridge.conf") == "10-bridge.conflist"
    assert conflist.list_filename("10-bridge.json") == "10-bridge.conflist"
    assert conflist.list_filename("10-bridge.conflist") == "10-bridge.conflist"


def test_duplicates_and_stale_entries_replaced_by_one_last() -> None:
    entry = PluginEntry(agent_socket="/run/new.sock").to_dict()
    doc = copy.deepcopy(CALICO)
    doc["plugins"] = [stale_entry(), doc["plugins"][0], stale_entry(), doc["plugins"][1],
                      {**entry, "cniVersion": "0.3.1"}]
    cfg = NetConfig("10-calico.conflist", doc)
    assert conflist.entry_problem(cfg, entry) == "entry_duplicate"
    _, new = conflist.chain(cfg, entry)
    assert new["plugins"] == [*CALICO["plugins"], entry]
    assert new["name"] == CALICO["name"] and new["cniVersion"] == CALICO["cniVersion"]


def test_entry_problem_kinds() -> None:
    entry = PluginEntry().to_dict()
    base = copy.deepcopy(CALICO)
    assert conflist.entry_problem(NetConfig("a.conflist", base), entry) == "entry_missing"
    changed = {**copy.deepcopy(CALICO), "plugins": [*CALICO["plugins"], stale_entry()]}
    assert conflist.entry_problem(NetConfig("a.conflist", changed), entry) == "entry_changed"
    good = {**copy.deepcopy(CALICO), "plugins": [*CALICO["plugins"], entry]}
    assert conflist.entry_problem(NetConfig("a.conflist", good), entry) is None
    conf = NetConfig("a.conf", {"type": "bridge", "name": "n"})
    assert conflist.entry_problem(conf, entry) == "primary_not_list"


def test_chain_does_not_modify_input_and_keeps_key_order() -> None:
    doc = {"name": "n", "disableCheck": True, "cniVersion": "1.0.0",
           "plugins": [{"type": "ptp", "ipMasq": True}]}
    snapshot = copy.deepcopy(doc)
    _, new = conflist.chain(NetConfig("x.conflist", doc), PluginEntry().to_dict())
    assert doc == snapshot
    assert list(new) == ["name", "disableCheck", "cniVersion", "plugins"]
    assert new["plugins"][-1]["type"] == OUR_TYPE


def test_plugin_entry_keys() -> None:
    e = PluginEntry(agent_socket="/s", exclude_namespaces=("a", "b"),
                    capture={"dns_capture": False}, extra={"x": 1, "cniVersion": "9"}).to_dict()
    assert e == {"name": OUR_TYPE, "type": OUR_TYPE, "agent_socket": "/s",
                 "timeout_seconds": 10, "exclude_namespaces": ["a", "b"],
                 "agent_pod": {"namespace": "meshnode-system", "name_prefix": "meshnode-node-"},
                 "capture": {"dns_capture": False}, "log_file": "", "x": 1}
