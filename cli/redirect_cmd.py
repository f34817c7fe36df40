"""`meshnode redirect render|apply|show|diff|remove`: the redirect engine for operators.

`show` and `diff` take a pod by name too (`--pod NS/NAME`): its netns, backend and capture
options are then the ones the agent recorded when it enrolled the pod (the agent's
/debug/pods/{ns}/{name}, completed with the agent config's `capture:` section), so the
comparison is against what the agent applied, not against flags typed again."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from agent.redirect import backend as engine
from agent.redirect import iptables_rules, nftables_rules
from agent.redirect.spec import (
    Backend,
    CaptureOptions,
    IptablesFlavour,
    Profile,
    RedirectSpec,
)
from cli.errors import UserError
from cli.nodeapi import add_node_flags
from cli.output import add_output_flag, emit, table_text


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ports(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of ports: {value!r}") from None


def _add_capture_flags(g: argparse._ArgumentGroup) -> None:
    """One flag per capture option, from its definition (agent/redirect/spec.py)."""
    hints = typing.get_type_hints(CaptureOptions)
    for f in dataclasses.fields(CaptureOptions):
        flag, help_, metavar = f.metadata["flag"], f.metadata["help"], f.metadata["metavar"]
        if typing.get_origin(hints[f.name]) is list:
            (item,) = typing.get_args(hints[f.name])
            g.add_argument(flag, dest=f.name, type=_ports if item is int else _csv,
                           default=[], metavar=metavar, help=help_)
        elif f.default is True:  # on unless switched off: --no-dns, --ingress
            g.add_argument(flag, dest=f.name, action="store_false", help=help_)
        else:  # off unless switched on: --ipv6 (no `auto` here: one netns, no pod IPs)
            g.add_argument(flag, dest=f.name, action="store_true", help=help_)


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("redirect options")
    g.add_argument("--backend", choices=[b.value for b in Backend], default="iptables")
    g.add_argument("--iptables-flavour", choices=[f.value for f in IptablesFlavour],
                   default="auto", help="iptables flavour; auto picks legacy only if the "
                                        "host's legacy tables hold rules")
    g.add_argument("--profile", choices=[p.value for p in Profile], default="meshnode",
                   help="chain/table names: our own, or istio-cni's")
    _add_capture_flags(g)
    g.add_argument("--probe-source-v6", default=None, metavar="ADDR",
                   help="kubelet probe SNAT source for IPv6")
    g.add_argument("--kubelet-uid", type=int, default=0,
                   help="kubelet's uid, for the nftables host probe rule")


def spec_from_args(a: argparse.Namespace) -> RedirectSpec:
    extra: dict[str, Any] = {}
    if a.probe_source_v6:
        extra["probe_source_v6"] = a.probe_source_v6
    options = CaptureOptions(**{f.name: getattr(a, f.name)
                                for f in dataclasses.fields(CaptureOptions)})
    return options.spec(RedirectSpec(profile=Profile(a.profile), kubelet_uid=a.kubelet_uid,
                                     **extra))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    red = sub.add_parser("redirect", help="render, apply, inspect or remove pod redirection")
    rsub = red.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = rsub.add_parser("render", help="print the rules for a pod, touch nothing")
    add_spec_flags(p)
    p.add_argument("--host", action="store_true",
                   help="render the host-netns kubelet probe SNAT rule and its set instead")
    add_output_flag(p)
    p.set_defaults(handler=cmd_render)

    for action, fn, helptext in (
        ("apply", cmd_apply, "install the redirection in a netns (idempotent)"),
        ("show", cmd_show, "show our live rules with packet/byte counters"),
        ("diff", cmd_diff, "compare live rules with the spec; exit 1 when drifted"),
        ("remove", cmd_remove, "remove our rules, routes and chains (idempotent)"),
    ):
        p = rsub.add_parser(action, help=helptext)
        if action in ("show", "diff"):
            where = p.add_mutually_exclusive_group(required=True)
            where.add_argument("--netns", metavar="PATH",
                               help="network namespace path, e.g. /var/run/netns/NAME")
            where.add_argument("--pod", metavar="NS/NAME",
                               help="a pod the agent enrolled: its netns, backend and capture "
                                    "options as the agent recorded them (no redirect options "
                                    "then)")
            add_node_flags(p, proxy=False)
        else:
            p.add_argument("--netns", required=True, metavar="PATH",
                           help="network namespace path, e.g. /var/run/netns/NAME")
        add_spec_flags(p)
        add_output_flag(p)
        p.set_defaults(handler=fn)


def _routing(spec: RedirectSpec) -> list[dict[str, Any]]:
    from agent.redirect.routes import RouteState

    return [{"family": f"ipv{fam}", "rule": RouteState(fam, True, True).rule_text(spec),
             "route": RouteState(fam, True, True).route_text(spec)}
            for fam in spec.families]


def render_data(backend: Backend, spec: RedirectSpec, host: bool) -> tuple[dict[str, Any],
                                                                           str]:
    """(the rules as data, the same as the text a person reads: the exact restore/nft
    script, or the eBPF map entry)."""
    from agent.nodeagent.http import spec_json

    data: dict[str, Any] = {"backend": backend.value, "profile": spec.profile.value,
                            "host": host, "spec": spec_json(spec)}
    payloads: dict[str, str] = {}
    if backend is Backend.EBPF:
        from agent.redirect.ebpf.loader import PodOpts

        opts = PodOpts.from_spec(spec)
        data["pods_map_entry"] = {f.name: list(v) if isinstance(v, tuple) else v
                                  for f in dataclasses.fields(opts)
                                  for v in (getattr(opts, f.name),)}
        payloads["ebpf pods map entry"] = opts.describe() + "\n"
    elif backend is Backend.NFTABLES:
        script = (nftables_rules.render_host_probe(spec) if host
                  else nftables_rules.render_pod(spec))
        data["tables"] = [{
            "family": "inet", "table": t.name,
            "base_chains": [{"name": b.name, "type": b.type, "hook": b.hook,
                             "priority": b.priority} for b in t.base_chains],
            "chains": list(t.chains),
            "sets": [{"name": n, "type": typ} for n, typ in t.sets],
            "rules": [{"chain": c, "rule": r} for c, r in t.rules]} for t in script.tables]
        payloads["nft"] = script.text()
    else:
        data["tables"] = []
        for fam in spec.families:
            pl = (iptables_rules.render_host_probe(spec, fam) if host
                  else iptables_rules.render_pod(spec, fam))
            data["tables"] += [{
                "family": f"ipv{fam}", "table": t.name, "chains": list(t.chains),
                "rules": [{"chain": r.chain, "position": "first" if r.insert_first
                           else "append", "rule": r.args} for r in t.rules]}
                for t in pl.tables]
            payloads[f"ipv{fam}"] = pl.text()
        if host:
            data["ipsets"] = iptables_rules.render_probe_ipsets(spec).splitlines()
            payloads["ipset"] = iptables_rules.render_probe_ipsets(spec)
    if not host:
        # The fwmark rule and local route that bring marked replies back to the proxy
        # (agent/redirect/routes.py); every backend installs them in the pod's netns.
        data["routing"] = _routing(spec)
    return data, "".join(f"# {k}\n{v}" for k, v in payloads.items())


def cmd_render(a: argparse.Namespace) -> int:
    data, text = render_data(Backend(a.backend), spec_from_args(a), a.host)
    emit(data, a.output, table=text)
    return 0


# -- a pod by name: what the agent recorded --------------------------------------------------

@dataclasses.dataclass
class Target:
    netns: str
    spec: RedirectSpec
    impl: engine.RuleBackend
    pod: dict[str, Any] | None = None  # the agent's record, with --pod

    def about(self) -> dict[str, Any]:
        if self.pod is None:
            return {"netns": self.netns}
        return {"pod": f"{self.pod['namespace']}/{self.pod['name']}", "netns": self.netns,
                "container_id": self.pod["container_id"], "state": self.pod["state"],
                "capture": self.pod.get("capture", {}), "spec_from": self.pod["_spec_from"]}


def _explicit_spec_flags(a: argparse.Namespace) -> list[str]:
    """The redirect options given on the command line (not at their defaults)."""
    blank = argparse.ArgumentParser(add_help=False)
    add_spec_flags(blank)
    defaults = blank.parse_args([])
    flags = {act.dest: act.option_strings[0] for act in blank._actions}
    return [flags[k] for k, v in vars(defaults).items() if getattr(a, k, v) != v]


def _parse_pod(value: str) -> tuple[str, str]:
    ns, sep, name = value.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise UserError(f"--pod: {value!r} is not NAMESPACE/NAME")
    return ns, name


def backend_of(record: dict[str, Any]) -> tuple[str, str]:
    """The (backend, iptables flavour) the agent recorded ("iptables-nft", "nftables")."""
    name = str(record.get("backend") or "")
    kind, _, flavour = name.partition("-")
    if kind not in {b.value for b in Backend}:
        raise UserError(f"pod {record['namespace']}/{record['name']}: the agent recorded no "
                        f"known backend ({name!r}); use --netns with --backend")
    return kind, flavour or "auto"


def pod_record(a: argparse.Namespace) -> dict[str, Any]:
    """The agent's record of --pod: the newest one when the pod has several (a sandbox
    that was replaced)."""
    from urllib.parse import quote

    from cli import nodeapi

    ns, name = _parse_pod(a.pod)
    agent = nodeapi.agent_of(a)
    status, body = agent.get(f"/debug/pods/{quote(ns, safe='')}/{quote(name, safe='')}")
    if status == 404:
        import json

        try:
            known = json.loads(body).get("known", [])
        except (ValueError, AttributeError):
            raise UserError(f"the agent at {agent.address} has no /debug/pods/NS/NAME "
                            "(an older agent): use --netns") from None
        raise UserError(f"pod {ns}/{name} is not enrolled on this node (the agent at "
                        f"{agent.address} holds {len(known)} pod(s)"
                        + (f": {', '.join(known[:10])}" if known else "") + ")")
    records: list[dict[str, Any]] = agent.json(
        f"/debug/pods/{quote(ns, safe='')}/{quote(name, safe='')}")
    newest = max(records, key=lambda r: float(r.get("last_change", 0)))
    return dict(newest)


def target_of(a: argparse.Namespace) -> Target:
    if not getattr(a, "pod", None):
        return Target(a.netns, spec_from_args(a),
                      engine.make_backend(a.backend, a.iptables_flavour))
    given = _explicit_spec_flags(a)
    if given:
        raise UserError(f"--pod takes the backend and capture options the agent recorded: "
                        f"drop {', '.join(given)} (or use --netns PATH with them)")
    rec = pod_record(a)
    backend, flavour = backend_of(rec)
    if "spec" in rec:  # the agent said which spec it applies
        spec = _spec_from_json(rec["spec"])
        rec["_spec_from"] = "agent"
    else:
        from agent.redirect.spec import SpecError, with_overrides
        from cli.nodeapi import load_agent_config

        cfg = load_agent_config(a)
        try:
            spec = with_overrides(cfg.capture.spec(), rec.get("capture") or {})
        except (SpecError, TypeError) as exc:
            raise UserError(f"pod {a.pod}: its recorded capture options do not apply to "
                            f"this config's: {exc}") from None
        rec["_spec_from"] = "agent config + pod record"
    return Target(rec["netns"], spec, engine.make_backend(backend, flavour), rec)


def _spec_from_json(d: dict[str, Any]) -> RedirectSpec:
    names = {f.name for f in dataclasses.fields(RedirectSpec)}
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in d.items() if k in names}
    return RedirectSpec(**values)


def cmd_apply(a: argparse.Namespace) -> int:
    spec = spec_from_args(a)
    impl = engine.make_backend(a.backend, a.iptables_flavour)
    engine.apply(a.netns, spec, impl)
    emit({"netns": a.netns, "backend": impl.name, "result": "applied"}, a.output,
         table=f"applied {impl.name} redirection in {a.netns}\n")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    t = target_of(a)
    spec, impl = t.spec, t.impl
    state = engine.read(t.netns, spec, impl)
    rows = [{"family": k.family, "table": k.table, "chain": k.chain, "packets": r.packets,
             "bytes": r.bytes, "rule": r.text}
            for k, rules in state.rules.chains.items() for r in rules]
    routes = [{"family": f"ipv{rs.family}", "text": t, "present": ok}
              for rs in state.routes
              for t, ok in ((rs.rule_text(spec), rs.rule), (rs.route_text(spec), rs.route))]
    text = _header(t) + table_text(rows, ["family", "table", "chain", "packets", "bytes",
                                          "rule"])
    text += "\n" + table_text(routes, ["text", "present"], ["ROUTING", "PRESENT"])
    emit({**t.about(), "backend": impl.name, "rules": rows, "routing": routes},
         a.output, table=text)
    return 0


def _header(t: Target) -> str:
    if t.pod is None:
        return ""
    about = t.about()
    return (f"pod {about['pod']} ({about['state']}), netns {t.netns}, backend "
            f"{t.impl.name}, capture {about['capture'] or '{}'} ({about['spec_from']})\n\n")


def cmd_diff(a: argparse.Namespace) -> int:
    t = target_of(a)
    impl = t.impl
    drift = engine.diff(t.netns, t.spec, impl)
    lines = [f"- missing:    {m}" for m in drift.missing]
    lines += [f"+ unexpected: {u}" for u in drift.unexpected]
    text = "\n".join(lines) + "\n" if lines else f"in sync ({impl.name}, {t.netns})\n"
    emit({**t.about(), "backend": impl.name, "in_sync": drift.in_sync,
          "missing": drift.missing, "unexpected": drift.unexpected}, a.output,
         table=_header(t) + text)
    return 0 if drift.in_sync else 1


def cmd_remove(a: argparse.Namespace) -> int:
    spec = spec_from_args(a)
    impl = engine.make_backend(a.backend, a.iptables_flavour)
    removed = engine.remove(a.netns, spec, impl)
    text = "".join(f"removed {r}\n" for r in removed) or f"nothing of ours in {a.netns}\n"
    emit({"netns": a.netns, "backend": impl.name, "removed": removed}, a.output, table=text)
    return 0
