// SPDX-License-Identifier: Apache-2.0
/*
 * smesh_native: a candidate native hot path for smesh's data plane (issue 23), raced by
 * `smesh bench` as `model-native`. Not part of the agent.
 *
 * It owns only the per-byte loop: one epoll thread (the GIL released) that runs the TLS
 * 1.3 handshake and then relays both directions between an app socket and a tunnel
 * socket, with OpenSSL over memory BIOs so a 256 KiB batch leaves in one send, as the
 * Python relay (src/smesh/dataplane/relay.py) does. Python keeps every decision: it
 * accepts and connects, hands the tunnel socket over (open), is told the peer's
 * certificate once the handshake is done, and answers attach (relay to this app socket)
 * or reject (reset). Python calls and the thread meet in two queues under one mutex,
 * each with an eventfd: commands wake the thread, events wake Python's event loop.
 *
 * Semantics follow the Python relay: an app's EOF becomes close_notify plus a TCP
 * half-close; the peer's close_notify becomes an EOF for the app; a reset on either side,
 * or a tunnel that ends without close_notify, resets both sides; a direction stops
 * reading while its previous batch is not yet sent (backpressure). The thread owns
 * every descriptor it was given and closes each exactly once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define BATCH (256 * 1024)
#define RECVS_PER_TURN 4 /* per direction and wake-up: other connections get their turn */

enum state { HANDSHAKE, DECIDE, RELAY };
enum kind { EV_HANDSHAKE, EV_FAILED, EV_DONE };
enum cmd_kind { CMD_OPEN, CMD_ATTACH, CMD_REJECT };

struct end {
	struct conn *conn;
	int fd;
	uint32_t want; /* the events registered with epoll; 0: not registered */
};

struct conn {
	long id;
	enum state state;
	SSL *ssl;
	BIO *rbio, *wbio; /* owned by ssl */
	struct end net, app;
	char *up_pend; /* ciphertext not yet sent to the tunnel */
	size_t up_len, up_off;
	char *down_pend; /* plaintext not yet sent to the app */
	size_t down_len, down_off;
	bool app_eof, shut_queued, up_done, peer_eof, down_done, finished;
	unsigned long long up_bytes, down_bytes;
	struct conn *next;
};

struct event {
	enum kind kind;
	long id;
	char *data;
	size_t len;
	unsigned long long up, down;
	struct event *next;
};

struct cmd {
	enum cmd_kind kind;
	long id;
	int fd;
	struct cmd *next;
};

static struct {
	bool started;
	int server_side;
	SSL_CTX *ctx;
	int epfd, cmd_fd, ev_fd;
	pthread_t thread;
	pthread_mutex_t lock;
	struct cmd *cmds, *cmds_tail;
	struct event *events, *events_tail;
	long next_id;
	struct conn *conns; /* touched only by the thread */
	char *scratch;      /* ciphertext or plaintext of one batch, thread only */
	char *plain;
	char *out; /* the records the TLS object wrote for the connection being served */
	size_t out_len, out_cap;
	BIO_METHOD *out_method;
} g = {.lock = PTHREAD_MUTEX_INITIALIZER, .epfd = -1, .cmd_fd = -1, .ev_fd = -1};

static void wake(int fd)
{
	uint64_t one = 1;
	ssize_t n = write(fd, &one, sizeof one);
	(void)n; /* an eventfd at its maximum is already readable */
}

/* -- events to Python ---------------------------------------------------------------- */

static void post(enum kind kind, struct conn *c, const char *data, size_t len)
{
	struct event *e = calloc(1, sizeof *e);
	if (!e)
		return;
	e->kind = kind;
	e->id = c->id;
	e->up = c->up_bytes;
	e->down = c->down_bytes;
	if (len) {
		e->data = malloc(len);
		if (e->data) {
			memcpy(e->data, data, len);
			e->len = len;
		}
	}
	pthread_mutex_lock(&g.lock);
	if (g.events_tail)
		g.events_tail->next = e;
	else
		g.events = e;
	g.events_tail = e;
	pthread_mutex_unlock(&g.lock);
	wake(g.ev_fd);
}

static void post_text(enum kind kind, struct conn *c, const char *text)
{
	post(kind, c, text, strlen(text));
}

/* -- descriptors ---------------------------------------------------------------------- */

