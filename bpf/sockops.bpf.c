// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Carry the original destination from the app's socket to the proxy's accepted socket.
 *
 * smesh_ops_pod (pod cgroups): when a captured connect is established, file its
 * original destination under (netns cookie, client address, client port) in smesh_conns,
 * and drop that entry when the socket closes.
 *
 * smesh_ops_proxy (the proxy's cgroup): when the proxy's listener completes the
 * handshake of such a connection, move the entry into the accepted socket's storage.
 * From then on it lives exactly as long as that socket, even if the app closes at once
 * and the proxy calls accept() much later.
 */
#include "maps.h"

/* The key of one end of the connection: the client's (local) or the proxy's peer. */
static __always_inline void conn_key(struct bpf_sock_ops *skops, struct smesh_conn_key *key,
				     int local)
{
	__u32 family = SMESH_READ(skops->family);
	__u32 ip4, ip6[4];

	if (local) {
		ip4 = SMESH_READ(skops->local_ip4);
		ip6[0] = SMESH_READ(skops->local_ip6[0]);
		ip6[1] = SMESH_READ(skops->local_ip6[1]);
		ip6[2] = SMESH_READ(skops->local_ip6[2]);
		ip6[3] = SMESH_READ(skops->local_ip6[3]);
		key->port = SMESH_READ(skops->local_port);
	} else {
		ip4 = SMESH_READ(skops->remote_ip4);
		ip6[0] = SMESH_READ(skops->remote_ip6[0]);
		ip6[1] = SMESH_READ(skops->remote_ip6[1]);
		ip6[2] = SMESH_READ(skops->remote_ip6[2]);
		ip6[3] = SMESH_READ(skops->remote_ip6[3]);
		key->port = bpf_ntohl(SMESH_READ(skops->remote_port));
	}
	key->netns_cookie = bpf_get_netns_cookie(skops);
	if (family == SMESH_AF_INET)
		smesh_addr_v4(key->addr, ip4);
	else
		smesh_addr_v6(key->addr, ip6);
	key->_pad0 = 0;
	key->_pad1 = 0;
}

SEC("sockops")
int smesh_ops_pod(struct bpf_sock_ops *skops)
{
	struct smesh_conn_key key;
	struct smesh_orig *orig;
	struct bpf_sock *sk;

	__u32 op = skops->op;

	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB)
		return 1;
	conn_key(skops, &key, 1);
	switch (op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		sk = skops->sk;
		if (!sk)
			return 1;
		orig = bpf_sk_storage_get(&smesh_sk_orig, sk, 0, 0);
		if (!orig)
			return 1;
		if (bpf_map_update_elem(&smesh_conns, &key, orig, BPF_ANY)) {
			smesh_count(orig->pod_id, SMESH_COUNTER_MAP_FULL);
			smesh_emit(0, orig->pod_id, orig->addr, orig->port, orig->family,
				   SMESH_DECISION_MAP_FULL, 0);
			return 1;
		}
		smesh_count(orig->pod_id, SMESH_COUNTER_TRACKED);
		bpf_sock_ops_cb_flags_set(skops,
					  skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == SMESH_TCP_CLOSE)
			bpf_map_delete_elem(&smesh_conns, &key);
		break;
	}
	return 1;
}

SEC("sockops")
int smesh_ops_proxy(struct bpf_sock_ops *skops)
{
	struct smesh_config *cfg;
	struct smesh_conn_key key;
	struct smesh_orig *found;
	struct smesh_orig copy;
	struct bpf_sock *sk;
	__u32 port;

	if (skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	cfg = smesh_get_config();
	sk = skops->sk;
	if (!cfg || !sk)
		return 1;
	port = skops->family == SMESH_AF_INET ? cfg->port4 : cfg->port6;
	if (skops->local_port != port && skops->local_port != cfg->port4)
		return 1;
	conn_key(skops, &key, 0);
	found = bpf_map_lookup_elem(&smesh_conns, &key);
	if (!found)
		return 1;
	copy = *found;
	if (bpf_sk_storage_get(&smesh_sk_orig, sk, &copy, BPF_SK_STORAGE_GET_F_CREATE)) {
		bpf_map_delete_elem(&smesh_conns, &key);
		smesh_count(copy.pod_id, SMESH_COUNTER_HANDED_OVER);
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
