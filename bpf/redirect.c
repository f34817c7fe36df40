// meshnode eBPF redirection: outbound TCP, DNS and inbound TCP, over IPv4 and IPv6, with
// the original destination answered to the proxy.
//
// Compiled by bcc at load time (agent/ebpf/loader.py). The loader replaces @PIN@ with the
// pin directory, so the maps below survive an agent restart and keep the enrolled pods.
//
// Programs. All but mn_sk_lookup are attached to the root cgroup v2 through pinned bpf
// links; mn_sk_lookup is attached to each enrolled pod's netns (one pinned link per pod).
//   mn_connect4/6     cgroup/connect4|6  an enrolled pod's outbound TCP connect() goes to the
//                                        proxy's outbound port on loopback, TCP and connected
//                                        UDP to port 53 to its DNS port; the original
//                                        destination is remembered by socket cookie. An
//                                        AF_INET6 socket's v4-mapped destinations
//                                        (::ffff:a.b.c.d) go to ::ffff:127.0.0.1 and count as
//                                        IPv4; native IPv6 ones to [::1] (pods with ipv6 on).
//   mn_sendmsg4/6     cgroup/sendmsg4|6  the same for unconnected UDP to port 53.
//   mn_recvmsg4/6     cgroup/recvmsg4|6  a DNS answer from the proxy shows the resolver the
//                                        app asked as its source.
//   mn_sockops        sockops            ACTIVE_ESTABLISHED: copy cookie->origin to a map
//                                        keyed by (netns, 4-tuple), so the proxy's *accepted*
//                                        socket can find it; PASSIVE_ESTABLISHED: ask for a
//                                        state callback; STATE_CB(CLOSE): delete it.
//   mn_getsockopt     cgroup/getsockopt  answer getsockopt(SOL_IP, SO_ORIGINAL_DST) and
//                                        getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) from that
//                                        map; for a socket sk_lookup delivered (no NAT), with
//                                        the socket's own local address.
//   mn_getpeername4/6 cgroup/getpeername4|6  a redirected socket's peer is the original
//                                        destination, as with iptables' REDIRECT.
//   mn_sock_release   cgroup/sock_release  forget the socket's original destination: the
//                                        cookie map holds each redirected socket's for its
//                                        whole life (getpeername, DNS answers), no longer.
//   mn_sk_lookup      sk_lookup (netns)  inbound TCP to a pod IP is given to the proxy's
//                                        inbound listener (registered by the proxy in
//                                        `listeners`) with no NAT: the proxy's accepted socket
//                                        has the true local address.
//
// Addresses in the maps are always 16 bytes: IPv4 ones stored v4-mapped, so an AF_INET
// socket and a dual-stack listener's v4-mapped socket build the same key.
//
// Only sockets whose netns cookie is a key of `pods` are ever touched.
#include <uapi/linux/bpf.h>
#include <linux/in.h>

#define MN_MAX_PORTS 16
#define MN_MAX_CIDRS 8
#define MN_SO_ORIGINAL_DST 80
#define MN_SOL_IP 0
#define MN_SOL_IPV6 41
#define MN_AF_INET 2
#define MN_AF_INET6 10
#define MN_SOCK_STREAM 1
#define MN_SOCK_DGRAM 2
#define MN_TCP_CLOSE 7
#define MN_DNS 53
#define MN_LOOPBACK_IFINDEX 1
#define MN_TRANSPARENT_MARK 0x1000  // TRANSPARENT_MARK in agent/redirect/spec.py
// `stats` slots (keep in sync with STATS in agent/ebpf/loader.py)
#define MN_STAT_OUTBOUND 0   // TCP connects sent to the outbound port
#define MN_STAT_DNS 1        // UDP/TCP DNS connects and datagrams sent to the DNS port
#define MN_STAT_INBOUND 2    // inbound connections given to the proxy's listener
#define MN_STAT_NO_LISTENER 3  // inbound connections refused: the proxy has no listener
#define MN_STAT_ORIGDST 4    // SO_ORIGINAL_DST answers
#define MN_NSTATS 8
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
    u16 ipv6;             // 1: redirect native IPv6 destinations too
    u16 ports[MN_MAX_PORTS];        // host order, excluded destination ports
    u32 cidr_addr[MN_MAX_CIDRS];    // network order, already masked
    u32 cidr_mask[MN_MAX_CIDRS];    // network order
    u32 skip_ip6[4];                // network order; the IPv6 probe source (:: = none)
    u16 n_cidrs6;
    u16 pad6;
    u32 cidr6_addr[MN_MAX_CIDRS * 4];  // network order, already masked, 4 words each
    u32 cidr6_mask[MN_MAX_CIDRS * 4];
    u16 dns_port;         // host order; 0: DNS is not captured
    u16 inbound_port;     // host order; 0: inbound is not captured
    u16 tunnel_port;      // host order; inbound to it passes (HBONE)
    u16 n_in_ports;
    u16 in_ports[MN_MAX_PORTS];     // host order, excluded inbound ports
    u64 redirected;       // connections/datagrams this pod had redirected (all hooks)
};

