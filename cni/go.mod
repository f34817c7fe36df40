// meshnode-cni: the chained CNI plugin. Standard library only: the build needs no network
// and the binary is static (CGO_ENABLED=0), so a node needs no interpreter or libc for it.
module meshnode/cni

go 1.19
