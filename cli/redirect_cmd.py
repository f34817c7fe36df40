"""`meshnode redirect render|apply|show|diff|remove`: the redirect engine for operators."""

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
        p.add_argument("--netns", required=True, metavar="PATH",
                       help="network namespace path, e.g. /var/run/netns/NAME")
        add_spec_flags(p)
        add_output_flag(p)
        p.set_defaults(handler=fn)


def cmd_render(a: argparse.Namespace) -> int:
    spec = spec_from_args(a)
    payloads: dict[str, str] = {}
    if Backend(a.backend) is Backend.EBPF:
        from agent.redirect.ebpf.loader import PodOpts

        payloads["ebpf pods map entry"] = PodOpts.from_spec(spec).describe() + "\n"
    elif Backend(a.backend) is Backend.NFTABLES:
        script = (nftables_rules.render_host_probe(spec) if a.host
                  else nftables_rules.render_pod(spec))
        payloads["nft"] = script.text()
    else:
        for fam in spec.families:
            pl = (iptables_rules.render_host_probe(spec, fam) if a.host
                  else iptables_rules.render_pod(spec, fam))
            payloads[f"ipv{fam}"] = pl.text()
        if a.host:
            payloads["ipset"] = iptables_rules.render_probe_ipsets(spec)
    text = "".join(f"# {k}\n{v}" for k, v in payloads.items())
    emit({"backend": a.backend, "profile": a.profile, "host": a.host, "payloads": payloads},
         a.output, table=text)
    return 0


def cmd_apply(a: argparse.Namespace) -> int:
    spec = spec_from_args(a)
    impl = engine.make_backend(a.backend, a.iptables_flavour)
    engine.apply(a.netns, spec, impl)
    emit({"netns": a.netns, "backend": impl.name, "result": "applied"}, a.output,
         table=f"applied {impl.name} redirection in {a.netns}\n")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    spec = spec_from_args(a)
    impl = engine.make_backend(a.backend, a.iptables_flavour)
    state = engine.read(a.netns, spec, impl)
    rows = [{"family": k.family, "table": k.table, "chain": k.chain, "packets": r.packets,
             "bytes": r.bytes, "rule": r.text}
            for k, rules in state.rules.chains.items() for r in rules]
    routes = [{"family": f"ipv{rs.family}", "text": t, "present": ok}
              for rs in state.routes
              for t, ok in ((rs.rule_text(spec), rs.rule), (rs.route_text(spec), rs.route))]
    text = table_text(rows, ["family", "table", "chain", "packets", "bytes", "rule"])
    text += "\n" + table_text(routes, ["text", "present"], ["ROUTING", "PRESENT"])
    emit({"netns": a.netns, "backend": impl.name, "rules": rows, "routing": routes},
         a.output, table=text)
    return 0


def cmd_diff(a: argparse.Namespace) -> int:
    spec = spec_from_args(a)
    impl = engine.make_backend(a.backend, a.iptables_flavour)
    drift = engine.diff(a.netns, spec, impl)
    lines = [f"- missing:    {m}" for m in drift.missing]
    lines += [f"+ unexpected: {u}" for u in drift.unexpected]
    text = "\n".join(lines) + "\n" if lines else f"in sync ({impl.name}, {a.netns})\n"
    emit({"netns": a.netns, "backend": impl.name, "in_sync": drift.in_sync,
          "missing": drift.missing, "unexpected": drift.unexpected}, a.output, table=text)
    return 0 if drift.in_sync else 1


def cmd_remove(a: argparse.Namespace) -> int:
    spec = spec_from_args(a)
    impl = engine.make_backend(a.backend, a.iptables_flavour)
    removed = engine.remove(a.netns, spec, impl)
    text = "".join(f"removed {r}\n" for r in removed) or f"nothing of ours in {a.netns}\n"
    emit({"netns": a.netns, "backend": impl.name, "removed": removed}, a.output, table=text)
    return 0