struct addr_key {
    u32 ip[4];  // network order; IPv4 v4-mapped
};

struct origin {
    u64 netns;
    u32 ip[4];   // network order; IPv4 v4-mapped (::ffff:a.b.c.d)
    u16 port;    // network order
    u16 family;  // MN_AF_INET or MN_AF_INET6: what the app connected to
};

struct pair_key {
    u64 netns;
    u32 client_ip[4];  // network order; IPv4 v4-mapped
    u32 proxy_ip[4];   // network order; IPv4 v4-mapped
    u32 client_port;   // host order
    u32 proxy_port;    // host order
};

BPF_TABLE_PINNED("hash", u64, struct pod_opts, pods, 1024, "@PIN@/pods");
BPF_TABLE_PINNED("lru_hash", u64, struct origin, cookie_origin, 65536, "@PIN@/cookie_origin");
BPF_TABLE_PINNED("lru_hash", struct pair_key, struct origin, pair_origin, 65536,
                 "@PIN@/pair_origin");
// Every address of every enrolled pod -> its netns cookie: sk_lookup has no netns cookie
// helper, so inbound finds the pod by the address the packet is for; outbound uses it to
// leave a pod's connections to its own addresses alone (they go over lo, like iptables'
// `-o lo` exemption).
BPF_TABLE_PINNED("hash", struct addr_key, u64, pod_ips, 4096, "@PIN@/pod_ips");
// netns cookie -> the proxy's inbound listener in that netns. The proxy writes it (only
// it holds the socket); the kernel drops the entry when the socket closes.
BPF_TABLE_PINNED("sockhash", u64, u64, listeners, 1024, "@PIN@/listeners");
BPF_TABLE_PINNED("percpu_array", u32, u64, stats, MN_NSTATS, "@PIN@/stats");
// The proxy's own connections to an app in its pod from the client's address (inbound with
// the source preserved), by 4-tuple (netns 0), from connect() until established: sk_lookup
// must let their SYN reach the app. They look like inbound from outside (the kernel reports
// the pod's interface as where a packet to a local address arrived), and sk_lookup cannot
// see their mark.
BPF_TABLE_PINNED("lru_hash", struct pair_key, u8, transparent, 65536, "@PIN@/transparent");

static __always_inline void count(u32 slot)
{
    u64 *v = stats.lookup(&slot);
    if (v)
        (*v)++;
}

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

// A v4-mapped IPv6 address (::ffff:a.b.c.d): IPv4 seen
// through an AF_INET6 socket.
static __always_inline int v4_mapped(u32 w0, u32 w1, u32 w2)
{
    return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff);
}

// An endpoint address as the hand-over maps keep it: 16 bytes, IPv4 v4-mapped.
static __always_inline int mn_addr(u32 family, u32 ip4, u32 a, u32 b, u32 c, u32 d,
                                   u32 out[4])
{
    if (family == MN_AF_INET) {
        out[0] = 0;
        out[1] = 0;
        out[2] = bpf_htonl(0xffff);
        out[3] = ip4;
        return 1;
    }
    if (family == MN_AF_INET6) {
        out[0] = a;
        out[1] = b;
        out[2] = c;
        out[3] = d;
        return 1;
    }
    return 0;
}

