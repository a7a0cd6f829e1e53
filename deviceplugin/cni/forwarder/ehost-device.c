/*
 * ehost-device: the node-side half of netdp's CNI plugin.
 *
 * The container runtime runs this file for every CNI call on the node. It
 * does no network work itself: it forwards the call (the CNI_* environment
 * variables and the network config on stdin) to the netdp daemon over a unix
 * socket, prints the daemon's answer byte for byte and exits with the
 * daemon's exit code. It is built static (`cc -static -Os`, libc only), so a
 * node needs nothing but this file: no interpreter, no shared libraries.
 *
 * It answers by itself only what needs no daemon:
 *   - VERSION;
 *   - a bad call: CNI_COMMAND missing or unknown (CNI error 4), a network
 *     config over 16 MiB (error 7) or one that cannot be read (error 5);
 *   - a daemon that is not reachable, breaks off, answers garbage or does not
 *     answer in time: error 11, "try again later". The runtime retries the
 *     call (a DEL until it succeeds), and the daemon, once back, returns any
 *     NIC a call it lost left behind, so nothing is lost.
 *
 * What the runtime reads is built in memory first and written once: never
 * half an answer. The daemon call has one deadline (poll on a non-blocking
 * socket), SIGPIPE is ignored and every system call is retried on EINTR.
 *
 * Wire protocol netdp-cni/2 (the daemon side is deviceplugin/cni/wire.py):
 *   request   "netdp-cni/2 <env bytes> <stdin bytes>\n"
 *             then each CNI_* variable as "KEY=VALUE\0", then stdin
 *   response  "netdp-cni/2 <exit code> <stdout bytes>\n" then stdout
 * Both messages say their length up front, and the daemon closes the
 * connection after its answer: a cut-off answer is never taken for a whole
 * one, nor an answer with bytes after it.
 *
 * Environment: NETDP_CNI_SOCKET overrides the socket path (default
 * /run/netdp/cni.sock) and NETDP_CNI_TIMEOUT_MS the deadline (default 300 s);
 * nothing in the network config can change either.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define PROTOCOL "netdp-cni/2"
#define PREFIX PROTOCOL " " /* how both headers start */
#define PREFIX_LEN (sizeof PREFIX - 1)
#define DEFAULT_SOCKET "/run/netdp/cni.sock"
#define DEFAULT_TIMEOUT_MS 300000LL
#define MAX_STDIN ((size_t)16 << 20)
#define MAX_ENV ((size_t)1 << 20)
#define MAX_STDOUT ((size_t)16 << 20)
#define MAX_HEADER 64 /* "netdp-cni/2 255 16777216\n" and room to spare */
#define CHUNK 65536

/* CNI error codes of the spec. */
#define ERR_INVALID_ENV 4
#define ERR_IO 5
#define ERR_INVALID_CONFIG 7
#define ERR_TRY_AGAIN 11

/* What the daemon answers to VERSION, exactly (tests compare the two). */
static const char VERSION_ANSWER[] =
	"{\"cniVersion\": \"1.1.0\", \"supportedVersions\": "
	"[\"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]}";

static const char *const FORWARDED[] = {"ADD", "DEL", "CHECK", "STATUS", "GC"};

/* ---------------------------------------------------------------- output */

/* Every byte of `data` to `fd`; a runtime that stops reading is not our problem. */
static void write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);
		if (n > 0) {
			data += n;
			len -= (size_t)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			struct pollfd p = {.fd = fd, .events = POLLOUT};
			if (poll(&p, 1, -1) < 0 && errno != EINTR)
				return;
		} else {
			return;
		}
	}
}

/*
 * A CNI error object in a fixed buffer: the error path allocates nothing.
 * Every piece taken from outside (a path, a command) is cut to EXCERPT
 * characters, so the buffer always holds the whole object.
 */
#define EXCERPT 256
static char error_text[8192];
static size_t error_len;

static void put_char(char c)
{
	if (error_len < sizeof error_text)
		error_text[error_len++] = c;
}

static void put_raw(const char *s)
{
	while (*s)
		put_char(*s++);
}

