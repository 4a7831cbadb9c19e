// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// ringflow meter, `bpf` capture tier: every TCP and UDP socket's bytes and packets each way,
// its owner at birth, and its final counters at its end.
//
// Programs (all attached by the meter to the cgroup v2 root through links the meter's process
// owns, so nothing outlives it):
//   rf_egress, rf_ingress   cgroup_skb: count each packet into `flows`, keyed by socket cookie
//                           (and, for UDP, the peer: an unconnected socket talks to many).
//   rf_sock_create          cgroup/sock_create: pid, tid, uid, cgroup id and name of the
//                           process creating a TCP or UDP socket, into `owners`.
//   rf_sock_ops             sockops: a TCP connection's role (which end connected) and its
//                           end (the state change to CLOSE, after its last packet); a
//                           listener's owner by port (at listen(2)), given to each socket it
//                           accepts.
//   rf_sock_release         cgroup/sock_release: a UDP socket's end; a TCP socket established
//                           before the meter started (no state callbacks) is marked released.
// Ends go to user space through the `events` ring buffer with the final counters and the owner;
// their map entries are deleted here. Every map is bounded: an insert into a full map is
// counted in `stats`, with what it would have counted, and never evicts another entry.
//
// Only stable UAPI structures (linux/bpf.h, the IP/TCP/UDP headers read from the packet):
// no kernel headers and no BTF relocations are needed where it runs. Layouts below are read by
// agent/src/source/bpf/wire.rs; change both together.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define AF_INET 2
#define AF_INET6 10

#define FLOW_INITIATOR 1      // this socket opened the flow (TCP: sent the SYN; UDP: sent first)
#define FLOW_CLOSE_TRACKED 2  // TCP: the state callbacks tell this connection's end
#define FLOW_ROLE_KNOWN 4     // TCP: FLOW_INITIATOR is known (saw the SYN or the establishment)
#define FLOW_ENDED 8          // its end could not be told (ring buffer full): the next sweep ends it

#define EV_CLOSED 1           // a TCP connection reached CLOSE: final counters
#define EV_RELEASED 2         // a socket was released (closed by its process)

#define EVENT_HAS_FLOW 1      // the event carries the flow's final key and counters
#define EVENT_HAS_OWNER 2     // the event carries the owner
#define EVENT_MORE_FLOWS 4    // the socket may have other flows still in the map

// 32 bytes. TCP: remote is all zero (one peer per socket). Addresses are IPv6 or IPv4-mapped.
struct flow_key {
	__u64 cookie;
	__u8 remote[16];
	__u16 remote_port;
	__u8 proto;
	__u8 pad[5];
};

// 104 bytes. Counters are added atomically; times are CLOCK_MONOTONIC nanoseconds.
struct flow_value {
	__u64 payload_out;
	__u64 payload_in;
	__u64 packets_out;
	__u64 packets_in;
	__u64 ip_bytes_out;
	__u64 ip_bytes_in;
	__u64 first_ns;
	__u64 last_ns;
	__u8 local[16];
	__u8 remote[16];
	__u16 local_port;
	__u16 remote_port;
	__u8 flags;
	__u8 pad[3];
};

// 72 bytes. last_remote*, flows: the socket's last flow (UDP), so its end can close it here.
struct owner {
	__u64 cgroup_id;
	__u64 created_ns;
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 flows;
	char comm[16];
	__u8 last_remote[16];
	__u16 last_remote_port;
	__u8 pad[6];
};

// 32 + 104 + 72 + 16 = 224 bytes.
struct event {
	struct flow_key key;
	struct flow_value value;
	struct owner owner;
	__u64 at_ns;
	__u8 kind;
	__u8 has;
	__u8 pad[6];
};

// Counted by every CPU; user space sums them.
struct stats {
	__u64 flows_full;          // packets of flows not tracked: the flow map was full
	__u64 flows_full_bytes;    // their payload bytes
	__u64 owners_full;         // sockets whose owner was not kept: the owner map was full
	__u64 events_lost;         // ends not told: the ring buffer was full (the sweep ends them)
	__u64 unparsed;            // packets of a TCP/UDP socket whose headers could not be read
	__u64 pad[3];
};