// The options of the pod this socket belongs to, or NULL when it must be left alone: not
// an enrolled netns, or one of the proxy's own sockets (they carry the proxy mark, set with
// SO_MARK before connect()).
static __always_inline struct pod_opts *enrolled_pod(struct bpf_sock_addr *ctx, u64 *ns)
{
    *ns = bpf_get_netns_cookie(ctx);
    struct pod_opts *o = pods.lookup(ns);
    if (!o)
        return NULL;
    struct bpf_sock *sk = ctx->sk;
    if (!sk || (sk->mark & o->mark_mask) == o->proxy_mark)
        return NULL;
    return o;
}

// One of the pod's own addresses: the kernel routes it over lo, and it is never captured.
static __always_inline int own_addr(u64 ns, u32 a, u32 b, u32 c, u32 d)
{
    struct addr_key k = {.ip = {a, b, c, d}};
    u64 *owner = pod_ips.lookup(&k);
    return owner && *owner == ns;
}

// IPv4 destinations never redirected: loopback, the kubelet probe source, excluded CIDRs.
static __always_inline int ip4_excluded(struct pod_opts *o, u32 ip)
{
    return (bpf_ntohl(ip) >> 24) == 127 || (o->skip_ip4 && ip == o->skip_ip4) ||
           cidr_excluded(o, ip);
}

// Where a connect()/sendmsg() to `port` goes, or 0 to leave it alone. DNS (UDP and TCP to
// port 53, when captured) goes to the DNS port ahead of the exclusions, as the iptables and
// nftables rules order it; other TCP to the outbound port unless its port is excluded.
static __always_inline u16 target_port(struct pod_opts *o, u32 type, u32 proto, u16 port)
{
    if (port == MN_DNS && o->dns_port &&
        ((type == MN_SOCK_DGRAM && proto == IPPROTO_UDP) ||
         (type == MN_SOCK_STREAM && proto == IPPROTO_TCP)))
        return o->dns_port;
    if (type != MN_SOCK_STREAM || proto != IPPROTO_TCP || port_excluded(o, port))
        return 0;
    return o->outbound_port;
}

static __always_inline int remember(struct bpf_sock_addr *ctx, struct pod_opts *o,
                                    struct origin *orig, u32 slot)
{
    u64 cookie = bpf_get_socket_cookie(ctx);
    if (cookie_origin.update(&cookie, orig) != 0)
        return 0;  // cannot remember the original destination: leave the socket alone
    count(slot);
    __sync_fetch_and_add(&o->redirected, 1);
    return 1;
}

// The proxy connecting to the app from the client's address (bound with IP_TRANSPARENT,
// so its port is known already): remember the 4-tuple for sk_lookup.
static __always_inline void note_transparent(struct bpf_sock_addr *ctx, u32 a, u32 b, u32 c,
                                             u32 d, u16 port)
{
    struct bpf_sock *sk = ctx->sk;
    if (!sk || !(sk->mark & MN_TRANSPARENT_MARK))
        return;
    u32 family = MN_CTX(sk->family), s4 = MN_CTX(sk->src_ip4);
    u32 s6a = MN_CTX(sk->src_ip6[0]), s6b = MN_CTX(sk->src_ip6[1]);
    u32 s6c = MN_CTX(sk->src_ip6[2]), s6d = MN_CTX(sk->src_ip6[3]);
    u32 sport = MN_CTX(sk->src_port);
    struct pair_key k = {.proxy_ip = {a, b, c, d}, .client_port = sport, .proxy_port = port};
    if (!mn_addr(family, s4, s6a, s6b, s6c, s6d, k.client_ip))
        return;
    u8 one = 1;
    transparent.update(&k, &one);
}

