"""The node precheck of `meshnode check`: can meshnode capture pods on this node, with the
backend the agent is configured for, and is anything in the way?

Read-only by construction: it reads files (/proc, /sys, the CNI config dir, bpffs pins) and
runs only commands that list (`iptables --version`, `iptables-*-save`, `bpftool ... show`);
`iptables-legacy-save` only when the legacy tables already exist (/proc/net/ip_tables_names),
so no kernel module is loaded by asking. Nothing is created, written, loaded or mounted.

Each check is a `Check`: pass, warn (works, but look), fail (the agent cannot capture, or
captures wrongly) or info, with what to do. Files are read under `Host.root`, so a test (or
an operator with a copy of a node's files) points it at another tree; commands then run
only for the real root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PASS, WARN, FAIL, INFO = "pass", "warn", "fail", "info"

# Kernel versions the backends need (docs/install.md, "Requirements on the nodes").
NFT_INET_NAT = (5, 2)   # nat chains in the `inet` family (the nftables backend's table)
EBPF_MIN = (5, 9)       # BPF_PROG_TYPE_SK_LOOKUP (inbound) and cgroup sock_addr links
KERNEL_MIN = (4, 18)    # anything older is out of support for every backend

# Cilium's socket-level load balancer translates service VIPs at connect() in the socket's
# own netns, before any netfilter rule of the pod sees the packet: its reverse-NAT maps
# exist only when it is on.
CILIUM_GLOBALS = "tc/globals"
CILIUM_SOCK_LB_MAPS = ("cilium_lb4_reverse_sk", "cilium_lb6_reverse_sk")
CILIUM_CONFIG_DIR = "/tmp/cilium/config-map"  # the ConfigMap as mounted in cilium's pod

Runner = Callable[[list[str]], "tuple[int, str] | None"]


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


def run_command(cmd: list[str]) -> tuple[int, str] | None:
    """(exit code, stdout) of a listing command; None if it is not installed."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.returncode, p.stdout + (p.stderr if p.returncode else "")


@dataclass
class Host:
    root: Path = Path("/")
    cni_net_dir: str = "/etc/cni/net.d"
    bpffs: str = "/sys/fs/bpf"
    cilium_config: str = ""  # a dir of key files, or a ConfigMap as YAML/JSON
    run: Runner | None = run_command  # None: no commands (a copy of a node's files)

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def read(self, p: str) -> str | None:
        try:
            return self.path(p).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def command(self, cmd: list[str]) -> tuple[int, str] | None:
        if self.run is None or self.root != Path("/"):
            return None
        return self.run(cmd)

    def release(self) -> str:
        got = self.read("/proc/sys/kernel/osrelease")
        if got is not None:
            return got.strip()
        return os.uname().release if self.root == Path("/") else ""

    def mounts(self) -> list[tuple[str, str]]:
        """(mount point, filesystem type) of every mount, from mountinfo."""
        text = self.read("/proc/self/mountinfo") or ""
        out = []
        for line in text.splitlines():
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and right:
                out.append((fields[4].replace("\\040", " "), right.split()[0]))
        return out


def kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _v(t: tuple[int, int]) -> str:
    return f"{t[0]}.{t[1]}"


# -- the checks ----------------------------------------------------------------------------------

def check_kernel(h: Host) -> Check:
    rel = h.release()
    v = kernel_version(rel)
    facts = {"release": rel, "iptables": v >= KERNEL_MIN, "nftables": v >= NFT_INET_NAT,
             "ebpf": v >= EBPF_MIN}
    if v == (0, 0):
        return Check("kernel", WARN, f"cannot read the kernel version ({rel!r})", facts=facts)
    if v < KERNEL_MIN:
        return Check("kernel", FAIL, f"{rel}: older than {_v(KERNEL_MIN)}",
                     f"run nodes with a kernel >= {_v(KERNEL_MIN)}", facts)
    can = ["iptables"] + (["nftables"] if v >= NFT_INET_NAT else []) + \
        (["ebpf"] if v >= EBPF_MIN else [])
    return Check("kernel", PASS, f"{rel}: backends {', '.join(can)} supported", facts=facts)


