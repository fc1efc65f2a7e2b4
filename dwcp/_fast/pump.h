/* The pump: one loop thread that moves the RAW payloads of every data stream of a daemon
 * (socket -> slot -> file, each block opened if sealed and hashed in cache), driven by io_uring or
 * by epoll.  dwcp/_fast/engine.pyx wraps it (class Pump; the rules are in its docstring).
 *
 * Threads
 * -------
 * A stream's thread calls dwcp_pump_run() without the GIL: it takes a free slot (or waits for
 * one), queues its job on `incoming`, wakes the loop through an eventfd and sleeps on the pump's
 * condition variable until the loop marks the job finished.  The loop thread never touches Python
 * and owns the jobs it has started (`active`, by slot) until it finishes them; `mu` guards
 * `incoming`, `free_slots`, each job's `finished` and the counters.  After `finished` is set
 * the loop never touches that job again (it lives on its caller's stack).
 *
 * io_uring
 * --------
 * Each started job has exactly one operation in flight: a RECV into its slot, or a WRITE(_FIXED)
 * of the slot's block to the file.  user_data = generation << 16 | slot << 2 | op, and a slot's
 * generation changes with every job, so a stale completion (a cancel that raced a result) is
 * recognised and dropped.  A wait that outlives the job's timeout is cancelled (ASYNC_CANCEL);
 * its -ECANCELED result is the timeout.  The eventfd has a READ in flight all the time: its
 * completion is the wake-up.  The slots are registered buffers when the memlock limit allows
 * (WRITE_FIXED: the kernel does not pin and unpin pages per write); otherwise plain WRITE.  A file
 * on tmpfs is written with pwrite in the loop instead: tmpfs takes no non-blocking buffered write,
 * so io_uring would hand every WRITE to an io-wq worker (measured: 1.08 -> 1.46 GB/s, one stream).
 *
 * static inline / static only: this header is included by one extension. */
#ifndef DWCP_PUMP_H
#define DWCP_PUMP_H

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/uio.h>

#include "aead.h"
#include "uring.h"
#include "xxhash.h"

#define DWCP_OP_WRITE_FIXED 5
#define DWCP_TMPFS_MAGIC 0x01021994

enum { DWCP_PK_EPOLL = 1, DWCP_PK_URING = 2 };
/* job status: the same numbers as engine.pyx's ST_* */
enum {
    DWCP_PS_OK = 0,
    DWCP_PS_EOF = 1,
    DWCP_PS_TIMEOUT = 2,
    DWCP_PS_SOCK = 3,
    DWCP_PS_FILE = 4,
    DWCP_PS_FORGED = 5,
    DWCP_PS_TAG_CUT = 6,
    DWCP_PS_CLOSED = 7,
    DWCP_PS_EVP = 8
};
enum { DWCP_DIR_RECV = 0, DWCP_DIR_SEND = 1 };
/* a send's phases: the header, then the plain payload from the caller's buffer, or the sealed payload
 * a block at a time through the job's slot, then the record's tag */
enum { DWCP_SP_HDR = 10, DWCP_SP_PLAIN = 11, DWCP_SP_SEALED = 12, DWCP_SP_TAG = 13 };
#define DWCP_PUMP_MAX 64
#define DWCP_UD_WAKE 0xffffffffffffffffULL
#define DWCP_UOP_RECV 1
#define DWCP_UOP_WRITE 2
#define DWCP_UOP_CANCEL 3

typedef struct dwcp_pjob {
    /* the request */
    int sock, file, timeout_ms;
    int64_t n, off;
    dwcp_aead *a;
    uint8_t *hashes; /* 16 bytes per block of n */
    /* the loop's state */
    int slot, phase; /* receive: 0 payload block, 2 the record's tag; send: DWCP_SP_* */
    int dir;         /* DWCP_DIR_RECV or DWCP_DIR_SEND */
    const uint8_t *hdr, *src; /* send: the header (sent first, as is) and the payload */
    int64_t hlen;
    const uint8_t *cur;       /* send: the piece being sent (header, payload, slot or tag) */
    int64_t done;    /* payload bytes hashed and written (whole blocks) */
    int64_t got;     /* bytes of the current block (or tag) received */
    int64_t want;    /* the current block's length */
    int64_t wrote;   /* io_uring: bytes of the current block written */
    int64_t k;       /* blocks hashed */
    int64_t deadline;
    uint64_t ud;     /* io_uring: user_data of the operation in flight */
    int cancelling;
    int sync_write; /* io_uring: pwrite the blocks in the loop (a file that would punt every WRITE) */
    /* the result */
    int status, err, finished;
    uint8_t tag[16];
    struct dwcp_pjob *next;
} dwcp_pjob;

