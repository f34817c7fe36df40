"""The meshnode node agent: CNI install and repair, pod enrollment, the redirect engine and
its backends, the ZDS hand-off to the proxy, the Kubernetes pod source, the control plane's
discovery and certificate clients, and the mesh config channel to the proxy.

  config.py     the agent's YAML config (`meshnode agent --config`)
  server.py     the daemon: wires the sub-packages together
  install/      the CNI plugin binary and conflist entry, watched and repaired
  nodeagent/    enrollment: the CNI socket (typed requests and errors), pod records,
                reconcile and drift repair; the Enroller is given its backend, netns
                lookups and proxy hand-off
  redirect/     the redirect engine: iptables, nftables and eBPF (redirect/ebpf/) backends,
                peers behind one interface (RuleBackend: prepare, apply, read, remove);
                the capture options' one definition (redirect/spec.py CaptureOptions)
  zds/          the ZDS server (pods and their netns fds to the proxy)
  k8s/          the Kubernetes pod source
  xds/          the Delta ADS client and its state; identity/: workload certificates
  meshconfig/   the control plane client as one object, and mesh.sock to the proxy

Imports `core` and `meshpb`; never `proxy`, `controlplane`, `cli`, `demo` or `testing`
(tests/unit/test_layering.py).
"""
