/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The maps every smesh object shares, and the small helpers around them. Each object
 * declares all maps; the loader pins them under the node's pin directory, so every
 * object (and a restarted loader) uses the same map instances.
 */
#ifndef SMESH_MAPS_H
#define SMESH_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "smesh.h"

/* Constants of the socket API that plain uapi headers for the BPF target do not carry. */
#define SMESH_AF_INET 2
#define SMESH_AF_INET6 10
#define SMESH_SOCK_STREAM 1
#define SMESH_IPPROTO_TCP 6
#define SMESH_SOL_IP 0
#define SMESH_SOL_IPV6 41
#define SMESH_SO_ORIGINAL_DST 80
#define SMESH_TCP_CLOSE 7

/*
 * Read a context or socket field exactly once, at this point, with its constant offset.
 * Otherwise clang may merge loads from both arms of a branch into one load through a
 * computed pointer, and the verifier refuses pointer arithmetic on contexts and sockets.
 */
#define SMESH_READ(field) (*(volatile typeof(field) *)&(field))

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct smesh_config);
} smesh_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, SMESH_MAX_CIDRS);
	__type(key, struct smesh_cidr_key);
	__type(value, __u8);
} smesh_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SMESH_MAX_PORTS);
	__type(key, __u16);
	__type(value, __u8);
} smesh_ports SEC(".maps");

/* Listening ports of meshed apps that still take plaintext from outside the pod. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SMESH_MAX_PORTS);
	__type(key, __u16);
	__type(value, __u8);
} smesh_plain_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SMESH_MAX_PODS);
	__type(key, __u64);
	__type(value, struct smesh_pod);
} smesh_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, SMESH_MAX_PODS);
	__type(key, __u32);
	__type(value, struct smesh_pod_meta);
} smesh_pod_meta SEC(".maps");

/* Freed with the socket: a failed or abandoned connect leaves nothing behind. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct smesh_orig);
} smesh_sk_orig SEC(".maps");

/* A plain hash, not LRU: eviction would hand a live connection someone else's entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SMESH_MAX_TRACKED);
	__type(key, struct smesh_conn_key);
	__type(value, struct smesh_orig);
} smesh_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SMESH_MAX_PODS);
	__type(key, __u32);
	__type(value, struct smesh_counters);
} smesh_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SMESH_EVENTS_BYTES);
} smesh_events SEC(".maps");

/*
 * Events only ever exist behind a ring-buffer pointer, and clang describes in BTF only the
 * types that globals, maps and functions use. This read-only global puts struct
 * smesh_event in every object's BTF, so the loader's tests can check its Python twin.
 */
const volatile struct smesh_event smesh_event_layout = {};

static __always_inline struct smesh_config *smesh_get_config(void)
{
	__u32 zero = 0;
	struct smesh_config *cfg = bpf_map_lookup_elem(&smesh_config, &zero);

	return cfg && (cfg->flags & SMESH_F_CONFIGURED) ? cfg : 0;
}

static __always_inline void smesh_count(__u32 pod_id, int counter)
{
	struct smesh_counters *c = bpf_map_lookup_elem(&smesh_counters, &pod_id);

	if (c && counter >= 0 && counter < SMESH_COUNTER_COUNT)
		__sync_fetch_and_add(&c->values[counter], 1);
}

/* 16-byte address from an IPv4 address in network order (::ffff:a.b.c.d). */
static __always_inline void smesh_addr_v4(__u8 *addr, __u32 ip4)
{
	__u32 *w = (__u32 *)addr;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0xffff);
	w[3] = ip4;
}

static __always_inline void smesh_addr_v6(__u8 *addr, const __u32 *ip6)
{
	__u32 *w = (__u32 *)addr;

	w[0] = ip6[0];
	w[1] = ip6[1];
	w[2] = ip6[2];
	w[3] = ip6[3];
}

static __always_inline int smesh_addr_is_v4(const __u8 *addr)
{
	const __u32 *w = (const __u32 *)addr;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

static __always_inline int smesh_addr_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* with_task: the program runs in the connecting task's context (not in softirq). */
static __always_inline void smesh_emit(__u64 socket_cookie, __u32 pod_id, const __u8 *addr,
				       __u16 port, __u8 family, __u8 decision, int with_task)
{
	struct smesh_event *e = bpf_ringbuf_reserve(&smesh_events, sizeof(*e), 0);

	if (!e) {
		smesh_count(pod_id, SMESH_COUNTER_EVENTS_DROPPED);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->socket_cookie = socket_cookie;
	smesh_addr_v6(e->addr, (const __u32 *)addr);
	e->pod_id = pod_id;
	e->pid = with_task ? bpf_get_current_pid_tgid() >> 32 : 0;
	e->port = port;
	e->family = family;
	e->decision = decision;
	e->_pad = 0;
	__builtin_memset(e->comm, 0, sizeof(e->comm));
	if (with_task)
		bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

#endif /* SMESH_MAPS_H */
