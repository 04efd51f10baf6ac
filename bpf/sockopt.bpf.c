// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/getsockopt on the proxy's cgroup: answer SO_ORIGINAL_DST (SOL_IP) and its IPv6
 * twin IP6T_SO_ORIGINAL_DST (SOL_IPV6) for connections smesh captured, exactly as
 * iptables/nftables REDIRECT answers through conntrack, so the proxy needs one code path.
 * An accepted socket belongs to its listener's cgroup, hence the proxy's, not the pod's.
 * Every other option, and every socket smesh knows nothing about, passes untouched.
 */
#include "maps.h"

struct smesh_sockaddr_in {
	__u16 family;
	__be16 port;
	__u32 addr;
	__u8 zero[8];
};

struct smesh_sockaddr_in6 {
	__u16 family;
	__be16 port;
	__u32 flowinfo;
	__u32 addr[4];
	__u32 scope_id;
};

static __always_inline struct smesh_orig *lookup(struct bpf_sockopt *ctx, struct bpf_sock *sk)
{
	struct smesh_orig *orig = bpf_sk_storage_get(&smesh_sk_orig, sk, 0, 0);
	struct smesh_conn_key key;
	__u32 family, ip4, ip6[4];
	__u16 port;

	if (orig)
		return orig;
	/* Not handed over (the listener is outside the proxy's sockops): ask the map. */
	family = SMESH_READ(sk->family);
	ip4 = SMESH_READ(sk->dst_ip4);
	ip6[0] = SMESH_READ(sk->dst_ip6[0]);
	ip6[1] = SMESH_READ(sk->dst_ip6[1]);
	ip6[2] = SMESH_READ(sk->dst_ip6[2]);
	ip6[3] = SMESH_READ(sk->dst_ip6[3]);
	port = SMESH_READ(sk->dst_port);
	key.netns_cookie = bpf_get_netns_cookie(ctx);
	if (family == SMESH_AF_INET)
		smesh_addr_v4(key.addr, ip4);
	else
		smesh_addr_v6(key.addr, ip6);
	key.port = bpf_ntohs(port);
	key._pad0 = 0;
	key._pad1 = 0;
	return bpf_map_lookup_elem(&smesh_conns, &key);
}

SEC("cgroup/getsockopt")
int smesh_sockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	void *end = ctx->optval_end;
	struct smesh_orig *orig;

	if (ctx->optname != SMESH_SO_ORIGINAL_DST || !sk)
		return 1;
	if (ctx->level != SMESH_SOL_IP && ctx->level != SMESH_SOL_IPV6)
		return 1;
	orig = lookup(ctx, sk);
	if (!orig)
		return 1;
	if (ctx->level == SMESH_SOL_IP && orig->family == SMESH_AF_INET) {
		struct smesh_sockaddr_in *sin = ctx->optval;

		if ((void *)(sin + 1) > end)
			return 1;
		sin->family = SMESH_AF_INET;
		sin->port = bpf_htons(orig->port);
		sin->addr = ((const __u32 *)orig->addr)[3];
		__builtin_memset(sin->zero, 0, sizeof(sin->zero));
		ctx->optlen = sizeof(*sin);
		ctx->retval = 0;
	} else if (ctx->level == SMESH_SOL_IPV6 && orig->family == SMESH_AF_INET6) {
		struct smesh_sockaddr_in6 *sin6 = ctx->optval;
		const __u32 *a = (const __u32 *)orig->addr;

		if ((void *)(sin6 + 1) > end)
			return 1;
		sin6->family = SMESH_AF_INET6;
		sin6->port = bpf_htons(orig->port);
		sin6->flowinfo = 0;
		sin6->addr[0] = a[0];
		sin6->addr[1] = a[1];
		sin6->addr[2] = a[2];
		sin6->addr[3] = a[3];
		sin6->scope_id = 0;
		ctx->optlen = sizeof(*sin6);
		ctx->retval = 0;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
