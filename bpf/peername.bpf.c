// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/getpeername4 and cgroup/getpeername6 on pod cgroups: an app that asks whom its
 * captured socket is connected to hears the destination it dialled, not the proxy's
 * loopback listener, the same answer it gets under nftables REDIRECT (conntrack NAT).
 */
#include "maps.h"

SEC("cgroup/getpeername4")
int smesh_peername4(struct bpf_sock_addr *ctx)
{
	struct smesh_orig *orig = bpf_sk_storage_get(&smesh_sk_orig, ctx->sk, 0, 0);

	if (orig && orig->family == SMESH_AF_INET) {
		ctx->user_ip4 = ((const __u32 *)orig->addr)[3];
		ctx->user_port = bpf_htons(orig->port);
	}
	return 1;
}

SEC("cgroup/getpeername6")
int smesh_peername6(struct bpf_sock_addr *ctx)
{
	struct smesh_orig *orig = bpf_sk_storage_get(&smesh_sk_orig, ctx->sk, 0, 0);
	const __u32 *a;

	if (!orig)
		return 1;
	a = (const __u32 *)orig->addr;
	ctx->user_ip6[0] = a[0];
	ctx->user_ip6[1] = a[1];
	ctx->user_ip6[2] = a[2];
	ctx->user_ip6[3] = a[3];
	ctx->user_port = bpf_htons(orig->port);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