// Sizes are set by the meter before loading (sources.bpf.max_flows, sources.bpf.ring_bytes).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct owner);
} owners SEC(".maps");

// A listening socket's owner by its port, for the sockets it accepts: the kernel creates those,
// so no sock_create program sees them. Sized by the meter (max_flows / 16).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct owner);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stats);
} stats SEC(".maps");

static __always_inline struct stats *stats_here(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&stats, &zero);
}

// Where a packet's headers put it: addresses as IPv6 (IPv4 mapped), ports in host order.
struct parsed {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u32 headers;   // IP + transport header bytes of this packet
	__u32 jumbo;     // of them, an IPv6 jumbo header (BIG TCP) that its segments do not carry
};

static __always_inline void map_v4(__u8 *out, __u32 addr_be)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &addr_be, 4);
}

// The headers are read in place (direct packet access: the packet starts at its IP header in
// cgroup_skb programs, and the headers are in the linear part), else copied out. In place only
// at constant offsets: a variable one needs CAP_PERFMON (pointer arithmetic), which the meter
// does not ask for.
static __always_inline int load(struct __sk_buff *skb, const __u32 off, void *to, __u32 len, void **at)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	if (data + off + len <= data_end) {
		*at = data + off;
		return 0;
	}
	if (bpf_skb_load_bytes(skb, off, to, len))
		return -1;
	*at = to;
	return 0;
}

// The transport header at `l4`: in place at 20 (IPv4 without options) or 40 (IPv6 without
// extension headers), the constant offsets `load` may read in place; else copied.
static __always_inline int load_l4(struct __sk_buff *skb, __u32 l4, void *to, const __u32 len, void **at)
{
	if (l4 == 20)
		return load(skb, 20, to, len, at);
	if (l4 == 40)
		return load(skb, 40, to, len, at);
	*at = to;
	return bpf_skb_load_bytes(skb, l4, to, len) ? -1 : 0;
}

struct ipv4_header {
	__u8 vihl, tos;
	__u16 len, id, frag;
	__u8 ttl, proto;
	__u16 csum;
	__u32 saddr, daddr;
};

struct ipv6_header {
	__u32 vtcfl;
	__u16 len;
	__u8 next, hops;
	__u8 saddr[16], daddr[16];
};

struct tcp_header {
	__u16 sport, dport;
	__u32 seq, ack;
	__u8 doff, flags;
};

struct udp_header {
	__u16 sport, dport;
};

static __always_inline int parse(struct __sk_buff *skb, struct parsed *p)
{
	__u32 l4;
	void *at;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct ipv4_header copy, *ip;
		if (load(skb, 0, &copy, sizeof(copy), &at))
			return -1;
		ip = at;
		l4 = (ip->vihl & 0x0f) * 4;
		if (l4 < 20)
			return -1;
		p->proto = ip->proto;
		map_v4(p->src, ip->saddr);
		map_v4(p->dst, ip->daddr);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6_header copy, *ip6;
		if (load(skb, 0, &copy, sizeof(copy), &at))
			return -1;
		ip6 = at;
		l4 = 40;
		__u8 next = ip6->next;
		__u16 payload_len = ip6->len;
		__builtin_memcpy(p->src, ip6->saddr, 16);
		__builtin_memcpy(p->dst, ip6->daddr, 16);
		// Up to two extension headers before TCP/UDP: hop-by-hop (BIG TCP's jumbo payload
		// option on a super-packet over 64 KiB), routing, destination options.
#pragma unroll
		for (int i = 0; i < 2; i++) {
			if (next != 0 && next != 43 && next != 60)
				break;
			struct {
				__u8 next, len;
			} ext;
			if (bpf_skb_load_bytes(skb, l4, &ext, sizeof(ext)))
				return -1;
			__u32 size = ((__u32)ext.len + 1) * 8;
			if (next == 0 && payload_len == 0 && i == 0)
				p->jumbo = size;
			l4 += size;
			next = ext.next;
		}
		p->proto = next;
	} else {
		return -1;
	}
	if (l4 > 40 + 2 * 2048)
		return -1;
	void *l4_at;
	if (p->proto == IPPROTO_TCP) {
		struct tcp_header copy, *tcp;
		if (load_l4(skb, l4, &copy, sizeof(copy), &l4_at))
			return -1;
		tcp = l4_at;
		p->sport = bpf_ntohs(tcp->sport);
		p->dport = bpf_ntohs(tcp->dport);
		p->tcp_flags = tcp->flags;
		p->headers = l4 + (tcp->doff >> 4) * 4;
	} else if (p->proto == IPPROTO_UDP) {
		struct udp_header copy, *udp;
		if (load_l4(skb, l4, &copy, sizeof(copy), &l4_at))
			return -1;
		udp = l4_at;
		p->sport = bpf_ntohs(udp->sport);
		p->dport = bpf_ntohs(udp->dport);
		p->tcp_flags = 0;
		p->headers = l4 + 8;
	} else {
		return -1;
	}
	return 0;
}

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

