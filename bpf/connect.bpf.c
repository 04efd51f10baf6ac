// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/connect4 and cgroup/connect6 on each meshed pod's cgroup: a TCP connect to a
 * mesh address is sent to the node proxy's listener inside the pod's own network
 * namespace, and the original destination is kept in the socket's storage. Loopback,
 * the pod's own addresses, excluded ports and anything but TCP are left alone.
 */
#include "maps.h"

/* Why a connect is (not) captured, in the same order as the nftables fallback. */
static __always_inline int classify(const struct smesh_pod *pod, const __u8 *dst, __u16 port)
{
	const __u32 *w = (const __u32 *)dst;
	struct smesh_cidr_key cidr = {.prefixlen = 128};
	__u8 *in_mesh;

	if (smesh_addr_is_v4(dst)) {
		__u8 first = dst[12];

		if (first == 127 || w[3] == 0)
			return SMESH_DECISION_PASS_LOOPBACK;
	} else if (w[0] == 0 && w[1] == 0 && w[2] == 0 && (w[3] == 0 || w[3] == bpf_htonl(1))) {
		return SMESH_DECISION_PASS_LOOPBACK;
	}
	smesh_addr_v6(cidr.addr, w);
	in_mesh = bpf_map_lookup_elem(&smesh_cidrs, &cidr);
	if (!in_mesh || !*in_mesh)
		return SMESH_DECISION_PASS_NOT_MESH;
	if (((pod->flags & SMESH_POD_HAS_IP4) && smesh_addr_eq(dst, pod->ip4)) ||
	    ((pod->flags & SMESH_POD_HAS_IP6) && smesh_addr_eq(dst, pod->ip6)))
		return SMESH_DECISION_PASS_SELF;
	if (bpf_map_lookup_elem(&smesh_ports, &port))
		return SMESH_DECISION_PASS_PORT;
	return SMESH_DECISION_CAPTURED;
}

static __always_inline int counter_of(int decision)
{
	switch (decision) {
	case SMESH_DECISION_CAPTURED: return SMESH_COUNTER_CAPTURED;
	case SMESH_DECISION_PASS_NOT_MESH: return SMESH_COUNTER_PASS_NOT_MESH;
	case SMESH_DECISION_PASS_PORT: return SMESH_COUNTER_PASS_PORT;
	case SMESH_DECISION_PASS_LOOPBACK: return SMESH_COUNTER_PASS_LOOPBACK;
	case SMESH_DECISION_PASS_SELF: return SMESH_COUNTER_PASS_SELF;
	default: return SMESH_COUNTER_DENIED;
	}
}

/*
 * Decide, remember and report. Returns 1 to rewrite the destination, 0 to leave it, -1
 * to refuse the connect (no storage for the original destination: fail closed).
 */
static __always_inline int decide(struct bpf_sock_addr *ctx, const __u8 *dst, __u16 port)
{
	struct smesh_config *cfg = smesh_get_config();
	struct smesh_orig *stored;
	struct smesh_pod *pod;
	__u64 cookie;
	int decision;
	__u32 id;

	if (!cfg)
		return 0;
	cookie = bpf_get_netns_cookie(ctx);
	pod = bpf_map_lookup_elem(&smesh_pods, &cookie);
	if (!pod) {
		smesh_count(0, SMESH_COUNTER_PASS_NOT_MESH);
		return 0;
	}
	id = pod->id;
	if (ctx->type != SMESH_SOCK_STREAM || ctx->protocol != SMESH_IPPROTO_TCP) {
		smesh_count(id, SMESH_COUNTER_PASS_NOT_TCP);
		return 0;
	}
	decision = classify(pod, dst, port);
	if (decision == SMESH_DECISION_CAPTURED) {
		stored = bpf_sk_storage_get(&smesh_sk_orig, ctx->sk, 0,
					    BPF_SK_STORAGE_GET_F_CREATE);
		if (stored) {
			smesh_addr_v6(stored->addr, (const __u32 *)dst);
			stored->port = port;
			stored->family = smesh_addr_is_v4(dst) ? SMESH_AF_INET : SMESH_AF_INET6;
			stored->_pad = 0;
			stored->pod_id = id;
		} else {
			decision = SMESH_DECISION_DENIED;
		}
	} else {
		/* A socket may connect again after a failed attempt: forget the old one. */
		bpf_sk_storage_delete(&smesh_sk_orig, ctx->sk);
	}
	smesh_count(id, counter_of(decision));
	if (decision == SMESH_DECISION_CAPTURED || decision == SMESH_DECISION_DENIED ||
	    (cfg->flags & SMESH_F_EVENTS_PASSTHROUGH))
		smesh_emit(bpf_get_socket_cookie(ctx), id, dst, port,
			   smesh_addr_is_v4(dst) ? SMESH_AF_INET : SMESH_AF_INET6, decision, 1);
	if (decision == SMESH_DECISION_DENIED)
		return -1;
	return decision == SMESH_DECISION_CAPTURED;
}

SEC("cgroup/connect4")
int smesh_connect4(struct bpf_sock_addr *ctx)
{
	struct smesh_config *cfg;
	__u8 dst[16];
	int verdict;

	smesh_addr_v4(dst, ctx->user_ip4);
	verdict = decide(ctx, dst, bpf_ntohs(ctx->user_port));
	if (verdict < 0)
		return 0;
	cfg = smesh_get_config();
	if (verdict > 0 && cfg) {
		ctx->user_ip4 = *(__u32 *)cfg->listener4;
		ctx->user_port = bpf_htons(cfg->port4);
	}
	return 1;
}

SEC("cgroup/connect6")
int smesh_connect6(struct bpf_sock_addr *ctx)
{
	struct smesh_config *cfg;
	__u32 ip6[4];
	__u8 dst[16];
	int verdict;

	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	smesh_addr_v6(dst, ip6);
	verdict = decide(ctx, dst, bpf_ntohs(ctx->user_port));
	if (verdict < 0)
		return 0;
	cfg = smesh_get_config();
	if (verdict > 0 && cfg) {
		if (smesh_addr_is_v4(dst)) { /* dual-stack socket, IPv4 peer: the v4 listener */
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = bpf_htonl(0xffff);
			ctx->user_ip6[3] = *(__u32 *)cfg->listener4;
			ctx->user_port = bpf_htons(cfg->port4);
		} else {
			const __u32 *l6 = (const __u32 *)cfg->listener6;

			ctx->user_ip6[0] = l6[0];
			ctx->user_ip6[1] = l6[1];
			ctx->user_ip6[2] = l6[2];
			ctx->user_ip6[3] = l6[3];
			ctx->user_port = bpf_htons(cfg->port6);
		}
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
