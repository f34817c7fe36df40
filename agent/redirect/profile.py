"""Names of the chains, tables and sets a profile owns.

`istio` reproduces istio-cni's names so its golden files are our conformance vectors and
operators who know Istio read our rules at sight; `meshnode` is our own namespace, so both
can coexist in one netns without touching each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.redirect.spec import Profile


@dataclass(frozen=True)
class Names:
    # iptables user chains (in-pod)
    prerouting: str
    output: str
    # iptables host chain and ipset/nft set prefix for the kubelet probe rule
    postrouting: str
    probe_set: str
    # nftables tables (family inet) and their non-base chains
    nft_table_prefix: str
    nft_prerouting: str
    nft_output: str

    def nft_table(self, kind: str) -> str:
        return f"{self.nft_table_prefix}-{kind}"

    @property
    def iptables_chains(self) -> tuple[str, str]:
        return (self.prerouting, self.output)

    @property
    def nft_tables(self) -> tuple[str, str, str]:
        return (self.nft_table("nat"), self.nft_table("mangle"), self.nft_table("raw"))


_NAMES = {
    Profile.MESHNODE: Names(
        prerouting="MESHNODE_PRERT",
        output="MESHNODE_OUTPUT",
        postrouting="MESHNODE_POSTRT",
        probe_set="meshnode-probes",
        nft_table_prefix="meshnode",
        nft_prerouting="meshnode-prerouting",
        nft_output="meshnode-output",
    ),
    Profile.ISTIO: Names(
        prerouting="ISTIO_PRERT",
        output="ISTIO_OUTPUT",
        postrouting="ISTIO_POSTRT",
        probe_set="istio-inpod-probes",
        nft_table_prefix="istio-ambient",
        nft_prerouting="istio-prerouting",
        nft_output="istio-output",
    ),
}


def names_for(profile: Profile) -> Names:
    return _NAMES[Profile(profile)]