static __always_inline int redirect4(struct bpf_sock_addr *ctx, int dns_only)
{
    // Load every field up front, unconditionally: see MN_CTX.
    u32 type = MN_CTX(ctx->type), proto = MN_CTX(ctx->protocol);
    u32 ip = MN_CTX(ctx->user_ip4);
    u16 port = bpf_ntohs((u16)MN_CTX(ctx->user_port));
    if (dns_only && port != MN_DNS)
        return 1;  // sendmsg: the fast path for every other datagram on the node
    u64 ns;
    struct pod_opts *o = enrolled_pod(ctx, &ns);
    if (!o) {
        if (!dns_only)
            note_transparent(ctx, 0, 0, bpf_htonl(0xffff), ip, port);
        return 1;
    }
    u16 to = target_port(o, type, proto, port);
    if (!to || ip4_excluded(o, ip) || own_addr(ns, 0, 0, bpf_htonl(0xffff), ip))
        return 1;
    struct origin orig = {.netns = ns, .ip = {0, 0, bpf_htonl(0xffff), ip},
                          .port = bpf_htons(port), .family = MN_AF_INET};
    if (!remember(ctx, o, &orig, port == MN_DNS && to == o->dns_port ? MN_STAT_DNS
                                                                   : MN_STAT_OUTBOUND))
        return 1;
    ctx->user_ip4 = bpf_htonl(0x7f000001);
    ctx->user_port = bpf_htons(to);
    return 1;
}

int mn_connect4(struct bpf_sock_addr *ctx)
{
    return redirect4(ctx, 0);
}

int mn_sendmsg4(struct bpf_sock_addr *ctx)
{
    return redirect4(ctx, 1);
}

static __always_inline int cidr6_excluded(struct pod_opts *o, u32 a, u32 b, u32 c, u32 d)
{
#pragma unroll
    for (int i = 0; i < MN_MAX_CIDRS; i++) {
        if (i >= o->n_cidrs6)
            break;
        if ((a & o->cidr6_mask[4 * i]) == o->cidr6_addr[4 * i] &&
            (b & o->cidr6_mask[4 * i + 1]) == o->cidr6_addr[4 * i + 1] &&
            (c & o->cidr6_mask[4 * i + 2]) == o->cidr6_addr[4 * i + 2] &&
            (d & o->cidr6_mask[4 * i + 3]) == o->cidr6_addr[4 * i + 3])
            return 1;
    }
    return 0;
}

static __always_inline int redirect6(struct bpf_sock_addr *ctx, int dns_only)
{
    // Load every field up front, unconditionally: see MN_CTX.
    u32 type = MN_CTX(ctx->type), proto = MN_CTX(ctx->protocol);
    u32 a = MN_CTX(ctx->user_ip6[0]), b = MN_CTX(ctx->user_ip6[1]);
    u32 c = MN_CTX(ctx->user_ip6[2]), d = MN_CTX(ctx->user_ip6[3]);
    u16 port = bpf_ntohs((u16)MN_CTX(ctx->user_port));
    if (dns_only && port != MN_DNS)
        return 1;
    u64 ns;
    struct pod_opts *o = enrolled_pod(ctx, &ns);
    if (!o) {
        if (!dns_only)
            note_transparent(ctx, a, b, c, d, port);
        return 1;
    }
    u16 to = target_port(o, type, proto, port);
    if (!to || own_addr(ns, a, b, c, d))
        return 1;
    struct origin orig = {.netns = ns, .ip = {a, b, c, d}, .port = bpf_htons(port)};
    u32 na = 0, nb = 0, nc = 0, nd = bpf_htonl(1);  // [::1]
    if (v4_mapped(a, b, c)) {
        // a dual-stack app's IPv4 connect: the IPv4 rules apply
        if (ip4_excluded(o, d))
            return 1;
        orig.family = MN_AF_INET;
        nc = bpf_htonl(0xffff);
        nd = bpf_htonl(0x7f000001);
    } else {
        if (!o->ipv6)
            return 1;
        if (a == 0 && b == 0 && c == 0 && (d == 0 || d == bpf_htonl(1)))
            return 1;  // ::1, or :: (which means loopback too)
        if (a == o->skip_ip6[0] && b == o->skip_ip6[1] && c == o->skip_ip6[2] &&
            d == o->skip_ip6[3])
            return 1;
        if (cidr6_excluded(o, a, b, c, d))
            return 1;
        orig.family = MN_AF_INET6;
    }
    if (!remember(ctx, o, &orig, port == MN_DNS && to == o->dns_port ? MN_STAT_DNS
                                                                   : MN_STAT_OUTBOUND))
        return 1;
    ctx->user_ip6[0] = na;
    ctx->user_ip6[1] = nb;
    ctx->user_ip6[2] = nc;
    ctx->user_ip6[3] = nd;
    ctx->user_port = bpf_htons(to);
    return 1;
}

