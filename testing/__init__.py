"""Test harnesses shared by tests/, bench/ and the demo; not shipped in the wheel.

  lab.py            network namespaces joined by veth pairs (a lab "node" per netns)
  pins.py           a private bpffs for a run, so nothing is pinned in the host's /sys/fs/bpf
  agent_harness.py  a real `meshnode agent` process and the real CNI plugin driving it
  proxy_procs.py    a real `meshnode proxy` process
  mesh_procs.py     two-node mesh processes: control plane, per-node agent and proxy
  mesh_topology.py  the two-node lab layout of tests/mesh and the mesh benchmark
  mesh_manifests.py the lab's mesh as Kubernetes/Istio objects (control plane `--config DIR`)
  fake_ads.py       Delta ADS resources and a fake control plane for the agent's xDS client
  mesh_feed.py      the agent's mesh config server over records fed directly (no control plane)
  xds.py            an xDS client and a big discovery snapshot (memory tests, mesh bench)
  controlplane_child.py  the real control plane in a child process, driven over stdin/stdout
                    (its CPU and RSS measured from outside: control-plane scale bench)
"""