typedef struct {
    int kind, nslots, stop, registered, register_err;
    size_t block;
    uint8_t *slots;
    size_t slots_bytes;
    uint64_t free_slots; /* bit i: slot i is free (mu) */
    uint16_t gen[DWCP_PUMP_MAX];
    dwcp_pjob *incoming; /* (mu) */
    dwcp_pjob *active[DWCP_PUMP_MAX];
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a job finished, a slot came free, or the pump stops */
    pthread_t thread;
    int thread_started, wake_fd, epfd, loop_err;
    long tid; /* the loop thread's kernel id (for its CPU affinity), set before dwcp_pump_start returns */
    dwcp_uring ring;
    uint64_t wake_buf;
    /* counters (written by the loop under mu) */
    uint64_t jobs, bytes, wakeups, ops;
} dwcp_pump;

static inline int64_t dwcp_pump_now(void) {
    int64_t t = 0;
    dwcp_monotonic_ns(&t);
    return t;
}

static inline uint8_t *dwcp_pump_slot(dwcp_pump *p, int slot) { return p->slots + (size_t)slot * p->block; }

static void dwcp_pump_finish(dwcp_pump *p, dwcp_pjob *j, int status, int err) {
    if (p->kind == DWCP_PK_EPOLL) epoll_ctl(p->epfd, EPOLL_CTL_DEL, j->sock, NULL);
    p->active[j->slot] = NULL;
    pthread_mutex_lock(&p->mu);
    j->status = status;
    j->err = err;
    j->finished = 1;
    p->free_slots |= 1ULL << j->slot;
    p->jobs++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* ``n`` bytes moved by one socket operation (the counters info() reads). */
static inline void dwcp_pump_count(dwcp_pump *p, int64_t n) {
    pthread_mutex_lock(&p->mu);
    p->bytes += (uint64_t)n;
    p->ops++;
    pthread_mutex_unlock(&p->mu);
}

static inline void dwcp_pump_touch(dwcp_pjob *j, int64_t now) {
    j->deadline = j->timeout_ms < 0 ? 0 : now + (int64_t)j->timeout_ms * 1000000LL;
}

/* The current block is in the slot: open it in place (sealed) and hash it.  0 or DWCP_PS_EVP. */
static int dwcp_pump_block_ready(dwcp_pump *p, dwcp_pjob *j) {
    uint8_t *sp = dwcp_pump_slot(p, j->slot);
    XXH128_canonical_t c;
    if (j->a != NULL && dwcp_aead_update(j->a, sp, sp, (size_t)j->want) != 0) return DWCP_PS_EVP;
    XXH128_canonicalFromHash(&c, XXH3_128bits(sp, (size_t)j->want));
    memcpy(j->hashes + j->k * 16, c.digest, 16);
    j->k++;
    return 0;
}

/* The current block is written: set up the next block or the tag.  1 when the job is complete
 * (and finished: OK, FORGED or EVP), else 0. */
static int dwcp_pump_next(dwcp_pump *p, dwcp_pjob *j) {
    j->done += j->want;
    j->got = j->wrote = 0;
    if (j->done < j->n) {
        j->want = j->n - j->done < (int64_t)p->block ? j->n - j->done : (int64_t)p->block;
        return 0;
    }
    if (j->a != NULL && j->phase == 0) {
        j->phase = 2;
        j->want = 16;
        return 0;
    }
    dwcp_pump_finish(p, j, DWCP_PS_OK, 0);
    return 1;
}

/* The tag is in: check it and finish the job. */
static void dwcp_pump_tag_ready(dwcp_pump *p, dwcp_pjob *j) {
    int rc = dwcp_aead_finish(j->a, j->tag);
    dwcp_pump_finish(p, j, rc == 0 ? DWCP_PS_OK : DWCP_PS_FORGED, 0);
}

/* The peer closed the connection: inside the record's tag, or after ``done + got`` payload bytes. */
static void dwcp_pump_peer_closed(dwcp_pump *p, dwcp_pjob *j) {
    if (j->phase == 2) {
        dwcp_pump_finish(p, j, DWCP_PS_TAG_CUT, 0);
        return;
    }
    j->done += j->got;
    dwcp_pump_finish(p, j, DWCP_PS_EOF, 0);
}

/* A job's first step: 0 to go on, 1 when already finished (empty payload). */
static int dwcp_pump_begin(dwcp_pump *p, dwcp_pjob *j, int64_t now) {
    j->phase = 0;
    j->done = j->got = j->wrote = j->k = 0;
    j->cancelling = 0;
    j->want = j->n < (int64_t)p->block ? j->n : (int64_t)p->block;
    j->sync_write = 0;
    if (p->kind == DWCP_PK_URING) {
        /* tmpfs takes no non-blocking buffered write: io_uring would punt each WRITE to an io-wq worker,
         * a thread hop per block that cost a third of the rate on /dev/shm; pwrite it here instead */
        struct statfs sf;
        j->sync_write = fstatfs(j->file, &sf) == 0 && sf.f_type == DWCP_TMPFS_MAGIC;
    }
    p->active[j->slot] = j;
    p->gen[j->slot]++;
    dwcp_pump_touch(j, now);
    if (j->a != NULL && dwcp_aead_begin(j->a, NULL, 0) != 0) {
        dwcp_pump_finish(p, j, DWCP_PS_EVP, 0);
        return 1;
    }
    if (j->n == 0) {
        j->want = 0;
        j->done = 0;
        if (j->a == NULL) {
            dwcp_pump_finish(p, j, DWCP_PS_OK, 0);
            return 1;
        }
        j->phase = 2;
        j->want = 16;
    }
    return 0;
}

static dwcp_pjob *dwcp_pump_take_incoming(dwcp_pump *p) {
    dwcp_pjob *list;
    pthread_mutex_lock(&p->mu);
    list = p->incoming;
    p->incoming = NULL;
    p->wakeups++;
    pthread_mutex_unlock(&p->mu);
    return list;
}

/* ms until the earliest deadline of the active jobs (rounded up), or -1. */
static int dwcp_pump_timeout_ms(dwcp_pump *p, int64_t now) {
    int64_t best = -1;
    for (int s = 0; s < p->nslots; s++) {
        dwcp_pjob *j = p->active[s];
        if (j == NULL || j->deadline == 0 || j->cancelling) continue;
        int64_t left = j->deadline - now;
        if (left < 0) left = 0;
        if (best < 0 || left < best) best = left;
    }
    if (best < 0) return -1;
    return (int)((best + 999999) / 1000000);
}

static int64_t dwcp_pwrite_all(int fd, const uint8_t *b, int64_t n, int64_t off, int *err) {
    int64_t w = 0;
    while (w < n) {
        ssize_t r = pwrite(fd, b + w, (size_t)(n - w), off + w);
        if (r < 0) {
            if (errno == EINTR) continue;
            *err = errno;
            break;
        }
        if (r == 0) {
            *err = ENOSPC;
            break;
        }
        w += r;
    }
    return w;
}

/* The current piece of a receive is complete: the tag is checked (the job finishes), or the block is
 * opened and hashed and, with ``write_here``, pwritten and the next piece set up.  1 when the job
 * finished, 0 when the next piece is set up, 2 when the hashed block still waits for its write. */
static int dwcp_pump_piece_done(dwcp_pump *p, dwcp_pjob *j, int write_here) {
    int err = 0, rc;
    if (j->phase == 2) {
        dwcp_pump_tag_ready(p, j);
        return 1;
    }
    rc = dwcp_pump_block_ready(p, j);
    if (rc != 0) {
        dwcp_pump_finish(p, j, rc, 0);
        return 1;
    }
    if (!write_here) return 2;
    if (dwcp_pwrite_all(j->file, dwcp_pump_slot(p, j->slot), j->want, j->off + j->done, &err) < j->want) {
        dwcp_pump_finish(p, j, DWCP_PS_FILE, err);
        return 1;
    }
    return dwcp_pump_next(p, j);
}

/* -- sends ------------------------------------------------------------------------------------ */

/* Seal the next block of the payload into the job's slot and make it the piece to send.  0 or EVP. */
static int dwcp_pump_seal_block(dwcp_pump *p, dwcp_pjob *j) {
    uint8_t *sp = dwcp_pump_slot(p, j->slot);
    j->want = j->n - j->done < (int64_t)p->block ? j->n - j->done : (int64_t)p->block;
    if (dwcp_aead_update(j->a, sp, j->src + j->done, (size_t)j->want) != 0) return DWCP_PS_EVP;
    j->cur = sp;
    j->got = 0;
    return 0;
}

/* The payload is sealed: its tag is the last piece.  0 or EVP. */
static int dwcp_pump_seal_tag(dwcp_pjob *j) {
    if (dwcp_aead_finish(j->a, j->tag) != 0) return DWCP_PS_EVP;
    j->phase = DWCP_SP_TAG;
    j->cur = j->tag;
    j->want = 16;
    j->got = 0;
    return 0;
}

/* The current piece is sent: set up the next.  1 when the job is finished, else 0. */
static int dwcp_pump_send_next(dwcp_pump *p, dwcp_pjob *j) {
    int rc = 0;
    switch (j->phase) {
    case DWCP_SP_HDR:
        if (j->a == NULL) {
            if (j->n == 0) break;
            j->phase = DWCP_SP_PLAIN;
            j->cur = j->src;
            j->want = j->n;
            j->got = 0;
            return 0;
        }
        if (j->n == 0) {
            rc = dwcp_pump_seal_tag(j);
        } else {
            j->phase = DWCP_SP_SEALED;
            rc = dwcp_pump_seal_block(p, j);
        }
        if (rc == 0) return 0;
        dwcp_pump_finish(p, j, rc, 0);
        return 1;
    case DWCP_SP_PLAIN:
        j->done = j->n;
        break;
    case DWCP_SP_SEALED:
        j->done += j->want; /* the slot is the kernel's no more: the next block may overwrite it */
        rc = j->done < j->n ? dwcp_pump_seal_block(p, j) : dwcp_pump_seal_tag(j);
        if (rc == 0) return 0;
        dwcp_pump_finish(p, j, rc, 0);
        return 1;
    default: /* the tag */
        break;
    }
    dwcp_pump_finish(p, j, DWCP_PS_OK, 0);
    return 1;
}

/* A send job's first step: 0 to go on, 1 when already finished. */
static int dwcp_pump_begin_send(dwcp_pump *p, dwcp_pjob *j, int64_t now) {
    j->done = j->got = j->k = 0;
    j->cancelling = 0;
    p->active[j->slot] = j;
    p->gen[j->slot]++;
    dwcp_pump_touch(j, now);
    if (j->a != NULL && dwcp_aead_begin(j->a, NULL, 0) != 0) {
        dwcp_pump_finish(p, j, DWCP_PS_EVP, 0);
        return 1;
    }
    j->phase = DWCP_SP_HDR;
    j->cur = j->hdr;
    j->want = j->hlen;
    if (j->hlen == 0) return dwcp_pump_send_next(p, j);
    return 0;
}

/* The bytes of the piece that were sent count, for a failed send's "done of n": payload bytes only. */
static inline void dwcp_pump_send_partial(dwcp_pjob *j) {
    if (j->phase == DWCP_SP_PLAIN) j->done = j->got;
}

/* -- epoll ------------------------------------------------------------------------------------ */

/* Send what the socket takes for the job; finish it on completion or failure. */
static void dwcp_pump_epoll_send(dwcp_pump *p, dwcp_pjob *j) {
    int moved = 0;
    for (;;) {
        if (j->got == j->want) { /* an empty piece (a zero-length header) */
            if (dwcp_pump_send_next(p, j)) return;
            continue;
        }
        ssize_t r = send(j->sock, j->cur + j->got, (size_t)(j->want - j->got), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r > 0) {
            moved = 1;
            j->got += r;
            dwcp_pump_count(p, r);
            if (j->got < j->want) continue;
            if (dwcp_pump_send_next(p, j)) return;
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        dwcp_pump_send_partial(j);
        dwcp_pump_finish(p, j, DWCP_PS_SOCK, r < 0 ? errno : EPIPE);
        return;
    }
    if (moved) dwcp_pump_touch(j, dwcp_pump_now());
}

/* Read what the socket has for the job; finish it on completion or failure. */
static void dwcp_pump_epoll_progress(dwcp_pump *p, dwcp_pjob *j) {
    int moved = 0;
    for (;;) {
        uint8_t *dst = j->phase == 2 ? j->tag : dwcp_pump_slot(p, j->slot);
        ssize_t r = recv(j->sock, dst + j->got, (size_t)(j->want - j->got), MSG_DONTWAIT);
        if (r > 0) {
            moved = 1;
            j->got += r;
            dwcp_pump_count(p, r);
            if (j->got < j->want) continue;
            if (dwcp_pump_piece_done(p, j, 1)) return;
            continue;
        }
        if (r == 0) {
            dwcp_pump_peer_closed(p, j);
            return;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (j->phase == 0) j->done += j->got;
        dwcp_pump_finish(p, j, DWCP_PS_SOCK, errno);
        return;
    }
    if (moved) dwcp_pump_touch(j, dwcp_pump_now());
}

static void dwcp_pump_epoll_start(dwcp_pump *p, dwcp_pjob *j) {
    struct epoll_event ev;
    if (j->dir == DWCP_DIR_SEND ? dwcp_pump_begin_send(p, j, dwcp_pump_now()) : dwcp_pump_begin(p, j, dwcp_pump_now()))
        return;
    memset(&ev, 0, sizeof ev);
    ev.events = j->dir == DWCP_DIR_SEND ? EPOLLOUT : EPOLLIN;
    ev.data.ptr = j;
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, j->sock, &ev) != 0 &&
        (errno != EEXIST || epoll_ctl(p->epfd, EPOLL_CTL_MOD, j->sock, &ev) != 0)) {
        dwcp_pump_finish(p, j, DWCP_PS_SOCK, errno); /* (its EPOLL_CTL_DEL fails harmlessly) */
        return;
    }
    if (j->dir == DWCP_DIR_SEND)
        dwcp_pump_epoll_send(p, j); /* the socket has room, most likely */
    else
        dwcp_pump_epoll_progress(p, j); /* the bytes may be there already */
}

static void dwcp_pump_expire(dwcp_pump *p, int64_t now) {
    for (int s = 0; s < p->nslots; s++) {
        dwcp_pjob *j = p->active[s];
        if (j == NULL || j->deadline == 0 || j->cancelling || now < j->deadline) continue;
        if (p->kind == DWCP_PK_EPOLL) {
            if (j->dir == DWCP_DIR_SEND)
                dwcp_pump_send_partial(j);
            else if (j->phase == 0)
                j->done += j->got;
            dwcp_pump_finish(p, j, DWCP_PS_TIMEOUT, 0);
        } else if ((j->ud & 3) == DWCP_UOP_RECV) { /* a write is never cancelled: it ends by itself */
            struct io_uring_sqe *sqe = dwcp_uring_get_sqe(&p->ring);
            if (sqe == NULL) return; /* next round */
            dwcp_prep_rw(sqe, DWCP_OP_ASYNC_CANCEL, -1, NULL, 0, 0,
                         ((uint64_t)p->gen[s] << 16) | ((uint64_t)s << 2) | DWCP_UOP_CANCEL);
            dwcp_sqe_set_addr(sqe, j->ud);
            j->cancelling = 1;
        }
    }
}

static void dwcp_pump_epoll_loop(dwcp_pump *p) {
    struct epoll_event evs[64];
    while (!p->stop) {
        int n = epoll_wait(p->epfd, evs, 64, dwcp_pump_timeout_ms(p, dwcp_pump_now()));
        if (n < 0 && errno != EINTR) {
            p->loop_err = errno;
            break;
        }
        int woke = 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                uint64_t v;
                if (read(p->wake_fd, &v, sizeof v) < 0) { /* EAGAIN: another wake took it */
                }
                woke = 1;
            } else if (((dwcp_pjob *)evs[i].data.ptr)->dir == DWCP_DIR_SEND) {
                dwcp_pump_epoll_send(p, (dwcp_pjob *)evs[i].data.ptr);
            } else {
                dwcp_pump_epoll_progress(p, (dwcp_pjob *)evs[i].data.ptr);
            }
        }
        if (woke) {
            dwcp_pjob *j = dwcp_pump_take_incoming(p);
            while (j != NULL) {
                dwcp_pjob *next = j->next;
                dwcp_pump_epoll_start(p, j);
                j = next;
            }
        }
        dwcp_pump_expire(p, dwcp_pump_now());
    }
}