int mn_connect6(struct bpf_sock_addr *ctx)
{
    return redirect6(ctx, 0);
}

int mn_sendmsg6(struct bpf_sock_addr *ctx)
{
    return redirect6(ctx, 1);
}

// A DNS answer the proxy sends from its DNS port on loopback: the app sees it come from the
// resolver it asked (connected UDP sockets need that to accept it at all).
static __always_inline struct origin *dns_origin(void *ctx, u16 src_port)
{
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct origin *orig = cookie_origin.lookup(&cookie);
    if (!orig || orig->port != bpf_htons(MN_DNS))
        return NULL;
    struct pod_opts *o = pods.lookup(&orig->netns);
    if (!o || !o->dns_port || src_port != o->dns_port)
        return NULL;
    return orig;
}

int mn_recvmsg4(struct bpf_sock_addr *ctx)
{
    u32 ip = MN_CTX(ctx->user_ip4);
    u16 port = bpf_ntohs((u16)MN_CTX(ctx->user_port));
    if (ip != bpf_htonl(0x7f000001))
        return 1;
    struct origin *orig = dns_origin(ctx, port);
    if (!orig || orig->family != MN_AF_INET)
        return 1;
    ctx->user_ip4 = orig->ip[3];
    ctx->user_port = orig->port;
    return 1;
}

// The proxy's loopback address as an AF_INET6 socket sees it: ::1 or ::ffff:127.0.0.1.
static __always_inline int loopback6(u32 a, u32 b, u32 c, u32 d)
{
    return (a == 0 && b == 0 && c == 0 && d == bpf_htonl(1)) ||
           (v4_mapped(a, b, c) && d == bpf_htonl(0x7f000001));
}

// Show `orig` as the peer of an AF_INET6 socket (IPv4 origins are stored v4-mapped).
static __always_inline int show_peer6(struct bpf_sock_addr *ctx, struct origin *orig)
{
    ctx->user_ip6[0] = orig->ip[0];
    ctx->user_ip6[1] = orig->ip[1];
    ctx->user_ip6[2] = orig->ip[2];
    ctx->user_ip6[3] = orig->ip[3];
    ctx->user_port = orig->port;
    return 1;
}

int mn_recvmsg6(struct bpf_sock_addr *ctx)
{
    u32 a = MN_CTX(ctx->user_ip6[0]), b = MN_CTX(ctx->user_ip6[1]);
    u32 c = MN_CTX(ctx->user_ip6[2]), d = MN_CTX(ctx->user_ip6[3]);
    u16 port = bpf_ntohs((u16)MN_CTX(ctx->user_port));
    if (!loopback6(a, b, c, d))
        return 1;
    struct origin *orig = dns_origin(ctx, port);
    return orig ? show_peer6(ctx, orig) : 1;
}

// getpeername() on a redirected socket names the original destination, not the proxy:
// apps log it, and some check it.
int mn_getpeername4(struct bpf_sock_addr *ctx)
{
    u32 ip = MN_CTX(ctx->user_ip4);
    if (ip != bpf_htonl(0x7f000001))
        return 1;
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct origin *orig = cookie_origin.lookup(&cookie);
    if (!orig || orig->family != MN_AF_INET)
        return 1;
    ctx->user_ip4 = orig->ip[3];
    ctx->user_port = orig->port;
    return 1;
}

int mn_getpeername6(struct bpf_sock_addr *ctx)
{
    u32 a = MN_CTX(ctx->user_ip6[0]), b = MN_CTX(ctx->user_ip6[1]);
    u32 c = MN_CTX(ctx->user_ip6[2]), d = MN_CTX(ctx->user_ip6[3]);
    if (!loopback6(a, b, c, d))
        return 1;
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct origin *orig = cookie_origin.lookup(&cookie);
    return orig ? show_peer6(ctx, orig) : 1;
}

