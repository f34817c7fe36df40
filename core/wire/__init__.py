"""The agent -> proxy wire codecs, shared by both ends.

  zds.py         ZDS: one protobuf per SOCK_SEQPACKET datagram, netns fds as SCM_RIGHTS
  meshconfig.py  mesh.sock: length-prefixed frames of the mesh config channel
"""
