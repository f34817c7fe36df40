// meshnode eBPF redirection, milestone 1: outbound TCP over IPv4 with original destination.
//
// Compiled by bcc at load time (agent/ebpf/loader.py). The loader replaces @PIN@ with the
// pin directory, so the maps below survive an agent restart and keep the enrolled pods.
//
// Programs (all attached to the root cgroup v2 through pinned bpf links):
//   mn_connect4   cgroup/connect4   rewrite an enrolled pod's outbound TCP connect() to
//                                   127.0.0.1:<outbound port>; remember the original dst
//                                   by socket cookie.
//   mn_sockops    sockops           ACTIVE_ESTABLISHED: move cookie->origin to a map keyed by
//                                   (netns, 4-tuple), so the proxy's *accepted* socket can
//                                   find it; PASSIVE_ESTABLISHED: ask for a state callback;
//                                   STATE_CB(CLOSE) of the accepted socket: delete it.
//   mn_getsockopt cgroup/getsockopt answer getsockopt(SOL_IP, SO_ORIGINAL_DST) from that map.
//
// Only sockets whose netns cookie is a key of `pods` are ever touched.
#include <uapi/linux/bpf.h>
#include <linux/in.h>

#define MN_MAX_PORTS 16
#define MN_MAX_CIDRS 8
#define MN_SO_ORIGINAL_DST 80
#define MN_SOL_IP 0
#define MN_AF_INET 2
#define MN_AF_INET6 10
#define MN_SOCK_STREAM 1
#define MN_TCP_CLOSE 7
// Context fields must be loaded at a constant offset from the ctx pointer. When two branches
// load different fields, clang tail-merges them into one load through a computed pointer,
// which the verifier rejects ("dereference of modified ctx ptr"), volatile or not; so the
// programs load every field they may need up front, unconditionally, with MN_CTX.
#define MN_CTX(x) (*(volatile typeof(x) *)&(x))

// Per-pod options; keep in sync with agent/ebpf/loader.py (PodOpts).
struct pod_opts {
    u32 proxy_mark;       // sockets with (mark & mark_mask) == proxy_mark are the proxy's
    u32 mark_mask;
    u32 skip_ip4;         // network order; the probe source, never redirected (0 = none)
    u16 outbound_port;    // host order
    u16 n_ports;
    u16 n_cidrs;
    u16 pad;
    u16 ports[MN_MAX_PORTS];        // host order, excluded destination ports
    u32 cidr_addr[MN_MAX_CIDRS];    // network order, already masked
    u32 cidr_mask[MN_MAX_CIDRS];    // network order
};

struct origin {
    u64 netns;
    u32 ip;      // network order
    u16 port;    // network order
    u16 pad;
};

struct pair_key {
    u64 netns;
    u32 client_ip;    // network order
    u32 proxy_ip;     // network order
    u32 client_port;  // host order
    u32 proxy_port;   // host order
};

BPF_TABLE_PINNED("hash", u64, struct pod_opts, pods, 1024, "@PIN@/pods");
BPF_TABLE_PINNED("lru_hash", u64, struct origin, cookie_origin, 65536, "@PIN@/cookie_origin");
BPF_TABLE_PINNED("lru_hash", struct pair_key, struct origin, pair_origin, 65536,
                 "@PIN@/pair_origin");

static __always_inline int port_excluded(struct pod_opts *o, u16 port)
{
#pragma unroll
    for (int i = 0; i < MN_MAX_PORTS; i++) {
        if (i >= o->n_ports)
            break;
        if (o->ports[i] == port)
            return 1;
    }
    return 0;
}

static __always_inline int cidr_excluded(struct pod_opts *o, u32 ip)
{
#pragma unroll
    for (int i = 0; i < MN_MAX_CIDRS; i++) {
        if (i >= o->n_cidrs)
            break;
        if ((ip & o->cidr_mask[i]) == o->cidr_addr[i])
            return 1;
    }
    return 0;
}

int mn_connect4(struct bpf_sock_addr *ctx)
{
    if (ctx->type != MN_SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
        return 1;
    u64 ns = bpf_get_netns_cookie(ctx);
    struct pod_opts *o = pods.lookup(&ns);
    if (!o)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    // The proxy's own sockets carry the proxy mark (SO_MARK is set before connect()).
    if ((sk->mark & o->mark_mask) == o->proxy_mark)
        return 1;
    u32 ip = ctx->user_ip4;
    if ((bpf_ntohl(ip) >> 24) == 127)
        return 1;
    if (o->skip_ip4 && ip == o->skip_ip4)
        return 1;
    u16 port = bpf_ntohs((u16)ctx->user_port);
    if (port_excluded(o, port) || cidr_excluded(o, ip))
        return 1;
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct origin orig = {.netns = ns, .ip = ip, .port = bpf_htons(port)};
    if (cookie_origin.update(&cookie, &orig) != 0)
        return 1;  // cannot remember the original destination: leave the socket alone
    ctx->user_ip4 = bpf_htonl(0x7f000001);
    ctx->user_port = bpf_htons(o->outbound_port);
    return 1;
}

// A v4-mapped IPv6 address (::ffff:a.b.c.d): a dual-stack listener's accepted socket.
static __always_inline int v4_mapped(u32 w0, u32 w1, u32 w2)
{
    return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff);
}