static void watch(struct end *end, uint32_t want)
{
	if (end->fd < 0 || want == end->want)
		return;
	struct epoll_event ev = {.events = want, .data.ptr = end};
	int op = !end->want ? EPOLL_CTL_ADD : want ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;
	if (epoll_ctl(g.epfd, op, end->fd, &ev) == 0)
		end->want = want;
}

static void close_end(struct end *end, bool reset)
{
	if (end->fd < 0)
		return;
	watch(end, 0);
	if (reset) {
		struct linger lin = {1, 0};
		setsockopt(end->fd, SOL_SOCKET, SO_LINGER, &lin, sizeof lin);
	}
	close(end->fd);
	end->fd = -1;
}

static void finish(struct conn *c, enum kind kind, const char *detail, bool reset)
{
	if (c->finished)
		return;
	c->finished = true;
	g.out_len = 0; /* records for a connection that is gone */
	close_end(&c->net, reset);
	close_end(&c->app, reset);
	post_text(kind, c, detail);
}

static void fail(struct conn *c, const char *what, int err)
{
	char text[160];
	snprintf(text, sizeof text, "%s: %s", what, strerror(err));
	finish(c, c->state == RELAY ? EV_DONE : EV_FAILED, text, true);
}

/* A TLS error in the handshake has queued an alert for the peer (flushed before this):
 * a reset could discard it unread, so that connection ends with a FIN. */
static void fail_tls(struct conn *c, const char *what)
{
	char text[200];
	unsigned long err = ERR_get_error();
	snprintf(text, sizeof text, "%s: %s", what, err ? ERR_reason_error_string(err) : "?");
	ERR_clear_error();
	finish(c, c->state == RELAY ? EV_DONE : EV_FAILED, text, c->state == RELAY);
}

/*
 * The TLS object writes its records into one buffer shared by every connection (a BIO of
 * our own): each SSL_* call is followed by flush_tls before the thread serves another
 * connection, so a batch of records leaves in one send and a connection keeps only what
 * its socket did not take. (A memory BIO would keep the largest batch it ever held per
 * connection, and clears all of it on every reset.)
 */
static int out_write(BIO *bio, const char *data, int len)
{
	(void)bio;
	if (g.out_len + len > g.out_cap) {
		size_t cap = g.out_cap * 2 > g.out_len + len ? g.out_cap * 2 : g.out_len + len;
		char *grown = realloc(g.out, cap);
		if (!grown)
			return -1;
		g.out = grown;
		g.out_cap = cap;
	}
	memcpy(g.out + g.out_len, data, len);
	g.out_len += len;
	return len;
}

static long out_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
	(void)bio, (void)num, (void)ptr;
	return cmd == BIO_CTRL_FLUSH; /* the records are sent by flush_tls */
}

static bool keep(char **pend, size_t *len, size_t *off, const char *data, size_t n)
{
	size_t rest = *pend ? *len - *off : 0;
	char *kept = malloc(rest + n);
	if (!kept)
		return false;
	if (rest)
		memcpy(kept, *pend + *off, rest);
	memcpy(kept + rest, data, n);
	free(*pend);
	*pend = kept;
	*len = rest + n;
	*off = 0;
	return true;
}

/* Send what the TLS object wrote (after any earlier remainder); keep the rest. */
static bool flush_tls(struct conn *c)
{
	if (c->up_pend && g.out_len) { /* behind an unsent remainder: queue after it */
		bool ok = keep(&c->up_pend, &c->up_len, &c->up_off, g.out, g.out_len);
		g.out_len = 0;
		if (!ok) {
			fail(c, "tunnel", ENOMEM);
			return false;
		}
	}
	if (c->up_pend) {
		while (c->up_off < c->up_len) {
			ssize_t n = send(c->net.fd, c->up_pend + c->up_off, c->up_len - c->up_off,
					 MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					return true;
				fail(c, "tunnel", errno);
				return false;
			}
			c->up_off += n;
		}
		free(c->up_pend);
		c->up_pend = NULL;
		return true;
	}
	if (!g.out_len)
		return true;
	size_t len = g.out_len;
	g.out_len = 0;
	ssize_t n = send(c->net.fd, g.out, len, MSG_NOSIGNAL);
	if (n < 0 && errno != EAGAIN && errno != EINTR) {
		fail(c, "tunnel", errno);
		return false;
	}
	if (n < 0)
		n = 0;
	if ((size_t)n < len && !keep(&c->up_pend, &c->up_len, &c->up_off, g.out + n, len - n)) {
		fail(c, "tunnel", ENOMEM);
		return false;
	}
	return true;
}