/* -- io_uring --------------------------------------------------------------------------------- */

static inline uint64_t dwcp_pump_ud(dwcp_pump *p, int slot, int op) {
    return ((uint64_t)p->gen[slot] << 16) | ((uint64_t)slot << 2) | (uint64_t)op;
}

/* Queue the job's next operation: a RECV of the rest of its block (or tag) or a WRITE of its block.
 * 0, or -1 when the SQ is full (cannot happen: it has room for every slot's operation and a cancel). */
static int dwcp_pump_uring_queue(dwcp_pump *p, dwcp_pjob *j, int op) {
    struct io_uring_sqe *sqe = dwcp_uring_get_sqe(&p->ring);
    if (sqe == NULL) return -1;
    j->ud = dwcp_pump_ud(p, j->slot, op);
    if (j->dir == DWCP_DIR_SEND) { /* the socket op of a send is a SEND (its ud's op is RECV: "the wait") */
        int64_t len = j->want - j->got; /* one SEND moves at most MAX_RW_COUNT; the rest goes next */
        if (len > 0x7ffff000) len = 0x7ffff000;
        dwcp_prep_rw(sqe, DWCP_OP_SEND, j->sock, j->cur + j->got, (uint32_t)len, 0, j->ud);
        dwcp_set_msg_flags(sqe, MSG_NOSIGNAL);
        return 0;
    }
    if (op == DWCP_UOP_RECV) {
        uint8_t *dst = j->phase == 2 ? j->tag : dwcp_pump_slot(p, j->slot);
        dwcp_prep_rw(sqe, DWCP_OP_RECV, j->sock, dst + j->got, (uint32_t)(j->want - j->got), 0, j->ud);
    } else {
        uint8_t *src = dwcp_pump_slot(p, j->slot) + j->wrote;
        dwcp_prep_rw(sqe, p->registered ? DWCP_OP_WRITE_FIXED : DWCP_OP_WRITE, j->file, src,
                     (uint32_t)(j->want - j->wrote), (uint64_t)(j->off + j->done + j->wrote), j->ud);
        if (p->registered) dwcp_set_buf_index(sqe, (uint16_t)j->slot);
    }
    return 0;
}