int mn_sockops(struct bpf_sock_ops *skops)
{
    u32 op = skops->op;
    u32 family = skops->family;
    if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
        if (family != MN_AF_INET)
            return 1;
        u64 cookie = bpf_get_socket_cookie(skops);
        struct origin *orig = cookie_origin.lookup(&cookie);
        if (!orig)
            return 1;
        struct origin copy = *orig;
        struct pair_key k = {
            .netns = copy.netns,
            .client_ip = skops->local_ip4,
            .proxy_ip = skops->remote_ip4,
            .client_port = skops->local_port,
            .proxy_port = bpf_ntohl(skops->remote_port),
        };
        pair_origin.update(&k, &copy);
        cookie_origin.delete(&cookie);
        return 1;
    }
    if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_STATE_CB) {
        u64 ns = bpf_get_netns_cookie(skops);
        if (!pods.lookup(&ns) && op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
            return 1;
        // Load every address field up front, unconditionally: see MN_CTX.
        u32 r4 = MN_CTX(skops->remote_ip4), l4 = MN_CTX(skops->local_ip4);
        u32 r6a = MN_CTX(skops->remote_ip6[0]), r6b = MN_CTX(skops->remote_ip6[1]);
        u32 r6c = MN_CTX(skops->remote_ip6[2]), r6d = MN_CTX(skops->remote_ip6[3]);
        u32 l6d = MN_CTX(skops->local_ip6[3]);
        u32 client_ip, proxy_ip;
        if (family == MN_AF_INET) {
            client_ip = r4;
            proxy_ip = l4;
        } else if (family == MN_AF_INET6 && v4_mapped(r6a, r6b, r6c)) {
            client_ip = r6d;
            proxy_ip = l6d;
        } else {
            return 1;
        }
        struct pair_key k = {
            .netns = ns,
            .client_ip = client_ip,
            .proxy_ip = proxy_ip,
            .client_port = bpf_ntohl(skops->remote_port),
            .proxy_port = skops->local_port,
        };
        if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
            // The proxy accepted a redirected connection: clean its entry when it closes.
            if (pair_origin.lookup(&k))
                bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
                                          BPF_SOCK_OPS_STATE_CB_FLAG);
        } else if (skops->args[1] == MN_TCP_CLOSE) {
            pair_origin.delete(&k);
        }
    }
    return 1;
}

struct mn_sockaddr_in {
    u16 family;
    u16 port;
    u32 addr;
    u64 zero;
};

int mn_getsockopt(struct bpf_sockopt *ctx)
{
    if (ctx->level != MN_SOL_IP || ctx->optname != MN_SO_ORIGINAL_DST)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk || sk->protocol != IPPROTO_TCP)
        return 1;
    // Load every address field up front, unconditionally: see MN_CTX.
    u32 family = MN_CTX(sk->family);
    u32 d4 = MN_CTX(sk->dst_ip4), s4 = MN_CTX(sk->src_ip4);
    u32 d6a = MN_CTX(sk->dst_ip6[0]), d6b = MN_CTX(sk->dst_ip6[1]);
    u32 d6c = MN_CTX(sk->dst_ip6[2]), d6d = MN_CTX(sk->dst_ip6[3]);
    u32 s6d = MN_CTX(sk->src_ip6[3]);
    u32 client_ip, proxy_ip;
    if (family == MN_AF_INET) {
        client_ip = d4;
        proxy_ip = s4;
    } else if (family == MN_AF_INET6 && v4_mapped(d6a, d6b, d6c)) {
        // accepted on a dual-stack listener; origdst.py asks SOL_IP for these too
        client_ip = d6d;
        proxy_ip = s6d;
    } else {
        return 1;
    }
    struct pair_key k = {
        .netns = bpf_get_netns_cookie(ctx),
        .client_ip = client_ip,
        .proxy_ip = proxy_ip,
        .client_port = bpf_ntohs(sk->dst_port),
        .proxy_port = sk->src_port,
    };
    struct origin *orig = pair_origin.lookup(&k);
    if (!orig)
        return 1;  // not ours: keep the kernel's (conntrack's) answer
    struct mn_sockaddr_in *sa = ctx->optval;
    if ((void *)(sa + 1) > ctx->optval_end)
        return 1;
    sa->family = MN_AF_INET;
    sa->port = orig->port;
    sa->addr = orig->ip;
    sa->zero = 0;
    // Two separate 4-byte stores: clang would merge them into one 8-byte store, which the
    // verifier rejects for this context.
    *(volatile s32 *)&ctx->optlen = sizeof(*sa);
    *(volatile s32 *)&ctx->retval = 0;
    return 1;
}