/* Read the tunnel into the TLS object; false when nothing came (or the connection ended). */
static bool feed_tls(struct conn *c, bool *eof)
{
	ssize_t n = recv(c->net.fd, g.scratch, BATCH, 0);
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			fail(c, "tunnel", errno);
		return false;
	}
	if (n == 0) {
		*eof = true;
		return false;
	}
	BIO_write(c->rbio, g.scratch, (int)n);
	return true;
}

/* -- handshake ------------------------------------------------------------------------ */

static void handshake(struct conn *c)
{
	for (int turns = 0; turns < RECVS_PER_TURN; turns++) {
		ERR_clear_error();
		int r = SSL_do_handshake(c->ssl);
		if (!flush_tls(c))
			return;
		if (r == 1) {
			X509 *peer = SSL_get0_peer_certificate(c->ssl);
			unsigned char *der = NULL;
			int len = peer ? i2d_X509(peer, &der) : -1;
			if (len <= 0 || SSL_get_verify_result(c->ssl) != X509_V_OK) {
				OPENSSL_free(der);
				finish(c, EV_FAILED, "no verified peer certificate", true);
				return;
			}
			c->state = DECIDE;
			watch(&c->net, c->up_pend ? EPOLLOUT : 0);
			post(EV_HANDSHAKE, c, (const char *)der, len);
			OPENSSL_free(der);
			return;
		}
		int err = SSL_get_error(c->ssl, r);
		if (err != SSL_ERROR_WANT_READ) {
			/* The alert (e.g. certificate required) is in the write BIO: flushed above. */
			fail_tls(c, "TLS handshake");
			return;
		}
		bool eof = false;
		if (!feed_tls(c, &eof)) {
			if (eof)
				finish(c, EV_FAILED, "the peer closed during the handshake", true);
			else if (!c->finished)
				watch(&c->net, EPOLLIN | (c->up_pend ? EPOLLOUT : 0));
			return;
		}
	}
	watch(&c->net, EPOLLIN | (c->up_pend ? EPOLLOUT : 0));
}

/* -- relay ---------------------------------------------------------------------------- */

static void maybe_done(struct conn *c)
{
	if (c->up_done && c->down_done)
		finish(c, EV_DONE, "ok", false);
}

/* app → tunnel: recv a batch, seal it, send all its records at once. */
static void up(struct conn *c)
{
	if (!flush_tls(c))
		return;
	for (int turns = 0; !c->up_pend && !c->app_eof && turns < RECVS_PER_TURN; turns++) {
		ssize_t n = recv(c->app.fd, g.scratch, BATCH, 0);
		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR)
				fail(c, "app side", errno);
			return;
		}
		if (n == 0) {
			c->app_eof = true;
			break;
		}
		ERR_clear_error();
		if (SSL_write(c->ssl, g.scratch, (int)n) <= 0) {
			fail_tls(c, "TLS");
			return;
		}
		c->up_bytes += n;
		if (!flush_tls(c))
			return;
	}
	if (c->app_eof && !c->shut_queued) {
		ERR_clear_error();
		if (SSL_shutdown(c->ssl) < 0) { /* sends our close_notify; the peer's comes later */
			fail_tls(c, "TLS shutdown");
			return;
		}
		c->shut_queued = true;
		if (!flush_tls(c))
			return;
	}
	if (c->shut_queued && !c->up_pend && !c->up_done) {
		if (shutdown(c->net.fd, SHUT_WR) < 0) {
			fail(c, "tunnel", errno);
			return;
		}
		c->up_done = true;
	}
}

/* Send plaintext to the app; keep what the app did not take. */
static bool send_plain(struct conn *c, const char *data, size_t len)
{
	ssize_t n = send(c->app.fd, data, len, MSG_NOSIGNAL);
	if (n < 0 && errno != EAGAIN && errno != EINTR) {
		fail(c, "app side", errno);
		return false;
	}
	if (n < 0)
		n = 0;
	if ((size_t)n < len) {
		c->down_pend = malloc(len - n);
		if (!c->down_pend) {
			fail(c, "app side", ENOMEM);
			return false;
		}
		memcpy(c->down_pend, data + n, len - n);
		c->down_len = len - n;
		c->down_off = 0;
	}
	return true;
}