static void put_json(const char *s)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;
	for (i = 0; s[i] && i < EXCERPT; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			put_char('\\');
			put_char((char)c);
		} else if (c < 0x20) {
			put_raw("\\u00");
			put_char(hex[c >> 4]);
			put_char(hex[c & 15]);
		} else if (c >= 0x80) {
			put_char('?'); /* keeps the object valid UTF-8 whatever the bytes */
		} else {
			put_char((char)c);
		}
	}
	if (s[i])
		put_raw("...");
}

/* Decimal digits of `v` at `*at`, advancing it (no NUL). */
static void append_uint(char **at, unsigned long long v)
{
	char digits[24];
	int n = 0;
	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*(*at)++ = digits[--n];
}

static void put_uint(unsigned long long v)
{
	char digits[24], *end = digits;
	append_uint(&end, v);
	*end = '\0';
	put_raw(digits);
}

/* Print {"cniVersion", "code", "msg", "details"}; `msg` is the concatenation of
 * the NULL-terminated string arguments. Returns the exit code to use. */
static int answer_error(int code, const char *details, ...)
{
	va_list parts;
	const char *part;
	error_len = 0;
	put_raw("{\"cniVersion\": \"1.1.0\", \"code\": ");
	put_uint((unsigned)code);
	put_raw(", \"msg\": \"");
	va_start(parts, details);
	while ((part = va_arg(parts, const char *)) != NULL)
		put_json(part);
	va_end(parts);
	put_raw("\"");
	if (details && *details) {
		put_raw(", \"details\": \"");
		put_json(details);
		put_raw("\"");
	}
	put_raw("}");
	write_all(STDOUT_FILENO, error_text, error_len);
	return 1;
}

static const char *describe(int err)
{
#ifdef __GLIBC__
	const char *text = strerrordesc_np(err); /* no locale, no message catalogs */
	return text ? text : "unknown error";
#else
	return strerror(err);
#endif
}

/* ---------------------------------------------------------------- buffers */

struct buf {
	char *data;
	size_t len;
	size_t cap;
};

/* Room for `more` bytes; -1 when the total would pass `limit` or memory is out. */
static int reserve(struct buf *b, size_t more, size_t limit)
{
	size_t cap;
	char *grown;
	if (more > limit || b->len > limit - more)
		return -1;
	if (b->len + more <= b->cap)
		return 0;
	cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more)
		cap *= 2;
	if (cap > limit)
		cap = limit;
	grown = realloc(b->data, cap);
	if (!grown)
		return -1;
	b->data = grown;
	b->cap = cap;
	return 0;
}

static int append(struct buf *b, const char *data, size_t len, size_t limit)
{
	if (len == 0)
		return 0;
	if (reserve(b, len, limit) < 0)
		return -1;
	memcpy(b->data + b->len, data, len);
	b->len += len;
	return 0;
}

/* ---------------------------------------------------------------- time */

static long long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Wait until `fd` is ready for `events`: 1 ready, 0 deadline passed, -1 error. */
static int wait_for(int fd, short events, long long deadline)
{
	for (;;) {
		long long left = deadline - now_ms();
		struct pollfd p = {.fd = fd, .events = events};
		int n;
		if (left <= 0)
			return 0;
		n = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (n > 0)
			return 1; /* POLLERR and POLLHUP too: the next call says what happened */
		if (n < 0 && errno != EINTR)
			return -1;
	}
}

/* A whole decimal number of at most `max_digits` digits, ending at `end`. */
static int parse_uint(const char *s, char end, int max_digits, unsigned long long *out,
		      const char **rest)
{
	unsigned long long v = 0;
	int n = 0;
	while (s[n] >= '0' && s[n] <= '9' && n < max_digits)
		v = v * 10 + (unsigned)(s[n++] - '0');
	if (n == 0 || s[n] != end || (n > 1 && s[0] == '0'))
		return -1;
	*out = v;
	*rest = s + n + 1;
	return 0;
}

/* ---------------------------------------------------------------- input */