int mn_sock_release(struct bpf_sock *sk)
{
    u64 cookie = bpf_get_socket_cookie(sk);
    cookie_origin.delete(&cookie);
    return 1;
}

int mn_sockops(struct bpf_sock_ops *skops)
{
    u32 op = skops->op;
    u32 family = skops->family;
    if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
        op != BPF_SOCK_OPS_STATE_CB)
        return 1;
    if (family != MN_AF_INET && family != MN_AF_INET6)
        return 1;
    u64 ns = bpf_get_netns_cookie(skops);
    // Load every address field up front, unconditionally: see MN_CTX.
    u32 r4 = MN_CTX(skops->remote_ip4), l4 = MN_CTX(skops->local_ip4);
    u32 r6a = MN_CTX(skops->remote_ip6[0]), r6b = MN_CTX(skops->remote_ip6[1]);
    u32 r6c = MN_CTX(skops->remote_ip6[2]), r6d = MN_CTX(skops->remote_ip6[3]);
    u32 l6a = MN_CTX(skops->local_ip6[0]), l6b = MN_CTX(skops->local_ip6[1]);
    u32 l6c = MN_CTX(skops->local_ip6[2]), l6d = MN_CTX(skops->local_ip6[3]);
    u32 rport = bpf_ntohl(MN_CTX(skops->remote_port));
    u32 lport = MN_CTX(skops->local_port);
    struct pair_key k = {.netns = ns};
    if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
        if (pods.lookup(&ns)) {
            // The proxy's connection to the app is established: its SYN is past sk_lookup.
            struct pair_key t = {.client_port = lport, .proxy_port = rport};
            mn_addr(family, l4, l6a, l6b, l6c, l6d, t.client_ip);
            mn_addr(family, r4, r6a, r6b, r6c, r6d, t.proxy_ip);
            transparent.delete(&t);
        }
        u64 cookie = bpf_get_socket_cookie(skops);
        struct origin *orig = cookie_origin.lookup(&cookie);
        if (!orig)
            return 1;
        struct origin copy = *orig;
        k.netns = copy.netns;
        mn_addr(family, l4, l6a, l6b, l6c, l6d, k.client_ip);
        mn_addr(family, r4, r6a, r6b, r6c, r6d, k.proxy_ip);
        k.client_port = lport;
        k.proxy_port = rport;
        pair_origin.update(&k, &copy);
        // cookie_origin keeps it for getpeername() until the app closes the socket
        return 1;
    }
    if (!pods.lookup(&ns) && op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
        return 1;
    mn_addr(family, r4, r6a, r6b, r6c, r6d, k.client_ip);
    mn_addr(family, l4, l6a, l6b, l6c, l6d, k.proxy_ip);
    k.client_port = rport;
    k.proxy_port = lport;
    if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        // The proxy accepted a redirected connection: clean its entry when it closes.
        if (pair_origin.lookup(&k))
            bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
                                      BPF_SOCK_OPS_STATE_CB_FLAG);
    } else if (skops->args[1] == MN_TCP_CLOSE) {
        pair_origin.delete(&k);
    }
    return 1;
}

struct mn_sockaddr_in {
    u16 family;
    u16 port;
    u32 addr;
    u64 zero;
};

struct mn_sockaddr_in6 {
    u16 family;
    u16 port;
    u32 flowinfo;
    u32 addr[4];
    u32 scope_id;
};

// A socket of an enrolled pod on a port the proxy does not listen on (its local address
// must also be one of the pod's own, checked by the caller): inbound that sk_lookup handed
// to the proxy's listener keeps the address and port the client asked for.
static __always_inline int inbound_delivered(u64 ns, u32 port)
{
    struct pod_opts *o = pods.lookup(&ns);
    return o && o->inbound_port && port != o->inbound_port && port != o->outbound_port &&
           port != o->dns_port && port != o->tunnel_port;
}