/* tunnel → app: open as many records as fit in a batch, send them in one call. */
static void down(struct conn *c)
{
	while (c->down_pend && c->down_off < c->down_len) {
		ssize_t n = send(c->app.fd, c->down_pend + c->down_off, c->down_len - c->down_off,
				 MSG_NOSIGNAL);
		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR)
				fail(c, "app side", errno);
			return;
		}
		c->down_off += n;
	}
	free(c->down_pend);
	c->down_pend = NULL;
	int recvs = 0;
	while (!c->peer_eof) {
		size_t filled = 0;
		int err = SSL_ERROR_NONE;
		while (filled < BATCH) {
			ERR_clear_error();
			int n = SSL_read(c->ssl, g.plain + filled, BATCH - filled);
			if (n <= 0) {
				err = SSL_get_error(c->ssl, n);
				break;
			}
			filled += n;
		}
		if (g.out_len && !flush_tls(c)) /* SSL_read answered something (a key update) */
			return;
		if (err == SSL_ERROR_ZERO_RETURN)
			c->peer_eof = true;
		else if (err != SSL_ERROR_NONE && err != SSL_ERROR_WANT_READ) {
			fail_tls(c, "TLS");
			return;
		}
		if (filled) {
			c->down_bytes += filled;
			if (!send_plain(c, g.plain, filled) || c->down_pend)
				return;
			continue;
		}
		if (c->peer_eof || recvs++ == RECVS_PER_TURN)
			break;
		bool eof = false;
		if (!feed_tls(c, &eof)) {
			if (eof)
				finish(c, EV_DONE, "the tunnel closed without close_notify", true);
			return;
		}
	}
	if (c->peer_eof && !c->down_pend && !c->down_done) {
		if (shutdown(c->app.fd, SHUT_WR) < 0) {
			fail(c, "app side", errno);
			return;
		}
		c->down_done = true;
	}
}

static void relay(struct conn *c)
{
	up(c);
	if (!c->finished)
		down(c);
	if (!c->finished)
		maybe_done(c);
	if (c->finished)
		return;
	watch(&c->app, (!c->up_pend && !c->app_eof ? EPOLLIN : 0) | (c->down_pend ? EPOLLOUT : 0));
	watch(&c->net, (!c->down_pend && !c->peer_eof ? EPOLLIN : 0) | (c->up_pend ? EPOLLOUT : 0));
}

/* -- the thread ----------------------------------------------------------------------- */

static void drop(struct conn *c)
{
	struct conn **p = &g.conns;
	while (*p && *p != c)
		p = &(*p)->next;
	if (*p)
		*p = c->next;
	SSL_free(c->ssl);
	free(c->up_pend);
	free(c->down_pend);
	free(c);
}

static struct conn *find(long id)
{
	for (struct conn *c = g.conns; c; c = c->next)
		if (c->id == id)
			return c;
	return NULL;
}

static void open_conn(long id, int fd)
{
	struct conn *c = calloc(1, sizeof *c);
	SSL *ssl = c ? SSL_new(g.ctx) : NULL;
	BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(g.out_method);
	if (wb)
		BIO_set_init(wb, 1);
	if (!c || !ssl || !rb || !wb) {
		struct conn stub = {.id = id, .net = {.fd = fd}, .app = {.fd = -1}};
		BIO_free(rb);
		BIO_free(wb);
		SSL_free(ssl);
		free(c);
		finish(&stub, EV_FAILED, "out of memory", true);
		return;
	}
	SSL_set_bio(ssl, rb, wb);
	if (g.server_side)
		SSL_set_accept_state(ssl);
	else
		SSL_set_connect_state(ssl);
	*c = (struct conn){.id = id, .ssl = ssl, .rbio = rb, .wbio = wb, .next = g.conns};
	c->net = (struct end){.conn = c, .fd = fd};
	c->app = (struct end){.conn = c, .fd = -1};
	g.conns = c;
	handshake(c);
}

