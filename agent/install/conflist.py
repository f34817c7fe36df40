"""Pure CNI config logic: which file is primary, chain our entry in, take it out.

No I/O here: callers pass file names and bytes. The rules follow what kubelet/containerd
do through libcni:

- candidates are the files whose extension is `.conf`, `.conflist` or `.json`, sorted
  by name (byte order); the first *valid* one is the network the runtime uses;
- a `.conflist` is valid when it is a JSON object with a string `name` and a non-empty
  `plugins` list whose items are objects with a non-empty string `type`;
- a `.conf`/`.json` is one network: a JSON object with a non-empty string `type` (which
  also rejects a list put in a `.conf`).

Chaining removes every entry of our type (stale or duplicate) and appends ours last. A
single-network file is wrapped into a list and moves to `<stem>.conflist` (`x.conf` becomes
`x.conflist`, as istio-cni does). The plugin entries never carry `cniVersion`: the list does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CONFIG_EXTENSIONS = (".conf", ".conflist", ".json")
LIST_EXTENSION = ".conflist"
DEFAULT_WRAP_CNI_VERSION = "0.3.1"  # only when the `.conf` itself names none
DEFAULT_WRAP_NAME = "k8s-pod-network"  # only when the `.conf` itself names none


class ConfigError(ValueError):
    """A CNI config file that the runtime would reject."""


@dataclass(frozen=True)
class NetConfig:
    """One parsed, valid CNI config file."""

    filename: str
    doc: dict[str, Any]

    @property
    def is_list(self) -> bool:
        return extension(self.filename) == LIST_EXTENSION


@dataclass(frozen=True)
class Selection:
    """The primary config (None if no valid one) and why the files before it were skipped."""

    primary: NetConfig | None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def extension(filename: str) -> str:
    """Like Go's filepath.Ext: from the last dot on ("" if none)."""
    dot = filename.rfind(".")
    return "" if dot < 0 else filename[dot:]


def is_config_name(filename: str) -> bool:
    return extension(filename) in CONFIG_EXTENSIONS


def list_filename(filename: str) -> str:
    """Where a config lives once it is a list: `x.conf`/`x.json` -> `x.conflist`."""
    ext = extension(filename)
    if ext == LIST_EXTENSION:
        return filename
    return filename[: len(filename) - len(ext)] + LIST_EXTENSION


def _reject_constant(name: str) -> Any:
    raise ConfigError(f"invalid JSON constant {name}")  # Go's encoding/json has no NaN


def load_json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"invalid JSON: {exc}") from exc


def _check_plugin(plugin: Any, where: str) -> None:
    if not isinstance(plugin, dict):
        raise ConfigError(f"{where}: not a JSON object")
    ptype = plugin.get("type")
    if not isinstance(ptype, str) or not ptype:
        raise ConfigError(f"{where}: missing 'type'")


def parse_config(filename: str, data: bytes) -> NetConfig:
    """Parse and validate one file as the runtime would; raise ConfigError if it is skipped."""
    if not is_config_name(filename):
        raise ConfigError(f"not a CNI config extension: {extension(filename)!r}")
    doc = load_json(data)
    if not isinstance(doc, dict):
        raise ConfigError("not a JSON object")
    if extension(filename) == LIST_EXTENSION:
        if not isinstance(doc.get("name"), str):
            raise ConfigError("conflist: missing or non-string 'name'")
        if "cniVersion" in doc and not isinstance(doc["cniVersion"], str):
            raise ConfigError("conflist: non-string 'cniVersion'")
        plugins = doc.get("plugins")
        if not isinstance(plugins, list):
            raise ConfigError("conflist: missing 'plugins' list")
        if not plugins:
            raise ConfigError("conflist: no plugins in list")
        for i, plugin in enumerate(plugins):
            _check_plugin(plugin, f"plugin {i}")
    else:
        _check_plugin(doc, "conf")
    return NetConfig(filename=filename, doc=doc)


def choose_primary(files: Iterable[tuple[str, bytes | None]]) -> Selection:
    """The first valid config by file name. `None` bytes stand for an unreadable file."""
    skipped: list[tuple[str, str]] = []
    for filename, data in sorted(files, key=lambda f: f[0].encode("utf-8", "surrogateescape")):
        if not is_config_name(filename):
            continue
        if data is None:
            skipped.append((filename, "unreadable"))
            continue
        try:
            return Selection(primary=parse_config(filename, data), skipped=skipped)
        except ConfigError as exc:
            skipped.append((filename, str(exc)))
    return Selection(primary=None, skipped=skipped)


def plugins_of(doc: Mapping[str, Any]) -> list[Any]:
    plugins = doc.get("plugins")
    return list(plugins) if isinstance(plugins, list) else []


def is_ours(plugin: Any, plugin_type: str) -> bool:
    return isinstance(plugin, dict) and plugin.get("type") == plugin_type


def find_ours(doc: Mapping[str, Any], plugin_type: str) -> list[dict[str, Any]]:
    return [p for p in plugins_of(doc) if is_ours(p, plugin_type)]


def clean_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(entry))
    out.pop("cniVersion", None)
    return out


def entry_problem(cfg: NetConfig, entry: Mapping[str, Any]) -> str | None:
    """Why `cfg` does not (exactly once, as configured) chain our entry; None if it does."""
    if not cfg.is_list:
        return "primary_not_list"
    plugin_type = entry["type"]
    ours = find_ours(cfg.doc, plugin_type)
    if not ours:
        return "entry_missing"
    if len(ours) > 1:
        return "entry_duplicate"
    if ours[0] != clean_entry(entry):
        return "entry_changed"
    return None


def wrap(doc: Mapping[str, Any], *, name: str | None = None,
         cni_version: str | None = None) -> dict[str, Any]:
    """A single-network config as a one-plugin list (`None`: keep the network's own)."""
    inner = copy.deepcopy(dict(doc))
    own_version = inner.pop("cniVersion", None)
    own_name = inner.get("name")
    list_version = cni_version or (own_version if isinstance(own_version, str) and own_version
                                   else DEFAULT_WRAP_CNI_VERSION)
    list_name = name or (own_name if isinstance(own_name, str) and own_name
                         else DEFAULT_WRAP_NAME)
    return {"cniVersion": list_version, "name": list_name, "plugins": [inner]}


def remove_ours(doc: Mapping[str, Any], plugin_type: str) -> tuple[dict[str, Any], int]:
    """A copy of list `doc` without entries of `plugin_type`, and how many were removed."""
    out = copy.deepcopy(dict(doc))
    plugins = plugins_of(out)
    kept = [p for p in plugins if not is_ours(p, plugin_type)]
    removed = len(plugins) - len(kept)
    if removed:
        out["plugins"] = kept
    return out, removed


def chain(cfg: NetConfig, entry: Mapping[str, Any], *, wrap_name: str | None = None,
          wrap_cni_version: str | None = None) -> tuple[str, dict[str, Any]]:
    """(file name, document) of `cfg` with our entry appended last, stale/duplicate ones gone.

    The other plugins and keys are kept as they are (and in their order).
    """
    new_entry = clean_entry(entry)
    if cfg.is_list:
        base = copy.deepcopy(cfg.doc)
    else:
        base = wrap(cfg.doc, name=wrap_name, cni_version=wrap_cni_version)
    doc, _ = remove_ours(base, new_entry["type"])
    doc["plugins"] = [*plugins_of(doc), new_entry]
    return list_filename(cfg.filename), doc


def render(doc: Mapping[str, Any]) -> bytes:
    """Serialise a config the way it is written to disk (2-space indent, trailing newline)."""
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