static void dwcp_pump_uring_arm_wake(dwcp_pump *p) {
    struct io_uring_sqe *sqe = dwcp_uring_get_sqe(&p->ring);
    if (sqe != NULL) dwcp_prep_rw(sqe, DWCP_OP_READ, p->wake_fd, &p->wake_buf, 8, 0, DWCP_UD_WAKE);
}

static void dwcp_pump_uring_result(dwcp_pump *p, uint64_t ud, int32_t res) {
    int slot = (int)((ud >> 2) & 0x3fff), op = (int)(ud & 3);
    dwcp_pjob *j;
    if (op == DWCP_UOP_CANCEL || slot >= p->nslots) return;
    j = p->active[slot];
    if (j == NULL || j->ud != ud) return; /* stale */
    if (j->dir == DWCP_DIR_SEND) {
        if (res == -ECANCELED && j->cancelling) {
            dwcp_pump_send_partial(j);
            dwcp_pump_finish(p, j, DWCP_PS_TIMEOUT, 0);
            return;
        }
        j->cancelling = 0;
        if (res == -EINTR || res == -EAGAIN) {
            dwcp_pump_uring_queue(p, j, DWCP_UOP_RECV);
            return;
        }
        if (res <= 0) {
            dwcp_pump_send_partial(j);
            dwcp_pump_finish(p, j, DWCP_PS_SOCK, res < 0 ? -res : EPIPE);
            return;
        }
        j->got += res;
        dwcp_pump_count(p, res);
        dwcp_pump_touch(j, dwcp_pump_now());
        while (j->got == j->want) {
            if (dwcp_pump_send_next(p, j)) return;
        }
        dwcp_pump_uring_queue(p, j, DWCP_UOP_RECV);
        return;
    }
    if (op == DWCP_UOP_RECV) {
        if (res == -ECANCELED && j->cancelling) {
            if (j->phase == 0) j->done += j->got;
            dwcp_pump_finish(p, j, DWCP_PS_TIMEOUT, 0);
            return;
        }
        j->cancelling = 0;
        if (res == -EINTR || res == -EAGAIN) {
            dwcp_pump_uring_queue(p, j, DWCP_UOP_RECV);
            return;
        }
        if (res < 0) {
            if (j->phase == 0) j->done += j->got;
            dwcp_pump_finish(p, j, DWCP_PS_SOCK, -res);
            return;
        }
        if (res == 0) {
            dwcp_pump_peer_closed(p, j);
            return;
        }
        j->got += res;
        dwcp_pump_count(p, res);
        dwcp_pump_touch(j, dwcp_pump_now());
        if (j->got < j->want) {
            dwcp_pump_uring_queue(p, j, DWCP_UOP_RECV);
            return;
        }
        switch (dwcp_pump_piece_done(p, j, j->sync_write)) {
        case 0: /* written here: the next block */
            dwcp_pump_uring_queue(p, j, DWCP_UOP_RECV);
            return;
        case 2: /* hashed: io_uring writes it */
            j->wrote = 0;
            dwcp_pump_uring_queue(p, j, DWCP_UOP_WRITE);
            return;
        default: /* finished */
            return;
        }
    }
    /* a write */
    if (res == -EINTR || res == -EAGAIN) {
        dwcp_pump_uring_queue(p, j, DWCP_UOP_WRITE);
        return;
    }
    if (res <= 0) {
        dwcp_pump_finish(p, j, DWCP_PS_FILE, res == 0 ? ENOSPC : -res);
        return;
    }
    j->wrote += res;
    if (j->wrote < j->want) {
        dwcp_pump_uring_queue(p, j, DWCP_UOP_WRITE);
        return;
    }
    if (dwcp_pump_next(p, j)) return;
    dwcp_pump_touch(j, dwcp_pump_now());
    dwcp_pump_uring_queue(p, j, DWCP_UOP_RECV);
}