/* All of stdin, at most MAX_STDIN bytes: 0, -2 when there is more, -1 with errno. */
static int read_stdin(struct buf *in, long long deadline)
{
	for (;;) {
		size_t room = MAX_STDIN + 1 - in->len; /* one byte more tells "too large" */
		ssize_t n;
		if (reserve(in, room < CHUNK ? room : CHUNK, MAX_STDIN + 1) < 0)
			return -1;
		n = read(STDIN_FILENO, in->data + in->len, in->cap - in->len);
		if (n > 0) {
			in->len += (size_t)n;
			if (in->len > MAX_STDIN)
				return -2;
		} else if (n == 0) {
			return 0;
		} else if (errno == EINTR) {
			continue;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			int ready = wait_for(STDIN_FILENO, POLLIN, deadline);
			if (ready <= 0) {
				errno = ready == 0 ? ETIMEDOUT : errno;
				return -1;
			}
		} else if (errno == EBADF) {
			return 0; /* no stdin at all: an empty config, which the daemon judges */
		} else {
			return -1;
		}
	}
}

/* The request header and the CNI_* variables; stdin follows as it is. */
static int build_request(struct buf *req, size_t stdin_len)
{
	struct buf env = {0};
	char head[MAX_HEADER], *at = head;
	char **var;
	int ok = 1;
	for (var = environ; *var && ok; var++) {
		if (strncmp(*var, "CNI_", 4) == 0)
			ok = append(&env, *var, strlen(*var) + 1, MAX_ENV) == 0;
	}
	memcpy(at, PREFIX, PREFIX_LEN);
	at += PREFIX_LEN;
	append_uint(&at, env.len);
	*at++ = ' ';
	append_uint(&at, stdin_len);
	*at++ = '\n';
	ok = ok && append(req, head, (size_t)(at - head), MAX_HEADER + MAX_ENV) == 0 &&
	     append(req, env.data, env.len, MAX_HEADER + MAX_ENV) == 0;
	free(env.data);
	return ok ? 0 : -1;
}

/* ---------------------------------------------------------------- the daemon call */

enum outcome { ANSWERED, UNREACHABLE, BROKE_OFF, TIMED_OUT, GARBLED };

struct call {
	const char *socket_path;
	long long deadline;
	int err;		/* errno of the failure, 0 if none */
	const char *problem;	/* what was wrong with the answer, for GARBLED and BROKE_OFF */
	struct buf answer;
	size_t body_at, body_len;
	int exit_code;
};

static int connect_daemon(struct call *c)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	size_t n = strlen(c->socket_path);
	int fd;
	if (n >= sizeof addr.sun_path) {
		c->err = ENAMETOOLONG;
		return -1;
	}
	memcpy(addr.sun_path, c->socket_path, n + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		c->err = errno;
		return -1;
	}
	for (;;) {
		int soerr = 0;
		socklen_t size = sizeof soerr;
		if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0 || errno == EISCONN)
			return fd;
		if (errno == EAGAIN) { /* the daemon's backlog is full: it is busy, not gone */
			struct timespec pause = {0, 5 * 1000000};
			if (now_ms() >= c->deadline) {
				c->err = ETIMEDOUT;
				break;
			}
			nanosleep(&pause, NULL);
			continue;
		}
		if (errno != EINTR && errno != EINPROGRESS && errno != EALREADY) {
			c->err = errno;
			break;
		}
		if (wait_for(fd, POLLOUT, c->deadline) <= 0) {
			c->err = ETIMEDOUT;
			break;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &size) == 0 && soerr == 0)
			return fd;
		c->err = soerr ? soerr : errno;
		break;
	}
	close(fd);
	return -1;
}

static int send_all(int fd, const char *data, size_t len, long long deadline)
{
	while (len > 0) {
		ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
		if (n > 0) {
			data += n;
			len -= (size_t)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int ready = wait_for(fd, POLLOUT, deadline);
			if (ready <= 0) {
				errno = ready == 0 ? ETIMEDOUT : errno;
				return -1;
			}
		} else {
			if (n == 0)
				errno = EPIPE;
			return -1;
		}
	}
	return 0;
}

