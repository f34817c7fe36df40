"""The agent's control-plane side and its mesh config channel to the node proxy.

  meshclient.py  `MeshClient`: the discovery stream, its state and the identity manager
  runtime.py     the agent's `controlplane:` section -> MeshClient, readiness, /debug/mesh
  server.py      `mesh.sock`: a snapshot per proxy, then deltas and certificate bundles
  capture.py     capture decisions from the state

The frame codec is core/wire/meshconfig.py, the records' JSON core/mesh/channel.py; the
proxy side is proxy/meshconfig/.
"""