static void dwcp_pump_uring_loop(dwcp_pump *p) {
    uint64_t ud[128];
    int32_t res[128];
    uint32_t fl[128];
    dwcp_pump_uring_arm_wake(p);
    while (!p->stop) {
        dwcp_getevents_arg arg;
        dwcp_kernel_timespec ts;
        int tmo = dwcp_pump_timeout_ms(p, dwcp_pump_now());
        unsigned flags = IORING_ENTER_GETEVENTS;
        const void *argp = NULL;
        size_t argsz = 0;
        unsigned pending = dwcp_uring_flush(&p->ring);
        if (tmo >= 0) {
            memset(&arg, 0, sizeof arg);
            ts.tv_sec = tmo / 1000;
            ts.tv_nsec = (long long)(tmo % 1000) * 1000000LL;
            arg.ts = (uint64_t)(uintptr_t)&ts;
            flags |= IORING_ENTER_EXT_ARG;
            argp = &arg;
            argsz = sizeof arg;
        }
        int r = dwcp_uring_enter(&p->ring, pending, dwcp_uring_cq_ready(&p->ring) ? 0 : 1, flags, argp, argsz);
        if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN) {
            p->loop_err = -r;
            break;
        }
        unsigned n;
        while ((n = dwcp_uring_reap(&p->ring, ud, res, fl, 128)) > 0) {
            for (unsigned i = 0; i < n; i++) {
                if (ud[i] == DWCP_UD_WAKE) {
                    dwcp_pjob *j = dwcp_pump_take_incoming(p);
                    while (j != NULL) {
                        dwcp_pjob *next = j->next;
                        if (j->dir == DWCP_DIR_SEND) {
                            if (!dwcp_pump_begin_send(p, j, dwcp_pump_now())) dwcp_pump_uring_queue(p, j, DWCP_UOP_RECV);
                        } else if (!dwcp_pump_begin(p, j, dwcp_pump_now())) {
                            dwcp_pump_uring_queue(p, j, DWCP_UOP_RECV);
                        }
                        j = next;
                    }
                    if (!p->stop) dwcp_pump_uring_arm_wake(p);
                } else {
                    dwcp_pump_uring_result(p, ud[i], res[i]);
                }
            }
        }
        dwcp_pump_expire(p, dwcp_pump_now());
    }
    /* stopping: cancel what is in flight and wait (bounded) until the kernel lets go of the slots */
    int inflight = 0;
    for (int s = 0; s < p->nslots; s++) {
        dwcp_pjob *j = p->active[s];
        if (j == NULL) continue;
        struct io_uring_sqe *sqe = dwcp_uring_get_sqe(&p->ring);
        if (sqe != NULL) {
            dwcp_prep_rw(sqe, DWCP_OP_ASYNC_CANCEL, -1, NULL, 0, 0, dwcp_pump_ud(p, s, DWCP_UOP_CANCEL));
            dwcp_sqe_set_addr(sqe, j->ud);
        }
        inflight++;
    }
    int64_t give_up = dwcp_pump_now() + 5000000000LL;
    while (inflight > 0 && dwcp_pump_now() < give_up) {
        dwcp_getevents_arg arg;
        dwcp_kernel_timespec ts = {0, 100000000LL};
        memset(&arg, 0, sizeof arg);
        arg.ts = (uint64_t)(uintptr_t)&ts;
        dwcp_uring_enter(&p->ring, dwcp_uring_flush(&p->ring), 1, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg,
                         sizeof arg);
        unsigned n = dwcp_uring_reap(&p->ring, ud, res, fl, 128);
        for (unsigned i = 0; i < n; i++) {
            int slot = (int)((ud[i] >> 2) & 0x3fff), op = (int)(ud[i] & 3);
            if (ud[i] == DWCP_UD_WAKE || op == DWCP_UOP_CANCEL || slot >= p->nslots) continue;
            dwcp_pjob *j = p->active[slot];
            if (j != NULL && j->ud == ud[i]) {
                if (j->dir == DWCP_DIR_SEND)
                    dwcp_pump_send_partial(j);
                else if (j->phase == 0)
                    j->done += j->got;
                dwcp_pump_finish(p, j, DWCP_PS_CLOSED, 0);
                inflight--;
            }
        }
    }
    if (inflight > 0) p->slots = NULL; /* the kernel may still write them: leak rather than reuse */
}