/* Whether the bytes so far can still become a header line. */
static int header_so_far(const char *data, size_t len)
{
	size_t i;
	for (i = 0; i < len && i < MAX_HEADER; i++) {
		char ch = data[i];
		if (i < PREFIX_LEN ? ch != PREFIX[i] : !((ch >= '0' && ch <= '9') || ch == ' '))
			return ch == '\n' && i >= PREFIX_LEN;
	}
	return len < MAX_HEADER;
}

/* Parse "netdp-cni/2 <code> <length>\n": 1 parsed, 0 not all there yet, -1 garbage. */
static int parse_header(struct call *c)
{
	const char *data = c->answer.data, *rest;
	size_t scan = c->answer.len < MAX_HEADER ? c->answer.len : MAX_HEADER;
	unsigned long long code, len;
	if (!header_so_far(data, c->answer.len)) {
		c->problem = "the answer does not start with a netdp-cni/2 header";
		return -1;
	}
	if (!memchr(data, '\n', scan))
		return 0;
	if (parse_uint(data + PREFIX_LEN, ' ', 3, &code, &rest) < 0 || code > 255 ||
	    parse_uint(rest, '\n', 8, &len, &rest) < 0 || len > MAX_STDOUT) {
		c->problem = "the netdp-cni/2 header holds no exit code and length";
		return -1;
	}
	c->exit_code = (int)code;
	c->body_at = (size_t)(rest - data);
	c->body_len = (size_t)len;
	return 1;
}

/*
 * Read the whole answer: the header, as many bytes as it announces, then the
 * end of the stream (the daemon closes after one answer; more bytes than
 * announced mean the header lied).
 */
static enum outcome receive(struct call *c, int fd)
{
	int have_header = 0;
	for (;;) {
		ssize_t n;
		size_t want = CHUNK;
		if (!have_header && c->answer.len > 0) {
			have_header = parse_header(c);
			if (have_header < 0)
				return GARBLED;
		}
		if (have_header) {
			if (c->answer.len > c->body_at + c->body_len) {
				c->problem = "the answer is longer than its header says";
				return GARBLED;
			}
			/* The body, then room for one byte more: there should be none. */
			want = c->body_at + c->body_len + 1 - c->answer.len;
		}
		if (reserve(&c->answer, want, MAX_HEADER + MAX_STDOUT + 1) < 0) {
			c->err = ENOMEM;
			return BROKE_OFF;
		}
		n = recv(fd, c->answer.data + c->answer.len, want, 0);
		if (n > 0) {
			c->answer.len += (size_t)n;
		} else if (n == 0) {
			if (have_header && c->answer.len == c->body_at + c->body_len)
				return ANSWERED;
			c->problem = c->answer.len ? "the connection closed in the middle of the answer"
						   : "the connection closed without an answer";
			return BROKE_OFF;
		} else if (errno == EINTR) {
			continue;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			int ready = wait_for(fd, POLLIN, c->deadline);
			if (ready == 0)
				return TIMED_OUT;
			if (ready < 0) {
				c->err = errno;
				return BROKE_OFF;
			}
		} else if (errno == ECONNRESET && have_header &&
			   c->answer.len == c->body_at + c->body_len) {
			return ANSWERED; /* it answered before reading all we sent, then closed */
		} else {
			c->err = errno;
			return BROKE_OFF;
		}
	}
}

static enum outcome call_daemon(struct call *c, const struct buf *request, const struct buf *in)
{
	enum outcome result;
	int fd = connect_daemon(c);
	if (fd < 0)
		return c->err == ETIMEDOUT ? TIMED_OUT : UNREACHABLE;
	if (send_all(fd, request->data, request->len, c->deadline) < 0 ||
	    send_all(fd, in->data, in->len, c->deadline) < 0) {
		if (errno == ETIMEDOUT) {
			close(fd);
			return TIMED_OUT;
		}
		/* It hung up early; whatever it said before is still worth reading. */
	} else {
		shutdown(fd, SHUT_WR);
	}
	result = receive(c, fd);
	close(fd);
	return result;
}

