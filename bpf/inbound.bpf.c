// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup_skb/ingress on pod cgroups: with SMESH_F_REFUSE_PLAINTEXT, a meshed pod's apps
 * take new connections only from inside the pod, which is where the agent delivers what
 * it received over mutual TLS. A handshake packet for one of the apps' listening sockets
 * that arrives on any interface but loopback is plaintext from outside the mesh: dropped
 * and counted. The agent's own tunnel listener belongs to the agent's cgroup, not the
 * pod's, so this never sees it; packets of established connections (the replies to the
 * apps' own outbound connections among them) are left alone. Listening ports named in
 * smesh_plain_ports (health probes from the node, say) still take plaintext.
 */
#include "maps.h"

#define SMESH_LOOPBACK_IFINDEX 1 /* lo is interface 1 in every network namespace */

SEC("cgroup_skb/ingress")
int smesh_inbound(struct __sk_buff *skb)
{
	struct smesh_config *cfg = smesh_get_config();
	struct bpf_sock *sk = skb->sk;
	struct smesh_pod *pod;
	__u64 cookie;
	__u16 port;

	if (!cfg || !(cfg->flags & SMESH_F_REFUSE_PLAINTEXT) || !sk)
		return 1;
	if (sk->state != BPF_TCP_LISTEN || skb->ingress_ifindex == SMESH_LOOPBACK_IFINDEX)
		return 1;
	port = sk->src_port;
	if (bpf_map_lookup_elem(&smesh_plain_ports, &port))
		return 1;
	cookie = bpf_get_netns_cookie(skb);
	pod = bpf_map_lookup_elem(&smesh_pods, &cookie);
	if (pod)
		smesh_count(pod->id, SMESH_COUNTER_PLAINTEXT_REFUSED);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