/* -- the thread and its callers ----------------------------------------------------------------- */

static void *dwcp_pump_main(void *arg) {
    dwcp_pump *p = (dwcp_pump *)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the Python main thread's */
    pthread_mutex_lock(&p->mu);
    p->tid = (long)syscall(SYS_gettid);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (p->kind == DWCP_PK_URING)
        dwcp_pump_uring_loop(p);
    else
        dwcp_pump_epoll_loop(p);
    /* whatever is still active or queued is finished as closed */
    for (int s = 0; s < p->nslots; s++) {
        dwcp_pjob *j = p->active[s];
        if (j == NULL) continue;
        if (j->dir == DWCP_DIR_SEND) dwcp_pump_send_partial(j);
        dwcp_pump_finish(p, j, DWCP_PS_CLOSED, p->loop_err);
    }
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    for (dwcp_pjob *j = p->incoming; j != NULL;) {
        dwcp_pjob *next = j->next;
        j->status = DWCP_PS_CLOSED;
        j->err = p->loop_err;
        j->finished = 1;
        j = next;
    }
    p->incoming = NULL;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Probe that the running kernel has the opcodes the io_uring loop uses.  0, or -errno. */
static int dwcp_pump_uring_probe(dwcp_uring *r) {
    dwcp_probe pr;
    static const int need[] = {DWCP_OP_RECV,  DWCP_OP_SEND,         DWCP_OP_WRITE,
                               DWCP_OP_WRITE_FIXED, DWCP_OP_READ, DWCP_OP_ASYNC_CANCEL};
    if (!(r->features & IORING_FEAT_EXT_ARG)) return -EOPNOTSUPP;
    memset(&pr, 0, sizeof pr);
    int rc = dwcp_sys_register(r->fd, IORING_REGISTER_PROBE, &pr, 256);
    if (rc < 0) return rc;
    for (unsigned i = 0; i < sizeof need / sizeof need[0]; i++)
        if (need[i] > pr.last_op || !(pr.ops[need[i]].flags & IO_URING_OP_SUPPORTED)) return -EOPNOTSUPP;
    return 0;
}

/* Set up and start the loop.  0, or -errno with everything undone (a failed io_uring setup or
 * probe is reported as such: the caller decides whether to fall back, and says so). */
static int dwcp_pump_start(dwcp_pump *p, int kind, int nslots, size_t block, int do_register) {
    struct epoll_event ev;
    int rc;
    memset(p, 0, sizeof *p);
    p->kind = kind;
    p->nslots = nslots;
    p->block = block;
    p->wake_fd = p->epfd = -1;
    p->ring.fd = -1;
    p->free_slots = nslots >= 64 ? ~0ULL : ((1ULL << nslots) - 1);
    p->slots_bytes = (size_t)nslots * block;
    p->slots = (uint8_t *)mmap(NULL, p->slots_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p->slots == MAP_FAILED) {
        p->slots = NULL;
        return -errno;
    }
    /* io_uring's READ of it must wait, so it blocks there; epoll drains it without waiting */
    p->wake_fd = eventfd(0, EFD_CLOEXEC | (kind == DWCP_PK_EPOLL ? EFD_NONBLOCK : 0));
    if (p->wake_fd < 0) goto fail_errno;
    if (kind == DWCP_PK_EPOLL) {
        p->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (p->epfd < 0) goto fail_errno;
        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLIN;
        ev.data.ptr = NULL;
        if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->wake_fd, &ev) != 0) goto fail_errno;
    } else {
        rc = dwcp_uring_init(&p->ring, (unsigned)(2 * nslots + 8), 0);
        if (rc < 0) goto fail_rc;
        rc = dwcp_pump_uring_probe(&p->ring);
        if (rc < 0) goto fail_rc;
        struct iovec iov[DWCP_PUMP_MAX];
        for (int s = 0; s < nslots; s++) {
            iov[s].iov_base = dwcp_pump_slot(p, s);
            iov[s].iov_len = block;
        }
        rc = do_register ? dwcp_sys_register(p->ring.fd, DWCP_REGISTER_BUFFERS, iov, (unsigned)nslots) : -1;
        p->registered = rc >= 0;
        p->register_err = rc < -1 ? -rc : 0; /* ENOMEM: over RLIMIT_MEMLOCK; plain writes then */
    }
    if (pthread_mutex_init(&p->mu, NULL) != 0 || pthread_cond_init(&p->cv, NULL) != 0) {
        rc = -ENOMEM;
        goto fail_rc;
    }
    rc = pthread_create(&p->thread, NULL, dwcp_pump_main, p);
    if (rc != 0) {
        rc = -rc;
        goto fail_rc;
    }
    p->thread_started = 1;
    pthread_mutex_lock(&p->mu);
    while (p->tid == 0) pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    return 0;