static void run_command(struct cmd *cmd)
{
	if (cmd->kind == CMD_OPEN) {
		open_conn(cmd->id, cmd->fd);
		return;
	}
	struct conn *c = find(cmd->id);
	bool allowed = cmd->kind == CMD_ATTACH ? c && c->state == DECIDE : c && c->state != RELAY;
	if (!c || c->finished || !allowed) {
		if (cmd->fd >= 0) /* attach after the tunnel ended: the app socket is ours */
			close_end(&(struct end){.fd = cmd->fd}, true);
		return;
	}
	if (cmd->kind == CMD_REJECT) { /* refused, or the handshake took too long */
		finish(c, EV_FAILED, "rejected", true);
		return;
	}
	c->app.fd = cmd->fd;
	c->state = RELAY;
	relay(c); /* records that came along with the handshake, and the app's first bytes */
}

static void *loop(void *unused)
{
	(void)unused;
	struct epoll_event evs[64];
	struct epoll_event cmd_ev = {.events = EPOLLIN, .data.ptr = NULL};
	epoll_ctl(g.epfd, EPOLL_CTL_ADD, g.cmd_fd, &cmd_ev);
	for (;;) {
		int n = epoll_wait(g.epfd, evs, 64, -1);
		for (int i = 0; i < n; i++) {
			struct end *end = evs[i].data.ptr;
			if (!end) {
				uint64_t count;
				if (read(g.cmd_fd, &count, sizeof count) < 0 && errno != EAGAIN)
					return NULL;
				pthread_mutex_lock(&g.lock);
				struct cmd *cmd = g.cmds;
				g.cmds = g.cmds_tail = NULL;
				pthread_mutex_unlock(&g.lock);
				while (cmd) {
					struct cmd *next = cmd->next;
					run_command(cmd);
					free(cmd);
					cmd = next;
				}
				continue;
			}
			struct conn *c = end->conn;
			if (c->finished)
				continue;
			if (c->state == HANDSHAKE)
				handshake(c);
			else if (c->state == DECIDE && flush_tls(c))
				watch(&c->net, c->up_pend ? EPOLLOUT : 0); /* Python decides: read nothing */
			else
				relay(c);
		}
		/* Free finished connections only now: their ends may still be in evs[]. */
		for (struct conn *c = g.conns, *next; c; c = next) {
			next = c->next;
			if (c->finished)
				drop(c);
		}
	}
	return NULL;
}

/* -- Python API ----------------------------------------------------------------------- */

static PyObject *tls_error(const char *what)
{
	unsigned long err = ERR_get_error();
	ERR_clear_error();
	PyErr_Format(PyExc_OSError, "%s: %s", what, err ? ERR_reason_error_string(err) : "?");
	return NULL;
}

static PyObject *start(PyObject *self, PyObject *args)
{
	const char *cert, *key, *ca;
	int server_side;
	if (!PyArg_ParseTuple(args, "sssp", &cert, &key, &ca, &server_side))
		return NULL;
	if (g.started) {
		PyErr_SetString(PyExc_RuntimeError, "smesh_native is already started in this process");
		return NULL;
	}
	SSL_CTX *ctx = SSL_CTX_new(server_side ? TLS_server_method() : TLS_client_method());
	if (!ctx)
		return tls_error("SSL_CTX_new");
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1 || SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
		SSL_CTX_free(ctx);
		return tls_error("loading the certificate, key or CA");
	}
	/* The chain is checked here, against the CA; the identity in it is Python's call. */
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	g.scratch = malloc(BATCH);
	g.plain = malloc(BATCH);
	g.out_cap = BATCH + BATCH / 16;
	g.out = malloc(g.out_cap);
	g.out_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "smesh batch");
	if (!g.out || !g.out_method || !BIO_meth_set_write(g.out_method, out_write) ||
	    !BIO_meth_set_ctrl(g.out_method, out_ctrl)) {
		SSL_CTX_free(ctx);
		return PyErr_NoMemory();
	}
	g.epfd = epoll_create1(EPOLL_CLOEXEC);
	g.cmd_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	g.ev_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (!g.scratch || !g.plain || g.epfd < 0 || g.cmd_fd < 0 || g.ev_fd < 0) {
		SSL_CTX_free(ctx);
		return PyErr_SetFromErrno(PyExc_OSError);
	}
	g.ctx = ctx;
	g.server_side = server_side;
	if (pthread_create(&g.thread, NULL, loop, NULL) != 0) {
		PyErr_SetString(PyExc_OSError, "smesh_native: cannot start its thread");
		return NULL;
	}
	g.started = true;
	return PyLong_FromLong(g.ev_fd);
}

