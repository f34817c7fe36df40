"""The mesh-wide outboundTrafficPolicy as deployed: the chart value
`controlplane.outboundTrafficPolicy.mode` (Istio's meshConfig.outboundTrafficPolicy.mode)
reaches the control plane's `--outbound-traffic-policy`, and the schema refuses a mode
Istio's MeshConfig would not take here."""

from __future__ import annotations

from typing import Any

import pytest

from cli.main import build_parser
from controlplane.ambient.options import Options
from core.mesh.traffic import OutboundMode
from tests.deploy.manifests import container, find, plain, render


def cp_args(objs: list[dict[str, Any]]) -> Any:
    pod = find(objs, "Deployment", "meshnode-controlplane")["spec"]["template"]["spec"]
    return build_parser().parse_args(container(pod, "controlplane")["args"])


def test_default_is_allow_any_in_the_chart_and_the_plain_manifests() -> None:
    assert cp_args(render()).outbound_traffic_policy == "ALLOW_ANY"
    assert cp_args([o for _f, o in plain()]).outbound_traffic_policy == "ALLOW_ANY"
    assert Options().outbound_traffic_policy == OutboundMode.ALLOW_ANY


def test_registry_only_reaches_the_args() -> None:
    objs = render({"controlplane": {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}})
    assert cp_args(objs).outbound_traffic_policy == "REGISTRY_ONLY"


@pytest.mark.parametrize("mode", ["registry_only", "ALLOW_ANY_DYNAMIC_DNS", ""])
def test_schema_refuses_other_modes(mode: str) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError) as info:
        render({"controlplane": {"outboundTrafficPolicy": {"mode": mode}}})
    assert "/controlplane/outboundTrafficPolicy/mode" in str(info.value)


def test_the_schema_enum_is_the_flag_s_choices() -> None:
    import json

    from tests.deploy.manifests import CHART

    schema = json.loads((CHART / "values.schema.json").read_text())
    enum = schema["properties"]["controlplane"]["properties"]["outboundTrafficPolicy"][
        "properties"]["mode"]["enum"]
    (sub,) = [a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    commands: Any = sub.choices
    (flag,) = [a for a in commands["controlplane"]._actions
               if "--outbound-traffic-policy" in a.option_strings]
    assert enum == list(flag.choices or ()) == [m.name for m in reversed(OutboundMode)]