/* ---------------------------------------------------------------- main */

static int known(const char *command, const char *const *list, size_t n)
{
	size_t i;
	for (i = 0; i < n; i++)
		if (strcmp(command, list[i]) == 0)
			return 1;
	return 0;
}

static int fail_call(enum outcome outcome, const struct call *c, long long timeout_ms)
{
	const char *path = c->socket_path;
	char ms[24], *at = ms;
	switch (outcome) {
	case UNREACHABLE:
		return answer_error(ERR_TRY_AGAIN, describe(c->err), "netdp daemon not reachable at ",
				    path, "; is the netdp pod running on this node?", NULL);
	case TIMED_OUT:
		append_uint(&at, (size_t)timeout_ms);
		*at = '\0';
		return answer_error(ERR_TRY_AGAIN, "", "netdp daemon at ", path,
				    " did not answer within ", ms, " ms", NULL);
	case BROKE_OFF:
		return answer_error(ERR_TRY_AGAIN, c->err ? describe(c->err) : c->problem,
				    "netdp daemon at ", path, " broke off the call", NULL);
	case GARBLED:
	default:
		return answer_error(ERR_TRY_AGAIN, c->problem, "the program at ", path,
				    " did not answer in netdp-cni/2", NULL);
	}
}

int main(void)
{
	struct sigaction ignore = {.sa_handler = SIG_IGN};
	struct buf in = {0}, request = {0};
	struct call c = {0};
	const char *command = getenv("CNI_COMMAND");
	const char *timeout_env = getenv("NETDP_CNI_TIMEOUT_MS");
	unsigned long long timeout_ms = DEFAULT_TIMEOUT_MS;
	const char *rest;
	enum outcome outcome;
	int stdin_state, stdin_errno;

	sigaction(SIGPIPE, &ignore, NULL);
	if (timeout_env && *timeout_env &&
	    (parse_uint(timeout_env, '\0', 9, &timeout_ms, &rest) < 0 || timeout_ms == 0))
		return answer_error(ERR_INVALID_ENV, timeout_env,
				    "NETDP_CNI_TIMEOUT_MS must be a whole number of milliseconds",
				    NULL);
	c.deadline = now_ms() + (long long)timeout_ms;
	c.socket_path = getenv("NETDP_CNI_SOCKET");
	if (!c.socket_path || !*c.socket_path)
		c.socket_path = DEFAULT_SOCKET;

	/* The whole config first, as every CNI plugin reads it, whatever the command. */
	stdin_state = read_stdin(&in, c.deadline);
	stdin_errno = errno;
	if (!command || !*command)
		return answer_error(ERR_INVALID_ENV, "set it to ADD, DEL, CHECK, STATUS, GC or VERSION",
				    "CNI_COMMAND is not set", NULL);
	if (strcmp(command, "VERSION") != 0 &&
	    !known(command, FORWARDED, sizeof FORWARDED / sizeof *FORWARDED))
		return answer_error(ERR_INVALID_ENV, "known: ADD, DEL, CHECK, STATUS, GC, VERSION",
				    "unknown CNI_COMMAND ", command, NULL);
	if (stdin_state == -2)
		return answer_error(ERR_INVALID_CONFIG, "", "the network config on stdin is over 16 MiB",
				    NULL);
	if (stdin_state < 0)
		return answer_error(ERR_IO, describe(stdin_errno),
				    "could not read the network config on stdin", NULL);
	if (strcmp(command, "VERSION") == 0) {
		write_all(STDOUT_FILENO, VERSION_ANSWER, sizeof VERSION_ANSWER - 1);
		return 0;
	}
	if (build_request(&request, in.len) < 0)
		return answer_error(ERR_INVALID_ENV, "", "the CNI_* variables are over 1 MiB", NULL);

	outcome = call_daemon(&c, &request, &in);
	if (outcome != ANSWERED)
		return fail_call(outcome, &c, (long long)timeout_ms);
	write_all(STDOUT_FILENO, c.answer.data + c.body_at, c.body_len);
	return c.exit_code;
}