def _rules(out: tuple[int, str] | None) -> int | None:
    if out is None or out[0] != 0:
        return None
    return sum(1 for line in out[1].splitlines() if line.startswith("-A "))


def check_iptables(h: Host, flavour: str = "auto") -> Check:
    """Which flavour the host's `iptables` is, which one holds rules, and which the agent
    (`iptables_flavour: auto`) picks: legacy only if the legacy tables hold rules."""
    version = h.command(["iptables", "--version"])
    default = ""
    if version is not None and version[0] == 0:
        default = "nft" if "nf_tables" in version[1] else \
            ("legacy" if "legacy" in version[1] else "")
    legacy_tables = ((h.read("/proc/net/ip_tables_names") or "").split() +
                     (h.read("/proc/net/ip6_tables_names") or "").split())
    legacy_rules = 0
    if legacy_tables:  # only then: listing loads nothing that is not loaded already
        legacy_rules = sum(_rules(h.command([t])) or 0
                           for t in ("iptables-legacy-save", "ip6tables-legacy-save"))
    # Listing nf_tables with the module absent would make the kernel load it: only if loaded.
    nft_rules = _rules(h.command(["iptables-nft-save"])) if nf_tables_present(h) else None
    tools = {f: h.root == Path("/") and shutil.which(f"iptables-{f}-restore") is not None
             for f in ("nft", "legacy")}
    picks = "legacy" if legacy_rules else "nft"
    if flavour in ("nft", "legacy"):
        picks = flavour
    facts = {"default": default, "legacy_tables": legacy_tables, "legacy_rules": legacy_rules,
             "nft_rules": nft_rules, "tools": tools, "auto_picks": picks}
    if h.root != Path("/") or h.run is None:
        return Check("iptables", INFO, "not inspected (commands run only on the real host)",
                     facts=facts)
    if not any(tools.values()):
        return Check("iptables", WARN, "no iptables-nft-restore or iptables-legacy-restore",
                     "install iptables (needed by the iptables backend)", facts)
    detail = (f"`iptables` is {default or 'unknown'}; legacy tables: "
              f"{', '.join(legacy_tables) or 'none'} ({legacy_rules} rules); nft (iptables-nft) "
              f"rules: {'?' if nft_rules is None else nft_rules}; the agent's iptables_flavour "
              f"{flavour} uses {picks}")
    if legacy_rules and nft_rules:
        return Check("iptables", WARN, detail + " (both flavours hold rules)",
                     "the node's tools write both flavours (kube-proxy and the CNI disagree?): "
                     "rules of one are invisible to the other's tools; set "
                     "capture.iptables_flavour to the one kube-proxy uses", facts)
    if not tools[picks]:
        return Check("iptables", FAIL, detail + f", but iptables-{picks}-restore is missing",
                     f"install the {picks} flavour of iptables", facts)
    return Check("iptables", PASS, detail, facts=facts)


def kernel_config(h: Host, option: str) -> str:
    """`y`, `m` or "" for a kernel config option (/proc/config.gz, /boot/config-REL)."""
    import gzip

    text = ""
    try:
        text = gzip.decompress(h.path("/proc/config.gz").read_bytes()).decode(errors="replace")
    except (OSError, EOFError):
        text = h.read(f"/boot/config-{h.release()}") or ""
    m = re.search(rf"^{option}=(\w+)$", text, re.M)
    return m.group(1) if m else ""


def nf_tables_present(h: Host) -> bool:
    """nf_tables is in the running kernel now: a loaded module, or built in."""
    return (h.path("/sys/module/nf_tables").exists()
            or any(line.startswith("nf_tables ")
                   for line in (h.read("/proc/modules") or "").splitlines())
            or kernel_config(h, "CONFIG_NF_TABLES") == "y")