static __always_inline void count(struct __sk_buff *skb, int egress)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return;   // request and TIME_WAIT sockets: handshakes and the last ACK
	if (sk->protocol != IPPROTO_TCP && sk->protocol != IPPROTO_UDP)
		return;
	if (sk->protocol == IPPROTO_TCP && sk->state == BPF_TCP_LISTEN)
		return;   // a SYN, or the ACK that completes a handshake: not yet a connection

	struct parsed p = {};
	if (parse(skb, &p) || p.proto != sk->protocol) {
		struct stats *s = stats_here();
		if (s)
			s->unparsed += 1;
		return;
	}
	__u32 segs = skb->gso_segs ? skb->gso_segs : 1;
	__u64 len = skb->len;
	__u64 payload = len > p.headers ? len - p.headers : 0;
	__u64 ip_bytes = payload + (__u64)segs * (p.headers - p.jumbo);

	struct flow_key key = {};
	key.cookie = bpf_get_socket_cookie(skb);
	key.proto = p.proto;
	__u8 *local = egress ? p.src : p.dst;
	__u8 *remote = egress ? p.dst : p.src;
	__u16 local_port = egress ? p.sport : p.dport;
	__u16 remote_port = egress ? p.dport : p.sport;
	if (p.proto == IPPROTO_UDP) {
		__builtin_memcpy(key.remote, remote, 16);
		key.remote_port = remote_port;
	}

	// The coarse clock (a tick's resolution, a few ms) costs a fraction of the precise one.
	__u64 now = bpf_ktime_get_coarse_ns();
	struct flow_value *v = bpf_map_lookup_elem(&flows, &key);
	// A TCP socket already in CLOSE (an RST sent after an abortive close) was ended: its
	// packets start no new flow that nothing would end.
	if (!v && p.proto == IPPROTO_TCP && sk->state == BPF_TCP_CLOSE)
		return;
	if (!v) {
		struct flow_value fresh = {};
		fresh.first_ns = now;
		__builtin_memcpy(fresh.local, local, 16);
		__builtin_memcpy(fresh.remote, remote, 16);
		fresh.local_port = local_port;
		fresh.remote_port = remote_port;
		if (p.proto == IPPROTO_TCP) {
			if (egress && (p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
				fresh.flags = FLOW_INITIATOR | FLOW_ROLE_KNOWN;
		} else if (egress) {
			fresh.flags = FLOW_INITIATOR;
		}
		long err = bpf_map_update_elem(&flows, &key, &fresh, BPF_NOEXIST);
		if (err && err != -17 /* EEXIST: another CPU made it */) {
			struct stats *s = stats_here();
			if (s) {
				s->flows_full += segs;
				s->flows_full_bytes += payload;
			}
			return;
		}
		v = bpf_map_lookup_elem(&flows, &key);
		if (!v)
			return;
		if (!err && p.proto == IPPROTO_UDP) {
			// Remember the socket's last flow, so its release can end it here.
			struct owner *o = bpf_map_lookup_elem(&owners, &key.cookie);
			if (o) {
				__builtin_memcpy(o->last_remote, remote, 16);
				o->last_remote_port = remote_port;
				o->flows += 1;
			}
		}
	}
	if (egress) {
		__sync_fetch_and_add(&v->payload_out, payload);
		__sync_fetch_and_add(&v->packets_out, segs);
		__sync_fetch_and_add(&v->ip_bytes_out, ip_bytes);
	} else {
		__sync_fetch_and_add(&v->payload_in, payload);
		__sync_fetch_and_add(&v->packets_in, segs);
		__sync_fetch_and_add(&v->ip_bytes_in, ip_bytes);
	}
	v->last_ns = now;
}

SEC("cgroup_skb/egress")
int rf_egress(struct __sk_buff *skb)
{
	count(skb, 1);
	return 1;
}

SEC("cgroup_skb/ingress")
int rf_ingress(struct __sk_buff *skb)
{
	count(skb, 0);
	return 1;
}

SEC("cgroup/sock_create")
int rf_sock_create(struct bpf_sock *sk)
{
	if (sk->protocol != IPPROTO_TCP && sk->protocol != IPPROTO_UDP)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct owner o = {};
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	o.pid = pid_tgid >> 32;
	o.tid = (__u32)pid_tgid;
	o.uid = (__u32)bpf_get_current_uid_gid();
	o.cgroup_id = bpf_get_current_cgroup_id();
	o.created_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(o.comm, sizeof(o.comm));
	if (bpf_map_update_elem(&owners, &cookie, &o, BPF_ANY)) {
		struct stats *s = stats_here();
		if (s)
			s->owners_full += 1;
	}
	return 1;
}

// Sends the end of socket `cookie`: its owner (deleted here) and, when `key` names a flow, that
// flow's final counters (deleted here). `more`: the socket may have other flows in the map. If
// the ring buffer is full the loss is counted, the owner is deleted all the same (nothing else
// would), and the flow is marked for the next sweep to end.
static __always_inline void tell_end(__u64 cookie, __u8 kind, struct flow_key *key, int has_key, int more)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(struct event), 0);
	if (!e) {
		struct stats *s = stats_here();
		if (s)
			s->events_lost += 1;
		bpf_map_delete_elem(&owners, &cookie);
		if (has_key) {
			struct flow_value *v = bpf_map_lookup_elem(&flows, key);
			if (v)
				v->flags |= FLOW_ENDED;
		}
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = kind;
	e->at_ns = bpf_ktime_get_ns();
	e->key.cookie = cookie;
	if (more)
		e->has |= EVENT_MORE_FLOWS;
	struct owner *o = bpf_map_lookup_elem(&owners, &cookie);
	if (o) {
		__builtin_memcpy(&e->owner, o, sizeof(*o));
		e->has |= EVENT_HAS_OWNER;
		bpf_map_delete_elem(&owners, &cookie);
	}
	if (has_key) {
		struct flow_value *v = bpf_map_lookup_elem(&flows, key);
		if (v) {
			__builtin_memcpy(&e->key, key, sizeof(*key));
			__builtin_memcpy(&e->value, v, sizeof(*v));
			e->has |= EVENT_HAS_FLOW;
			bpf_map_delete_elem(&flows, key);
		}
	}
	bpf_ringbuf_submit(e, 0);
}

