/*
 * sink: an octet-counted TCP syslog receiver that checks every stream for loss and duplicates.
 *
 *   sink [-p PORT] [-e EXPECTED] [-i IDLE_SECONDS] [-m MAX_SECONDS] [-x STALL_AFTER_BYTES]
 *        [-P PREFILL]
 *
 * Listens on 127.0.0.1:PORT (0 = any free port) and prints {"port": N} once listening.
 * Accepts any number of connections (epoll, one thread), parses `LEN SP MSG` frames and takes
 * from each RFC 5424 message the HOSTNAME (a router's drain token, `d.xxx`), the APP-NAME and
 * `seq=C:N` from the text. A stream is (HOSTNAME, APP-NAME, C); the N of a stream are expected
 * to be 0, 1, 2, ... (see loadgen.c); a bitmap per stream finds duplicates and gaps.
 * `Error L10 (...): K messages dropped` notices are counted, with their K.
 *
 * Stops and prints one JSON line when unique messages + L10-dropped >= EXPECTED (if given),
 * when no data came for IDLE_SECONDS after the first message, after MAX_SECONDS in all, or on
 * SIGTERM/SIGINT. `lost` is EXPECTED - unique when EXPECTED is given, else the gaps.
 * Timestamps are CLOCK_REALTIME seconds (comparable with loadgen's).
 *
 * With -x, the sink stops reading once it has read STALL_AFTER_BYTES bytes in all (0: from
 * the start): it still accepts connections but reads none of them (they leave epoll, so the
 * stall costs no CPU) until SIGUSR1, then reads on as before (it stalls once). The idle
 * timeout does not run while stalled. The report gives the bytes read when the stall began
 * and its length; `max_gap` is the longest time between two counted (seq=) messages.
 *
 * With -P, the sink also prints {"prefilled": N, "ts": T} once unique messages + L10-dropped
 * first reach PREFILL (T: the last one's arrival): a harness that sent PREFILL messages before
 * its timed run learns that the router delivered them, and goes on.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024)
#define MAX_FRAME (1024 * 1024)
#define MAX_SEQ (1ULL << 31)

struct stream {
    char *key;      /* "HOST APP" */
    size_t key_len;
    uint64_t conn;
    uint64_t hash;
    uint64_t *bits;
    uint64_t cap;   /* bits */
    uint64_t unique;
    uint64_t top;   /* highest N seen + 1 */
    uint64_t last;  /* last N seen + 1 */
    uint64_t out_of_order;
};

struct conn {
    int fd;
    char *buf;
    size_t len, cap;
};

static struct stream **table;
static size_t table_cap = 1024, table_used;

static uint64_t received, unique_total, duplicates, out_of_order, l10_notices, l10_dropped;
static uint64_t warmup, other, malformed, bytes_total, connections;
static double first_ts, last_ts, max_gap;
static volatile sig_atomic_t stop_signal, resume_signal;
static long long stall_after = -1; /* -x: bytes read before the stall, -1 = never stall */
static int stalled, stall_done;
static uint64_t stall_bytes;
static double stall_started, stall_seconds;
static struct conn **held; /* connections not read while stalled */
static size_t nheld, held_cap;

static double now_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p)
        die("realloc");
    return p;
}

