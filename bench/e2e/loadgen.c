/*
 * loadgen: a fast octet-counted RFC 5424 syslog producer for the end-to-end benchmarks.
 *
 *   loadgen -H HOST -p PORT [-c CONNS] [-n TOTAL] [-s SIZE] (-t TOKEN | -T TOKENFILE)
 *           [-b BUFSIZE] [-w WARMUP_SECONDS] [-r RATE] [-C FIRST_CONN]
 *
 * Opens CONNS TCP connections (all connected before the clock starts), then each connection
 * (one thread each) sends its share of TOTAL frames `LEN SP MSG` in BUFSIZE writes, where MSG
 * is SIZE bytes (longer if the header alone exceeds SIZE):
 *
 *   <134>1 2024-05-01T12:00:00.000000Z loadgen TOKEN web.1 - - seq=C:N xxxx...
 *
 * With a token file (one token per line) the tokens are used round-robin per connection, and
 * N counts the messages of that connection for that token (0, 1, 2, ... per (C, TOKEN)), so
 * every (channel, connection) stream is contiguous and a sink can check it for gaps.
 *
 * With -w, connection 0 first sends one `warmup` message (no seq=) per token and waits the
 * given number of seconds (lets a router open its drain connections before the clock starts).
 *
 * With -r, the connections together send at most RATE messages/s (paced per buffer), to find
 * the highest rate a router delivers without loss.
 *
 * With -C, the C of seq=C:N counts from FIRST_CONN instead of 0: a second run against the
 * same router and sink (the timed one after a prefill) sends streams of its own, whose N
 * start at 0 again without colliding with the first run's.
 *
 * Prints one JSON line: {"sent":..,"bytes":..,"start_ts":..,"end_ts":..,"elapsed":..}
 * (timestamps are CLOCK_REALTIME seconds, comparable with the sink's).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1024
#define HEADER "<134>1 2024-05-01T12:00:00.000000Z loadgen "
#define AFTER_TOKEN " web.1 - - seq="

static char **tokens;
static size_t *token_lens;
static size_t ntokens;
static size_t msg_size = 120;
static size_t buf_size = 65536;
static double rate_per_conn; /* messages/s per connection, 0 = as fast as possible */
static double start_mono;
static uint64_t first_conn; /* the C of the first connection's seq=C:N (-C) */

struct conn {
    int fd;
    int id;
    uint64_t count;
    uint64_t bytes;
    int error;
    pthread_t thread;
};

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

/* Sleeps until `done` messages are due at the configured rate. */
static void pace(uint64_t done)
{
    if (rate_per_conn <= 0)
        return;
    double due = start_mono + (double)done / rate_per_conn, now = now_mono();
    if (due > now) {
        double d = due - now;
        struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static int send_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Writes the decimal digits of v at p; returns the number of bytes written. */
static size_t put_u64(char *p, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    return n;
}

/* Builds one frame at out (which has room for it); returns its length. */
static size_t build_frame(char *out, size_t tok, int conn_id, uint64_t n)
{
    char msg[16384];
    size_t m = 0;
    memcpy(msg + m, HEADER, sizeof(HEADER) - 1);
    m += sizeof(HEADER) - 1;
    memcpy(msg + m, tokens[tok], token_lens[tok]);
    m += token_lens[tok];
    memcpy(msg + m, AFTER_TOKEN, sizeof(AFTER_TOKEN) - 1);
    m += sizeof(AFTER_TOKEN) - 1;
    m += put_u64(msg + m, first_conn + (uint64_t)conn_id);
    msg[m++] = ':';
    m += put_u64(msg + m, n);
    msg[m++] = ' ';
    if (m < msg_size) {
        memset(msg + m, 'x', msg_size - m);
        m = msg_size;
    }
    size_t h = put_u64(out, m);
    out[h++] = ' ';
    memcpy(out + h, msg, m);
    return h + m;
}

static size_t frame_room(void)
{
    size_t longest = 0;
    for (size_t i = 0; i < ntokens; i++)
        if (token_lens[i] > longest)
            longest = token_lens[i];
    return msg_size + longest + 128;
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    uint64_t *per_token = calloc(ntokens, sizeof(uint64_t));
    char *buf = malloc(buf_size);
    size_t room = frame_room();
    if (!per_token || !buf)
        die("malloc");
    size_t used = 0, tok = 0;
    for (uint64_t i = 0; i < c->count; i++) {
        if (used + room > buf_size) {
            pace(i);
            if (send_all(c->fd, buf, used) < 0) {
                c->error = errno;
                goto out;
            }
            c->bytes += used;
            used = 0;
        }
        used += build_frame(buf + used, tok, c->id, per_token[tok]);
        per_token[tok]++;
        if (++tok == ntokens)
            tok = 0;
    }
    if (used) {
        if (send_all(c->fd, buf, used) < 0)
            c->error = errno;
        else
            c->bytes += used;
    }
out:
    shutdown(c->fd, SHUT_WR);
    free(buf);
    free(per_token);
    return NULL;
}

static void load_tokens(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        die(path);
    size_t cap = 64;
    tokens = malloc(cap * sizeof(char *));
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        size_t len = strcspn(line, "\r\n");
        line[len] = 0;
        if (len == 0)
            continue;
        if (ntokens == cap) {
            cap *= 2;
            tokens = realloc(tokens, cap * sizeof(char *));
            if (!tokens)
                die("realloc");
        }
        tokens[ntokens++] = strdup(line);
    }
    fclose(f);
    if (ntokens == 0) {
        fprintf(stderr, "loadgen: no tokens in %s\n", path);
        exit(2);
    }
}

static int connect_to(const char *host, int port)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad IPv4 address %s\n", host);
        exit(2);
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        die("connect");
    return fd;
}