SEC("sockops")
int rf_sock_ops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	if (op == BPF_SOCK_OPS_TCP_LISTEN_CB) {
		// listen(2), in the server's process: its owner stands for the sockets it accepts.
		__u64 cookie = bpf_get_socket_cookie(skops);
		__u32 port = skops->local_port;
		struct owner *o = bpf_map_lookup_elem(&owners, &cookie);
		if (o && bpf_map_update_elem(&listeners, &port, o, BPF_ANY)) {
			struct stats *s = stats_here();
			if (s)
				s->owners_full += 1;
		}
		return 1;
	}
	if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		struct flow_key key = {};
		key.cookie = bpf_get_socket_cookie(skops);
		key.proto = IPPROTO_TCP;
		if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
			// An accepted socket takes its listener's owner.
			__u32 port = skops->local_port;
			struct owner *l = bpf_map_lookup_elem(&listeners, &port);
			if (l) {
				struct owner o = *l;
				o.flows = 0;
				bpf_map_update_elem(&owners, &key.cookie, &o, BPF_NOEXIST);
			}
		}
		__u8 role = FLOW_CLOSE_TRACKED | FLOW_ROLE_KNOWN;
		if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
			role |= FLOW_INITIATOR;
		struct flow_value *v = bpf_map_lookup_elem(&flows, &key);
		if (v) {
			v->flags |= role;
			return 1;
		}
		// An accepted socket has sent nothing yet: its flow starts here, with its role.
		struct flow_value fresh = {};
		fresh.first_ns = bpf_ktime_get_ns();
		fresh.last_ns = fresh.first_ns;
		fresh.flags = role;
		fresh.local_port = (__u16)skops->local_port;
		fresh.remote_port = (__u16)bpf_ntohl(skops->remote_port);
		if (skops->family == AF_INET) {
			map_v4(fresh.local, skops->local_ip4);
			map_v4(fresh.remote, skops->remote_ip4);
		} else {
			// One 4-byte load per word: the verifier refuses wider loads of these fields.
#pragma unroll
			for (int i = 0; i < 4; i++) {
				__u32 l = *(volatile __u32 *)&skops->local_ip6[i];
				__u32 r = *(volatile __u32 *)&skops->remote_ip6[i];
				__builtin_memcpy(fresh.local + 4 * i, &l, 4);
				__builtin_memcpy(fresh.remote + 4 * i, &r, 4);
			}
		}
		if (bpf_map_update_elem(&flows, &key, &fresh, BPF_NOEXIST) == 0)
			return 1;
		v = bpf_map_lookup_elem(&flows, &key);
		if (v)
			v->flags |= role;
		return 1;
	}
	if (op == BPF_SOCK_OPS_STATE_CB && skops->args[1] == BPF_TCP_CLOSE) {
		struct flow_key key = {};
		key.cookie = bpf_get_socket_cookie(skops);
		key.proto = IPPROTO_TCP;
		tell_end(key.cookie, EV_CLOSED, &key, 1, 0);
	}
	return 1;
}