static uint64_t hash_key(const char *k, size_t n, uint64_t c)
{
    uint64_t h = 1469598103934665603ULL ^ (c * 0x9E3779B97F4A7C15ULL);
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)k[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static void table_insert(struct stream *s)
{
    size_t i = s->hash & (table_cap - 1);
    while (table[i])
        i = (i + 1) & (table_cap - 1);
    table[i] = s;
}

static struct stream *lookup(const char *k, size_t n, uint64_t c)
{
    static struct stream *last;
    if (last && last->conn == c && last->key_len == n && memcmp(last->key, k, n) == 0)
        return last;
    uint64_t h = hash_key(k, n, c);
    size_t i = h & (table_cap - 1);
    while (table[i]) {
        struct stream *s = table[i];
        if (s->hash == h && s->conn == c && s->key_len == n && memcmp(s->key, k, n) == 0)
            return last = s;
        i = (i + 1) & (table_cap - 1);
    }
    struct stream *s = calloc(1, sizeof *s);
    if (!s)
        die("calloc");
    s->key = malloc(n + 1);
    if (!s->key)
        die("malloc");
    memcpy(s->key, k, n);
    s->key[n] = 0;
    s->key_len = n;
    s->conn = c;
    s->hash = h;
    if (++table_used * 2 > table_cap) {
        struct stream **old = table;
        size_t old_cap = table_cap;
        table_cap *= 2;
        table = calloc(table_cap, sizeof *table);
        if (!table)
            die("calloc");
        for (size_t j = 0; j < old_cap; j++)
            if (old[j])
                table_insert(old[j]);
        free(old);
    }
    table_insert(s);
    return last = s;
}

static void record(struct stream *s, uint64_t n)
{
    if (n >= s->cap) {
        uint64_t cap = s->cap ? s->cap * 2 : 4096;
        while (cap <= n)
            cap *= 2;
        s->bits = xrealloc(s->bits, cap / 8);
        memset((char *)s->bits + s->cap / 8, 0, (cap - s->cap) / 8);
        s->cap = cap;
    }
    uint64_t mask = 1ULL << (n & 63);
    received++;
    if (s->bits[n >> 6] & mask) {
        duplicates++;
    } else {
        s->bits[n >> 6] |= mask;
        s->unique++;
        unique_total++;
    }
    if (n + 1 <= s->last) {
        s->out_of_order++;
        out_of_order++;
    }
    s->last = n + 1;
    if (n + 1 > s->top)
        s->top = n + 1;
}

/* Returns a pointer to the character after the k-th space in [p, end), or NULL. */
static const char *after_spaces(const char *p, const char *end, int k)
{
    while (k-- > 0) {
        p = memchr(p, ' ', (size_t)(end - p));
        if (!p)
            return NULL;
        p++;
    }
    return p;
}

static int parse_u64(const char **pp, const char *end, uint64_t *out)
{
    const char *p = *pp;
    uint64_t v = 0;
    if (p >= end || *p < '0' || *p > '9')
        return -1;
    while (p < end && *p >= '0' && *p <= '9' && v < (1ULL << 60))
        v = v * 10 + (uint64_t)(*p++ - '0');
    *pp = p;
    *out = v;
    return 0;
}

static void handle_message(const char *m, size_t len, double ts)
{
    const char *end = m + len;
    const char *host = after_spaces(m, end, 2);
    const char *app = host ? after_spaces(host, end, 1) : NULL;
    const char *procid = app ? after_spaces(app, end, 1) : NULL;
    if (!procid) {
        malformed++;
        return;
    }
    /* MSG starts after SD; with SD "-" that is after the 7th space, else search. */
    const char *seq = NULL;
    const char *msg = after_spaces(procid, end, 3);
    if (msg && end - msg >= 4 && memcmp(msg, "seq=", 4) == 0)
        seq = msg;
    else
        seq = memmem(procid, (size_t)(end - procid), "seq=", 4);
    if (seq) {
        const char *p = seq + 4;
        uint64_t c, n;
        if (parse_u64(&p, end, &c) < 0 || p >= end || *p != ':') {
            malformed++;
            return;
        }
        p++;
        if (parse_u64(&p, end, &n) < 0 || n >= MAX_SEQ) {
            malformed++;
            return;
        }
        /* The stream key is "HOST APP" (host .. end of app, one space inside). */
        struct stream *s = lookup(host, (size_t)(procid - 1 - host), c);
        record(s, n);
        if (first_ts == 0)
            first_ts = ts;
        else if (ts - last_ts > max_gap)
            max_gap = ts - last_ts; /* longest silence between two counted messages */
        last_ts = ts;
        return;
    }
    const char *l10 = memmem(procid, (size_t)(end - procid), "Error L10", 9);
    if (l10) {
        const char *p = memmem(l10, (size_t)(end - l10), "): ", 3);
        uint64_t k = 0;
        l10_notices++;
        if (p) {
            p += 3;
            if (parse_u64(&p, end, &k) == 0)
                l10_dropped += k;
        }
        return;
    }
    if (memmem(procid, (size_t)(end - procid), "warmup", 6))
        warmup++;
    else
        other++;
}

/* Parses the complete frames in c->buf; returns -1 if the stream is not octet-counted. */
static int parse_frames(struct conn *c, double ts)
{
    size_t pos = 0;
    while (pos < c->len) {
        const char *p = c->buf + pos, *end = c->buf + c->len;
        const char *q = p;
        uint64_t flen = 0;
        while (q < end && *q >= '0' && *q <= '9' && q - p < 8)
            flen = flen * 10 + (uint64_t)(*q++ - '0');
        if (q == end)
            break; /* length not complete yet */
        if (q == p || *q != ' ' || flen == 0 || flen > MAX_FRAME)
            return -1;
        q++;
        if ((size_t)(end - q) < flen)
            break;
        handle_message(q, flen, ts);
        pos = (size_t)(q - c->buf) + flen;
    }
    if (pos) {
        memmove(c->buf, c->buf + pos, c->len - pos);
        c->len -= pos;
    }
    return 0;
}

static void on_signal(int sig)
{
    stop_signal = sig;
}

static void on_resume(int sig)
{
    (void)sig;
    resume_signal = 1;
}

static void hold_conn(struct conn *c)
{
    if (nheld == held_cap) {
        held_cap = held_cap ? held_cap * 2 : 64;
        held = xrealloc(held, held_cap * sizeof *held);
    }
    held[nheld++] = c;
}

static void start_stall(void)
{
    stalled = 1;
    stall_bytes = bytes_total;
    stall_started = now_mono();
}

/* Ends the stall (or cancels one not begun yet): held connections are read again. */
static void resume(int ep)
{
    if (stalled) {
        for (size_t i = 0; i < nheld; i++) {
            struct epoll_event cev = {.events = EPOLLIN, .data.ptr = held[i]};
            epoll_ctl(ep, EPOLL_CTL_ADD, held[i]->fd, &cev);
        }
        nheld = 0;
        stalled = 0;
        stall_seconds += now_mono() - stall_started;
    }
    stall_done = 1;
}

static void report(uint64_t expected, const char *reason)
{
    uint64_t gaps = 0;
    for (size_t i = 0; i < table_cap; i++)
        if (table[i])
            gaps += table[i]->top - table[i]->unique;
    uint64_t lost = expected ? (expected > unique_total ? expected - unique_total : 0) : gaps;
    double span = last_ts - first_ts;
    printf("{\"received\": %llu, \"unique\": %llu, \"duplicates\": %llu, \"lost\": %llu, "
           "\"gaps\": %llu, \"expected\": %llu, \"out_of_order\": %llu, \"l10_notices\": %llu, "
           "\"l10_dropped\": %llu, \"warmup\": %llu, \"other\": %llu, \"malformed\": %llu, "
           "\"streams\": %zu, \"connections\": %llu, \"bytes\": %llu, \"first_ts\": %.6f, "
           "\"last_ts\": %.6f, \"rate\": %.1f, \"stall_bytes\": %llu, "
           "\"stall_seconds\": %.3f, \"max_gap\": %.6f, \"reason\": \"%s\"}\n",
           (unsigned long long)received, (unsigned long long)unique_total,
           (unsigned long long)duplicates, (unsigned long long)lost, (unsigned long long)gaps,
           (unsigned long long)expected, (unsigned long long)out_of_order,
           (unsigned long long)l10_notices, (unsigned long long)l10_dropped,
           (unsigned long long)warmup, (unsigned long long)other, (unsigned long long)malformed,
           table_used, (unsigned long long)connections, (unsigned long long)bytes_total,
           first_ts, last_ts, span > 0 ? (double)received / span : 0.0,
           (unsigned long long)stall_bytes,
           stall_seconds + (stalled ? now_mono() - stall_started : 0.0), max_gap, reason);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int port = 0, opt;
    uint64_t expected = 0, prefill = 0;
    double idle = 5, max_seconds = 600;
    while ((opt = getopt(argc, argv, "p:e:i:m:x:P:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'e': expected = strtoull(optarg, NULL, 10); break;
        case 'i': idle = atof(optarg); break;
        case 'm': max_seconds = atof(optarg); break;
        case 'x': stall_after = strtoll(optarg, NULL, 10); break;
        case 'P': prefill = strtoull(optarg, NULL, 10); break;
        default:
            fprintf(stderr, "usage: sink [-p PORT] [-e EXPECTED] [-i IDLE] [-m MAX_SECONDS] "
                            "[-x STALL_AFTER_BYTES] [-P PREFILL]\n");
            return 2;
        }
    }
    table = calloc(table_cap, sizeof *table);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_resume;
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(lfd, 4096) < 0)
        die("listen");
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("{\"port\": %d}\n", ntohs(addr.sin_port));
    fflush(stdout);

    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[256];
    double started = now_mono(), last_data = 0;
    const char *reason = "signal";
    if (stall_after == 0)
        start_stall();
    for (;;) {
        if (stop_signal)
            break;
        if (resume_signal && !stall_done) {
            resume(ep);
            last_data = now_mono(); /* the idle timeout restarts */
        }
        double mono = now_mono();
        if (prefill && unique_total + l10_dropped >= prefill) {
            printf("{\"prefilled\": %llu, \"ts\": %.6f}\n",
                   (unsigned long long)(unique_total + l10_dropped), last_ts);
            fflush(stdout);
            prefill = 0;
        }
        if (expected && unique_total + l10_dropped >= expected) {
            reason = "expected";
            break;
        }
        if (!stalled && last_data && mono - last_data > idle) {
            reason = "idle";
            break;
        }
        if (mono - started > max_seconds) {
            reason = "max_seconds";
            break;
        }
        int n = epoll_wait(ep, events, 256, 100);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0)
                        break;
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc)
                        die("calloc");
                    nc->fd = fd;
                    nc->cap = READ_SIZE * 2;
                    nc->buf = malloc(nc->cap);
                    if (!nc->buf)
                        die("malloc");
                    connections++;
                    if (stalled) {
                        hold_conn(nc);
                        continue;
                    }
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            if (stalled) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                hold_conn(c);
                continue;
            }
            int closed = 0;
            for (int rounds = 0; rounds < 16; rounds++) {
                if (c->cap - c->len < READ_SIZE) {
                    c->cap = c->len + READ_SIZE;
                    c->buf = xrealloc(c->buf, c->cap);
                }
                ssize_t r = read(c->fd, c->buf + c->len, READ_SIZE);
                if (r < 0 && (errno == EAGAIN || errno == EINTR))
                    break;
                if (r <= 0) {
                    closed = 1;
                    break;
                }
                double ts = now_real();
                last_data = now_mono();
                bytes_total += (uint64_t)r;
                c->len += (size_t)r;
                if (parse_frames(c, ts) < 0) {
                    malformed++;
                    closed = 1;
                    break;
                }
                if (stall_after > 0 && !stall_done && !stalled &&
                    bytes_total >= (uint64_t)stall_after) {
                    start_stall();
                    break;
                }
                if (r < READ_SIZE)
                    break;
            }
            if (closed) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                free(c->buf);
                free(c);
            }
        }
    }
    report(expected, reason);
    return 0;
}
