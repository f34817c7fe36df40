"""The `meshnode` command line (`cli.main:main`). Each subcommand group lives in its own module.

The only package that imports the agent, the proxy and the control plane. A subcommand's
handler imports what it runs inside the handler, for start-up time: `meshnode redirect
render` does not load grpc, and `meshnode demo` finds `demo/` only in a checkout.
"""