def check_nftables(h: Host) -> Check:
    try:
        import nftables  # noqa: F401  (python3-nftables: the backend's libnftables)
        lib = True
    except ImportError:
        lib = False
    builtin = nf_tables_present(h)
    facts = {"libnftables": lib, "nf_tables_loaded": builtin,
             "nft": h.root == Path("/") and shutil.which("nft") is not None}
    if not lib:
        return Check("nftables", WARN, "python3-nftables (libnftables) is not importable",
                     "apt install python3-nftables (needed by the nftables backend only)",
                     facts)
    return Check("nftables", PASS, "libnftables available; nf_tables "
                 + ("in the kernel" if builtin else "not loaded yet (loaded on first use)"),
                 facts=facts)


def check_cgroup2(h: Host) -> Check:
    roots = [p for p, fs in h.mounts() if fs == "cgroup2"]
    facts = {"mounts": roots}
    if not roots:
        return Check("cgroup v2", WARN, "no cgroup2 mount",
                     "the eBPF backend attaches to the cgroup v2 root: boot with "
                     "systemd.unified_cgroup_hierarchy=1 or mount cgroup2", facts)
    kind = "unified" if "/sys/fs/cgroup" in roots else "hybrid"
    return Check("cgroup v2", PASS, f"{', '.join(roots)} ({kind})", facts=facts)


def check_bpffs(h: Host) -> Check:
    mounted = [p for p, fs in h.mounts() if fs == "bpf"]
    facts = {"mounts": mounted, "expected": h.bpffs}
    if h.bpffs not in mounted:
        return Check("bpffs", WARN, f"no bpffs at {h.bpffs}"
                     + (f" (bpffs at {', '.join(mounted)})" if mounted else ""),
                     f"the eBPF backend pins there: mount -t bpf bpf {h.bpffs} "
                     "(systemd does it at boot)", facts)
    return Check("bpffs", PASS, f"mounted at {h.bpffs}", facts=facts)


def check_btf(h: Host) -> Check:
    rel = h.release()
    btf = h.path("/sys/kernel/btf/vmlinux").exists()
    headers = h.path(f"/lib/modules/{rel}/build").exists()
    try:
        import bcc  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
        has_bcc = True
    except Exception:  # bcc's import fails in odd ways without its libraries
        has_bcc = False
    facts = {"btf": btf, "headers": headers, "bcc": has_bcc}
    detail = (f"BTF {'present' if btf else 'absent'} (/sys/kernel/btf/vmlinux); kernel "
              f"headers {'present' if headers else 'absent'} (/lib/modules/{rel}/build); "
              f"bcc {'importable' if has_bcc else 'missing'}")
    if not headers or not has_bcc:
        return Check("btf / headers", WARN, detail,
                     "the eBPF backend compiles with bcc against the kernel headers: install "
                     "them (linux-headers-$(uname -r)) and python3-bpfcc", facts)
    return Check("btf / headers", PASS, detail, facts=facts)


def _conflists(h: Host) -> tuple[Any, list[dict[str, Any]]]:
    """(the primary config as the runtime picks it, every config file's plugin types)."""
    from agent.install.conflist import choose_primary, is_config_name, load_json, plugins_of

    d = h.path(h.cni_net_dir)
    files: list[tuple[str, bytes | None]] = []
    seen = []
    for f in sorted(d.iterdir()) if d.is_dir() else []:
        if not f.is_file() or not is_config_name(f.name):
            continue
        try:
            data: bytes | None = f.read_bytes()
        except OSError:
            data = None
        files.append((f.name, data))
        try:
            doc = load_json(data or b"")
            types = [p.get("type") for p in plugins_of(doc) if isinstance(p, dict)] or \
                [doc.get("type")]
        except Exception:
            types = []
        seen.append({"file": f.name, "types": types})
    return choose_primary(files), seen