SEC("cgroup/sock_release")
int rf_sock_release(struct bpf_sock *sk)
{
	if (sk->protocol != IPPROTO_TCP && sk->protocol != IPPROTO_UDP)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct flow_key key = {};
	key.cookie = cookie;
	key.proto = sk->protocol;
	if (sk->protocol == IPPROTO_TCP) {
		struct flow_value *v = bpf_map_lookup_elem(&flows, &key);
		if (v && (v->flags & FLOW_CLOSE_TRACKED))
			return 1;   // its state change to CLOSE tells its end, after its last packet
		// Never established, or established before the meter: the FIN may still follow, so
		// user space ends the flow once it is quiet.
		tell_end(cookie, EV_RELEASED, &key, 0, v != 0);
		return 1;
	}
	// UDP: after its release a socket sends nothing more. Its last flow ends here; any others
	// (an unconnected socket that talked to several peers) end at user space's next sweep.
	struct owner *o = bpf_map_lookup_elem(&owners, &cookie);
	int has_key = 0;
	// Without an owner (a socket older than the meter) its flows are not known here.
	int more = !o || o->flows > 1;
	if (o && o->flows >= 1) {
		__builtin_memcpy(key.remote, o->last_remote, 16);
		key.remote_port = o->last_remote_port;
		has_key = 1;
	}
	tell_end(cookie, EV_RELEASED, &key, has_key, more);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