static void usage(void)
{
    fprintf(stderr, "usage: loadgen -H HOST -p PORT [-c CONNS] [-n TOTAL] [-s SIZE] "
                    "(-t TOKEN | -T TOKENFILE) [-b BUFSIZE] [-w WARMUP_SECONDS] [-r RATE] "
                    "[-C FIRST_CONN]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *token = NULL, *token_file = NULL;
    int port = 0, nconns = 1, opt;
    uint64_t total = 1000000;
    double warmup = -1, rate = 0;
    while ((opt = getopt(argc, argv, "H:p:c:n:s:t:T:b:w:r:C:")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': nconns = atoi(optarg); break;
        case 'n': total = strtoull(optarg, NULL, 10); break;
        case 's': msg_size = strtoul(optarg, NULL, 10); break;
        case 't': token = optarg; break;
        case 'T': token_file = optarg; break;
        case 'b': buf_size = strtoul(optarg, NULL, 10); break;
        case 'w': warmup = atof(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'C': first_conn = strtoull(optarg, NULL, 10); break;
        default: usage();
        }
    }
    if (port <= 0 || nconns < 1 || nconns > MAX_CONNS || (!token && !token_file))
        usage();
    if (msg_size > 10000) {
        fprintf(stderr, "loadgen: -s at most 10000\n");
        return 2;
    }
    if (token_file) {
        load_tokens(token_file);
    } else {
        tokens = malloc(sizeof(char *));
        tokens[0] = strdup(token);
        ntokens = 1;
    }
    token_lens = malloc(ntokens * sizeof(size_t));
    for (size_t i = 0; i < ntokens; i++) {
        token_lens[i] = strlen(tokens[i]);
        if (token_lens[i] > 200) {
            fprintf(stderr, "loadgen: token too long\n");
            return 2;
        }
    }
    if (buf_size < 2 * frame_room())
        buf_size = 2 * frame_room();

    static struct conn conns[MAX_CONNS];
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = connect_to(host, port);
        conns[i].id = i;
        conns[i].count = total / (uint64_t)nconns + ((uint64_t)i < total % (uint64_t)nconns);
        int one = 1;
        setsockopt(conns[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (warmup >= 0) {
        char *wbuf = malloc(frame_room() + 64);
        for (size_t t = 0; t < ntokens; t++) {
            int m = snprintf(wbuf + 16, frame_room() + 40, "%s%s web.1 - - warmup", HEADER,
                             tokens[t]);
            int h = snprintf(wbuf, 16, "%d ", m);
            memmove(wbuf + h, wbuf + 16, (size_t)m);
            if (send_all(conns[0].fd, wbuf, (size_t)(h + m)) < 0)
                die("send warmup");
        }
        free(wbuf);
        struct timespec ts = {(time_t)warmup, (long)((warmup - (double)(time_t)warmup) * 1e9)};
        nanosleep(&ts, NULL);
    }

    rate_per_conn = rate / nconns;
    start_mono = now_mono();
    double start = now_real();
    for (int i = 0; i < nconns; i++)
        if (pthread_create(&conns[i].thread, NULL, conn_main, &conns[i]) != 0)
            die("pthread_create");
    uint64_t sent = 0, bytes = 0;
    int errors = 0;
    for (int i = 0; i < nconns; i++) {
        pthread_join(conns[i].thread, NULL);
        if (conns[i].error) {
            errors++;
            fprintf(stderr, "loadgen: connection %d: %s\n", i, strerror(conns[i].error));
        } else {
            sent += conns[i].count;
        }
        bytes += conns[i].bytes;
    }
    double end = now_real();
    for (int i = 0; i < nconns; i++)
        close(conns[i].fd);
    printf("{\"sent\": %llu, \"bytes\": %llu, \"connections\": %d, \"errors\": %d, "
           "\"start_ts\": %.6f, \"end_ts\": %.6f, \"elapsed\": %.6f}\n",
           (unsigned long long)sent, (unsigned long long)bytes, nconns, errors, start, end,
           end - start);
    return errors ? 1 : 0;
}