int mn_getsockopt(struct bpf_sockopt *ctx)
{
    u32 level = ctx->level;
    if (ctx->optname != MN_SO_ORIGINAL_DST || (level != MN_SOL_IP && level != MN_SOL_IPV6))
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk || sk->protocol != IPPROTO_TCP)
        return 1;
    // Load every address field up front, unconditionally: see MN_CTX.
    u32 family = MN_CTX(sk->family);
    u32 d4 = MN_CTX(sk->dst_ip4), s4 = MN_CTX(sk->src_ip4);
    u32 d6a = MN_CTX(sk->dst_ip6[0]), d6b = MN_CTX(sk->dst_ip6[1]);
    u32 d6c = MN_CTX(sk->dst_ip6[2]), d6d = MN_CTX(sk->dst_ip6[3]);
    u32 s6a = MN_CTX(sk->src_ip6[0]), s6b = MN_CTX(sk->src_ip6[1]);
    u32 s6c = MN_CTX(sk->src_ip6[2]), s6d = MN_CTX(sk->src_ip6[3]);
    u32 dport = bpf_ntohs(MN_CTX(sk->dst_port));
    u32 sport = MN_CTX(sk->src_port);
    s32 retval = MN_CTX(ctx->retval);
    // SOL_IP: AF_INET sockets and a dual-stack listener's v4-mapped ones (like conntrack);
    // SOL_IPV6: AF_INET6 sockets only.
    if (level == MN_SOL_IP &&
        !(family == MN_AF_INET || (family == MN_AF_INET6 && v4_mapped(d6a, d6b, d6c))))
        return 1;
    if (level == MN_SOL_IPV6 && family != MN_AF_INET6)
        return 1;
    struct pair_key k = {.netns = bpf_get_netns_cookie(ctx)};
    if (!mn_addr(family, d4, d6a, d6b, d6c, d6d, k.client_ip))
        return 1;
    mn_addr(family, s4, s6a, s6b, s6c, s6d, k.proxy_ip);
    k.client_port = dport;
    k.proxy_port = sport;
    struct origin own = {.netns = k.netns, .port = bpf_htons(sport)};
    struct origin *orig = pair_origin.lookup(&k);
    if (!orig) {
        // Delivered by sk_lookup (no NAT) and conntrack has no answer: the original
        // destination is the socket's own local address. Anything else is not ours: keep
        // the kernel's (conntrack's) answer.
        if (retval == 0 || !inbound_delivered(k.netns, sport) ||
            !own_addr(k.netns, k.proxy_ip[0], k.proxy_ip[1], k.proxy_ip[2], k.proxy_ip[3]))
            return 1;
        own.ip[0] = k.proxy_ip[0];
        own.ip[1] = k.proxy_ip[1];
        own.ip[2] = k.proxy_ip[2];
        own.ip[3] = k.proxy_ip[3];
        own.family = v4_mapped(own.ip[0], own.ip[1], own.ip[2]) ? MN_AF_INET : MN_AF_INET6;
        orig = &own;
    }
    count(MN_STAT_ORIGDST);
    if (level == MN_SOL_IP) {
        if (orig->family != MN_AF_INET)
            return 1;
        struct mn_sockaddr_in *sa = ctx->optval;
        if ((void *)(sa + 1) > ctx->optval_end)
            return 1;
        sa->family = MN_AF_INET;
        sa->port = orig->port;
        sa->addr = orig->ip[3];
        sa->zero = 0;
        // Two separate 4-byte stores: clang would merge them into one 8-byte store, which
        // the verifier rejects for this context.
        *(volatile s32 *)&ctx->optlen = sizeof(*sa);
        *(volatile s32 *)&ctx->retval = 0;
        return 1;
    }
    // IPv6: an IPv4 original is answered v4-mapped (origdst.py unmaps it).
    struct mn_sockaddr_in6 *sa6 = ctx->optval;
    if ((void *)(sa6 + 1) > ctx->optval_end)
        return 1;
    sa6->family = MN_AF_INET6;
    sa6->port = orig->port;
    sa6->flowinfo = 0;
    sa6->addr[0] = orig->ip[0];
    sa6->addr[1] = orig->ip[1];
    sa6->addr[2] = orig->ip[2];
    sa6->addr[3] = orig->ip[3];
    sa6->scope_id = 0;
    *(volatile s32 *)&ctx->optlen = sizeof(*sa6);
    *(volatile s32 *)&ctx->retval = 0;
    return 1;
}