def check_cni(h: Host) -> Check:
    d = h.path(h.cni_net_dir)
    if not d.is_dir():
        return Check("primary CNI", FAIL, f"{h.cni_net_dir} does not exist",
                     "install the cluster's CNI first (Calico, Cilium, flannel...): meshnode "
                     "chains after it; --cni-net-dir if the runtime reads another dir")
    sel, seen = _conflists(h)
    facts = {"files": seen, "skipped": sel.skipped,
             "primary": sel.primary.filename if sel.primary else None}
    if sel.primary is None:
        return Check("primary CNI", FAIL, f"no valid CNI config in {h.cni_net_dir}"
                     + (f" (skipped: {sel.skipped})" if sel.skipped else ""),
                     "the primary CNI writes its config there once it runs: wait for it, "
                     "or fix the file the runtime skips", facts)
    types = next(s["types"] for s in seen if s["file"] == sel.primary.filename)
    ours = "meshnode-cni" in types
    facts["types"] = types
    facts["chained"] = ours
    return Check("primary CNI", PASS, f"{sel.primary.filename}: {' -> '.join(map(str, types))}"
                 + ("" if ours else " (meshnode not chained yet: the agent adds itself)"),
                 facts=facts)


def _cilium_config(h: Host) -> dict[str, str]:
    """Cilium's ConfigMap data, if given (--cilium-config) or mounted where cilium's own pod
    has it; {} if unknown."""
    import yaml

    path = h.cilium_config or CILIUM_CONFIG_DIR
    p = Path(path) if h.cilium_config else h.path(path)
    if p.is_dir():
        out = {}
        for f in p.iterdir():
            if f.is_file() and not f.name.startswith("."):
                try:
                    out[f.name] = f.read_text().strip()
                except (OSError, UnicodeDecodeError):
                    continue
        return out
    if p.is_file():
        try:
            doc = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError):
            return {}
        data = doc.get("data", doc) if isinstance(doc, dict) else {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    return {}


def _cgroup_programs(h: Host) -> list[str]:
    """Names of the BPF programs attached to the cgroup v2 root (bpftool, read-only)."""
    roots = [p for p, fs in h.mounts() if fs == "cgroup2"]
    if not roots:
        return []
    out = h.command(["bpftool", "-j", "cgroup", "show", roots[0]])
    if out is None or out[0] != 0:
        return []
    try:
        return [str(p.get("name", "")) for p in json.loads(out[1] or "[]")]
    except (ValueError, AttributeError):
        return []


def check_conflicts(h: Host) -> Check:
    """Other data planes on the node: Cilium (its socket LB above all), istio-cni."""
    _, seen = _conflists(h) if h.path(h.cni_net_dir).is_dir() else (None, [])
    types = {str(t) for s in seen for t in s["types"]}
    globals_dir = h.path(f"{h.bpffs}/{CILIUM_GLOBALS}")
    pins = sorted(os.listdir(globals_dir)) if globals_dir.is_dir() else []
    cilium_pins = [p for p in pins if p.startswith("cilium_")]
    sock_maps = [m for m in CILIUM_SOCK_LB_MAPS if m in pins]
    sock_progs = [p for p in _cgroup_programs(h) if p.startswith("cil_sock")]
    cfg = _cilium_config(h)
    facts: dict[str, Any] = {"cni_types": sorted(types), "cilium_pins": len(cilium_pins),
                             "cilium_socket_lb_maps": sock_maps,
                             "cilium_cgroup_programs": sock_progs,
                             "cilium_config": {k: cfg[k] for k in (
                                 "kube-proxy-replacement", "bpf-lb-sock",
                                 "bpf-lb-sock-hostns-only") if k in cfg}}
    problems, notes = [], []
    cilium = "cilium-cni" in types or bool(cilium_pins) or bool(cfg)
    if cilium:
        hostns_only = cfg.get("bpf-lb-sock-hostns-only", "").lower() == "true"
        kpr = cfg.get("kube-proxy-replacement", "").lower() in ("true", "strict")
        sock_on = cfg.get("bpf-lb-sock", "").lower() == "true" or \
            (kpr and cfg.get("bpf-lb-sock", "").lower() != "false")
        if (sock_maps or sock_progs or sock_on) and not hostns_only:
            evidence = ", ".join(sock_maps + sock_progs) or \
                f"cilium-config: {facts['cilium_config']}"
            problems.append(f"Cilium's socket-level load balancing is on ({evidence}): it "
                            "rewrites service VIPs at connect() inside pods, so the pods' "
                            "redirection sees pod IPs, never the service")
        elif hostns_only:
            notes.append("Cilium socket LB limited to the host netns (bpf-lb-sock-hostns-only)")
        else:
            notes.append("Cilium present, no socket LB seen")
    if "istio-cni" in types:
        problems.append("istio-cni is chained too: two in-pod redirections would fight over "
                        "the pods' netfilter rules")
    if problems:
        return Check("conflicts", FAIL, "; ".join(problems),
                     "Cilium: set socketLB.hostNamespaceOnly=true (Helm; "
                     "bpf-lb-sock-hostns-only: true in cilium-config) and restart cilium, as "
                     "Istio ambient requires; istio-cni: remove it from nodes meshnode runs on",
                     facts)
    return Check("conflicts", PASS, "; ".join(notes) or "no other in-pod data plane found",
                 facts=facts)


def check_backend(h: Host, backend: str, fallback: str, kernel: Check, cgroup: Check,
                  bpffs: Check, btf: Check, iptables: Check, nftables: Check) -> Check:
    """Whether the configured capture backend can run here, from the checks above."""
    facts = {"backend": backend, "fallback": fallback}
    missing: list[str] = []
    if backend == "ebpf":
        if not kernel.facts.get("ebpf"):
            missing.append(f"kernel >= {_v(EBPF_MIN)}")
        for c in (cgroup, bpffs, btf):
            if c.status != PASS:
                missing.append(f"{c.name} ({c.detail})")
    elif backend == "nftables":
        if not kernel.facts.get("nftables"):
            missing.append(f"kernel >= {_v(NFT_INET_NAT)}")
        if nftables.status != PASS:
            missing.append(nftables.detail)
    elif iptables.status == FAIL or (iptables.status == WARN and
                                     not any(iptables.facts.get("tools", {}).values())):
        missing.append(iptables.detail)
    if not missing:
        return Check("capture backend", PASS, f"{backend}: requirements met", facts=facts)
    if backend == "ebpf" and fallback:
        return Check("capture backend", WARN, f"ebpf cannot load here ({'; '.join(missing)}); "
                     f"the agent will capture with the fallback, {fallback}",
                     "meet the eBPF requirements, or set capture.backend to the fallback",
                     facts)
    return Check("capture backend", FAIL, f"{backend}: missing {'; '.join(missing)}",
                 f"fix the above, or pick another capture.backend (iptables needs the "
                 f"least){'; or set capture.fallback: iptables' if backend == 'ebpf' else ''}",
                 facts)


def run_all(h: Host, backend: str = "iptables", fallback: str = "",
            flavour: str = "auto") -> list[Check]:
    kernel, ipt, nft = check_kernel(h), check_iptables(h, flavour), check_nftables(h)
    cg, bfs, btf = check_cgroup2(h), check_bpffs(h), check_btf(h)
    checks = [kernel, ipt, nft, cg, bfs, btf, check_cni(h), check_conflicts(h)]
    checks.append(check_backend(h, backend, fallback, kernel, cg, bfs, btf, ipt, nft))
    # What the backend does not need is information, not a warning.
    needs = {"iptables": {"iptables"}, "nftables": {"nftables"},
             "ebpf": {"cgroup v2", "bpffs", "btf / headers"}}[backend]
    for c in checks:
        if c.status == WARN and c.name in {"iptables", "nftables", "cgroup v2", "bpffs",
                                           "btf / headers"} - needs:
            c.status = INFO
    return checks


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]
