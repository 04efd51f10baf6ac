/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The ABI between smesh's BPF programs and its Python loader: limits, enums and the
 * structs stored in maps or sent on the ring buffer. Python's twins live in
 * src/smesh/capture/abi.py; tests/unit/capture/test_abi.py checks them against the BTF
 * of the compiled objects, so change both together.
 *
 * Addresses are always 16 bytes in network order: IPv6 as is, IPv4 as the v4-mapped
 * IPv6 address ::ffff:a.b.c.d. One representation keeps v4, v6 and dual-stack sockets
 * (a v6 socket connecting to ::ffff:a.b.c.d) on the same code path. Ports are stored in
 * host byte order.
 */
#ifndef SMESH_H
#define SMESH_H

#include <linux/types.h>

#define SMESH_MAX_PODS 4096          /* pod slots per node; slot 0 counts unknown netns */
#define SMESH_MAX_CIDRS 256          /* mesh CIDRs, v4 and v6 together */
#define SMESH_MAX_PORTS 256          /* excluded destination ports */
#define SMESH_MAX_TRACKED 65536      /* default size of the connection map */
#define SMESH_EVENTS_BYTES (256 * 1024)
#define SMESH_POD_KEY_LEN 128
#define SMESH_POD_NAME_LEN 128

/* smesh_config.flags */
#define SMESH_F_CONFIGURED 1         /* nothing is captured until the loader says so */
#define SMESH_F_EVENTS_PASSTHROUGH 2 /* also send events for connects left alone */
#define SMESH_F_REFUSE_PLAINTEXT 4   /* pods take new connections only from inside (the agent) */

/* smesh_pod.flags */
#define SMESH_POD_HAS_IP4 1
#define SMESH_POD_HAS_IP6 2

enum smesh_decision {
	SMESH_DECISION_CAPTURED = 1,
	SMESH_DECISION_PASS_NOT_MESH = 2,
	SMESH_DECISION_PASS_PORT = 3,
	SMESH_DECISION_PASS_LOOPBACK = 4,
	SMESH_DECISION_PASS_SELF = 5,
	SMESH_DECISION_DENIED = 6,    /* no socket storage: connect refused (fail closed) */
	SMESH_DECISION_MAP_FULL = 7,  /* connection map full: the proxy will fail closed */
};

enum smesh_counter {
	SMESH_COUNTER_CAPTURED,
	SMESH_COUNTER_PASS_NOT_MESH,
	SMESH_COUNTER_PASS_PORT,
	SMESH_COUNTER_PASS_LOOPBACK,
	SMESH_COUNTER_PASS_SELF,
	SMESH_COUNTER_PASS_NOT_TCP,
	SMESH_COUNTER_DENIED,
	SMESH_COUNTER_MAP_FULL,
	SMESH_COUNTER_TRACKED,       /* sockops stored the original destination */
	SMESH_COUNTER_HANDED_OVER,   /* the proxy's accepted socket took it over */
	SMESH_COUNTER_EVENTS_DROPPED,
	SMESH_COUNTER_PLAINTEXT_REFUSED, /* connection attempts from outside the pod dropped */
	SMESH_COUNTER_COUNT,
};

/* smesh_config[0]: where captured connects go. */
struct smesh_config {
	__u8 listener6[16];
	__u8 listener4[4];
	__u16 port4;
	__u16 port6;
	__u32 flags;
	__u32 _pad;
};

/* smesh_cidrs key: an LPM prefix over the 16-byte address (IPv4 CIDRs get 96 + len). */
struct smesh_cidr_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* smesh_pods[netns cookie]: a meshed pod. */
struct smesh_pod {
	__u8 ip4[16];
	__u8 ip6[16];
	__u32 id;
	__u32 flags;
};

/* smesh_pod_meta[pod id]: written and read by user space only (names for trace/status). */
struct smesh_pod_meta {
	__u64 netns_cookie;
	__u64 cgroup_id;
	char key[SMESH_POD_KEY_LEN];
	char name[SMESH_POD_NAME_LEN];
};

/* The original destination of a captured connect (socket storage and smesh_conns). */
struct smesh_orig {
	__u8 addr[16];
	__u16 port;
	__u8 family;                 /* AF_INET for IPv4 (also when v4-mapped), AF_INET6 */
	__u8 _pad;
	__u32 pod_id;
};

/* smesh_conns key: the client end of a captured connection, as the proxy sees its peer. */
struct smesh_conn_key {
	__u64 netns_cookie;
	__u8 addr[16];
	__u16 port;
	__u16 _pad0;
	__u32 _pad1;
};

struct smesh_counters {
	__u64 values[SMESH_COUNTER_COUNT];
};

/* One ring-buffer record per decided connect. */
struct smesh_event {
	__u64 ts_ns;                 /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u64 socket_cookie;
	__u8 addr[16];
	__u32 pod_id;
	__u32 pid;
	__u16 port;
	__u8 family;
	__u8 decision;
	__u32 _pad;
	char comm[16];
};

#endif /* SMESH_H */