fail_errno:
    rc = -errno;
fail_rc:
    if (p->ring.fd >= 0) dwcp_uring_unmap(&p->ring);
    if (p->epfd >= 0) close(p->epfd);
    if (p->wake_fd >= 0) close(p->wake_fd);
    if (p->slots != NULL) munmap(p->slots, p->slots_bytes);
    p->slots = NULL;
    p->epfd = p->wake_fd = -1;
    return rc;
}

static void dwcp_pump_wake(dwcp_pump *p) {
    uint64_t one = 1;
    if (write(p->wake_fd, &one, sizeof one) < 0) { /* EAGAIN: the counter is full, a wake is pending */
    }
}

/* Run one job to its end (called without the GIL).  The job's status says how it ended. */
static void dwcp_pump_run(dwcp_pump *p, dwcp_pjob *j) {
    pthread_mutex_lock(&p->mu);
    while (!p->stop && p->free_slots == 0) pthread_cond_wait(&p->cv, &p->mu);
    if (p->stop) {
        pthread_mutex_unlock(&p->mu);
        j->status = DWCP_PS_CLOSED;
        j->err = 0;
        return;
    }
    j->slot = __builtin_ctzll(p->free_slots);
    p->free_slots &= ~(1ULL << j->slot);
    j->finished = 0;
    j->next = p->incoming;
    p->incoming = j;
    pthread_mutex_unlock(&p->mu);
    dwcp_pump_wake(p);
    pthread_mutex_lock(&p->mu);
    while (!j->finished) pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

/* Stop the loop: every job still running or queued ends as CLOSED.  Idempotent. */
static void dwcp_pump_stop(dwcp_pump *p) {
    if (!p->thread_started) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    dwcp_pump_wake(p);
    pthread_join(p->thread, NULL);
    p->thread_started = 0;
}

/* Free everything, once no caller is inside dwcp_pump_run any more.  Idempotent. */
static void dwcp_pump_free(dwcp_pump *p) {
    dwcp_pump_stop(p);
    if (p->wake_fd < 0) return;
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    if (p->ring.fd >= 0) dwcp_uring_unmap(&p->ring);
    if (p->epfd >= 0) close(p->epfd);
    close(p->wake_fd);
    if (p->slots != NULL) munmap(p->slots, p->slots_bytes);
    p->slots = NULL;
    p->epfd = p->wake_fd = -1;
}

#endif