static __always_inline int in_port_excluded(struct pod_opts *o, u16 port)
{
#pragma unroll
    for (int i = 0; i < MN_MAX_PORTS; i++) {
        if (i >= o->n_in_ports)
            break;
        if (o->in_ports[i] == port)
            return 1;
    }
    return 0;
}

int mn_sk_lookup(struct bpf_sk_lookup *ctx)
{
    // Load every field up front, unconditionally: see MN_CTX.
    u32 family = MN_CTX(ctx->family), proto = MN_CTX(ctx->protocol);
    u32 ifindex = MN_CTX(ctx->ingress_ifindex);
    u32 l4 = MN_CTX(ctx->local_ip4), r4 = MN_CTX(ctx->remote_ip4);
    u32 l6a = MN_CTX(ctx->local_ip6[0]), l6b = MN_CTX(ctx->local_ip6[1]);
    u32 l6c = MN_CTX(ctx->local_ip6[2]), l6d = MN_CTX(ctx->local_ip6[3]);
    u32 r6a = MN_CTX(ctx->remote_ip6[0]), r6b = MN_CTX(ctx->remote_ip6[1]);
    u32 r6c = MN_CTX(ctx->remote_ip6[2]), r6d = MN_CTX(ctx->remote_ip6[3]);
    u32 port = MN_CTX(ctx->local_port);
    u16 rport = MN_CTX(ctx->remote_port);
    // Loopback addresses: the pod talking to itself.
    if (proto != IPPROTO_TCP || ifindex == MN_LOOPBACK_IFINDEX)
        return SK_PASS;
    struct addr_key k = {};
    if (!mn_addr(family, l4, l6a, l6b, l6c, l6d, k.ip))
        return SK_PASS;
    u64 *owner = pod_ips.lookup(&k);
    if (!owner)
        return SK_PASS;
    u64 ns = *owner;
    struct pod_opts *o = pods.lookup(&ns);
    if (!o || !o->inbound_port || port == o->tunnel_port || port == o->inbound_port ||
        in_port_excluded(o, port))
        return SK_PASS;
    // IPv4-only capture: IPv6 reaches the app untouched, as with the netfilter backends.
    // Capturing it anyway would hand it to the proxy with no IPv6 reply routing in the pod
    // (the app's SYN-ACK would leave by the interface), and the client would see a reset.
    if (family == MN_AF_INET6 && !o->ipv6)
        return SK_PASS;
    struct pair_key t = {.proxy_ip = {k.ip[0], k.ip[1], k.ip[2], k.ip[3]},
                         .client_port = bpf_ntohs(rport), .proxy_port = port};
    mn_addr(family, r4, r6a, r6b, r6c, r6d, t.client_ip);
    // From the pod itself (to its own address), or the proxy handing on an inbound
    // connection: not inbound capture.
    if (own_addr(ns, t.client_ip[0], t.client_ip[1], t.client_ip[2], t.client_ip[3]) ||
        transparent.lookup(&t))
        return SK_PASS;
    if (family == MN_AF_INET && o->skip_ip4 && r4 == o->skip_ip4)
        return SK_PASS;  // the kubelet's probes reach the app directly
    if (family == MN_AF_INET6 && r6a == o->skip_ip6[0] && r6b == o->skip_ip6[1] &&
        r6c == o->skip_ip6[2] && r6d == o->skip_ip6[3])
        return SK_PASS;
    struct bpf_sock *sk = (struct bpf_sock *)listeners.lookup(&ns);
    if (!sk) {
        // Captured but the proxy is not serving this pod: refuse, as a REDIRECT to a port
        // nobody listens on would, rather than let the connection bypass the proxy.
        count(MN_STAT_NO_LISTENER);
        return SK_DROP;
    }
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    if (err) {
        count(MN_STAT_NO_LISTENER);
        return SK_DROP;
    }
    count(MN_STAT_INBOUND);
    __sync_fetch_and_add(&o->redirected, 1);
    return SK_PASS;
}