static PyObject *command(enum cmd_kind kind, long id, int fd)
{
	if (!g.started) {
		PyErr_SetString(PyExc_RuntimeError, "smesh_native.start() was not called");
		return NULL;
	}
	struct cmd *cmd = calloc(1, sizeof *cmd);
	if (!cmd)
		return PyErr_NoMemory();
	*cmd = (struct cmd){.kind = kind, .id = id, .fd = fd};
	pthread_mutex_lock(&g.lock);
	if (kind == CMD_OPEN)
		cmd->id = id = ++g.next_id;
	if (g.cmds_tail)
		g.cmds_tail->next = cmd;
	else
		g.cmds = cmd;
	g.cmds_tail = cmd;
	pthread_mutex_unlock(&g.lock);
	wake(g.cmd_fd);
	return PyLong_FromLong(id);
}

static PyObject *open_(PyObject *self, PyObject *args)
{
	int fd;
	if (!PyArg_ParseTuple(args, "i", &fd))
		return NULL;
	return command(CMD_OPEN, 0, fd);
}

static PyObject *attach(PyObject *self, PyObject *args)
{
	long id;
	int fd;
	if (!PyArg_ParseTuple(args, "li", &id, &fd))
		return NULL;
	PyObject *r = command(CMD_ATTACH, id, fd);
	if (!r)
		return NULL;
	Py_DECREF(r);
	Py_RETURN_NONE;
}

static PyObject *reject(PyObject *self, PyObject *args)
{
	long id;
	if (!PyArg_ParseTuple(args, "l", &id))
		return NULL;
	PyObject *r = command(CMD_REJECT, id, -1);
	if (!r)
		return NULL;
	Py_DECREF(r);
	Py_RETURN_NONE;
}

static PyObject *events(PyObject *self, PyObject *unused)
{
	uint64_t count;
	if (g.started && read(g.ev_fd, &count, sizeof count) < 0 && errno != EAGAIN)
		return PyErr_SetFromErrno(PyExc_OSError);
	pthread_mutex_lock(&g.lock);
	struct event *e = g.events;
	g.events = g.events_tail = NULL;
	pthread_mutex_unlock(&g.lock);
	static const char *const kinds[] = {"handshake", "failed", "done"};
	PyObject *list = PyList_New(0);
	for (struct event *next; e; e = next) {
		next = e->next;
		PyObject *item = NULL;
		if (list) {
			if (e->kind == EV_HANDSHAKE)
				item = Py_BuildValue("(lsy#KK)", e->id, kinds[e->kind], e->data,
						     (Py_ssize_t)e->len, e->up, e->down);
			else
				item = Py_BuildValue("(lss#KK)", e->id, kinds[e->kind], e->data,
						     (Py_ssize_t)e->len, e->up, e->down);
			if (!item || PyList_Append(list, item) < 0)
				Py_CLEAR(list);
			Py_XDECREF(item);
		}
		free(e->data);
		free(e);
	}
	return list;
}

static PyMethodDef methods[] = {
	{"start", start, METH_VARARGS,
	 "start(cert, key, ca, server_side) -> event fd: load the TLS material, start the thread"},
	{"open", open_, METH_VARARGS,
	 "open(fd) -> id: take a connected tunnel socket (ownership too) and run the handshake"},
	{"attach", attach, METH_VARARGS,
	 "attach(id, fd): the peer is accepted; relay between the tunnel and this app socket"},
	{"reject", reject, METH_VARARGS, "reject(id): the peer is refused; reset the tunnel"},
	{"events", events, METH_NOARGS,
	 "events() -> [(id, kind, data, bytes_up, bytes_down)]: handshake (data: the peer's "
	 "certificate, DER), failed or done (data: a reason)"},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "smesh_native", "smesh's candidate native hot path", -1, methods,
};

PyMODINIT_FUNC PyInit_smesh_native(void)
{
	return PyModule_Create(&module);
}
