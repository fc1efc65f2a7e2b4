/* A minimal io_uring core for dwcp/_fast/uring.pyx: raw syscalls, no liburing.
 *
 * Struct layouts come from <linux/io_uring.h> (any header since Linux 5.7,
 * which has IORING_OP_SPLICE).  Everything newer that we use is defined
 * here when the header lacks it, so the build never depends on the build
 * host's header being as new as the kernel the wheel runs on; what the
 * running kernel supports is found at run time (io_uring_params.features,
 * IORING_REGISTER_PROBE).
 *
 * Memory ordering (Documentation of io_uring(7) and liburing's barrier.h):
 *   - the SQ tail is ours: SQEs and array slots are written first, then the
 *     tail is published with a release store; the kernel's SQ head is read
 *     with an acquire load;
 *   - the CQ tail is the kernel's: read with an acquire load before a CQE is
 *     read; our CQ head is published with a release store after the CQEs
 *     are copied out, which hands the slots back to the kernel.
 * static inline only: this header is included by one extension. */
#ifndef DWCP_URING_H
#define DWCP_URING_H

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/io_uring.h>

/* The syscall numbers are the same on every architecture since 5.1 (the
 * unified table), alpha excepted. */
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

/* Opcodes are an enum in the header (no #ifdef possible): the ABI numbers,
 * fixed forever, under our own names. */
#define DWCP_OP_NOP 0
#define DWCP_OP_READ_FIXED 4
#define DWCP_OP_TIMEOUT 11
#define DWCP_OP_ASYNC_CANCEL 14
#define DWCP_OP_READ 22
#define DWCP_OP_WRITE 23
#define DWCP_OP_SEND 26
#define DWCP_OP_RECV 27
#define DWCP_OP_SPLICE 30
#define DWCP_OP_SEND_ZC 47

#ifndef IORING_FEAT_SINGLE_MMAP
#define IORING_FEAT_SINGLE_MMAP (1U << 0)
#endif
#ifndef IORING_FEAT_NODROP
#define IORING_FEAT_NODROP (1U << 1)
#endif
#ifndef IORING_FEAT_EXT_ARG
#define IORING_FEAT_EXT_ARG (1U << 8)
#endif
#ifndef IORING_ENTER_GETEVENTS
#define IORING_ENTER_GETEVENTS (1U << 0)
#endif
#ifndef IORING_ENTER_EXT_ARG
#define IORING_ENTER_EXT_ARG (1U << 3)
#endif
#ifndef IORING_SQ_CQ_OVERFLOW
#define IORING_SQ_CQ_OVERFLOW (1U << 1)
#endif
#ifndef IORING_CQE_F_MORE
#define IORING_CQE_F_MORE (1U << 1)
#endif
#ifndef IORING_CQE_F_NOTIF
#define IORING_CQE_F_NOTIF (1U << 3)
#endif
#ifndef IORING_REGISTER_PROBE
#define IORING_REGISTER_PROBE 8
#endif
#ifndef IO_URING_OP_SUPPORTED
#define IO_URING_OP_SUPPORTED (1U << 0)
#endif
#define DWCP_REGISTER_BUFFERS 0
#define DWCP_UNREGISTER_BUFFERS 1

/* struct io_uring_getevents_arg and __kernel_timespec (5.11), by layout. */
typedef struct {
    uint64_t sigmask;
    uint32_t sigmask_sz;
    uint32_t pad; /* min_wait_usec in 6.12+; 0 = unused */
    uint64_t ts;
} dwcp_getevents_arg;
typedef struct {
    int64_t tv_sec;
    long long tv_nsec;
} dwcp_kernel_timespec;

/* struct io_uring_probe with room for every opcode (ops_len <= 256). */
typedef struct {
    uint8_t last_op;
    uint8_t ops_len;
    uint16_t resv;
    uint32_t resv2[3];
    struct {
        uint8_t op;
        uint8_t resv;
        uint16_t flags;
        uint32_t resv2;
    } ops[256];
} dwcp_probe;

typedef struct {
    int fd;
    unsigned features;
    unsigned sq_entries, cq_entries;
    /* SQ ring (kernel memory) */
    unsigned *sq_khead, *sq_ktail, *sq_kflags, *sq_array;
    unsigned sq_mask;
    unsigned sqe_tail; /* our next SQE slot; published to *sq_ktail on submit */
    struct io_uring_sqe *sqes;
    /* CQ ring */
    unsigned *cq_khead, *cq_ktail;
    unsigned cq_mask;
    struct io_uring_cqe *cqes;
    /* mappings */
    void *sq_map, *cq_map, *sqe_map;
    size_t sq_map_sz, cq_map_sz, sqe_map_sz;
} dwcp_uring;

static inline int dwcp_sys_setup(unsigned entries, struct io_uring_params *p) {
    return (int)syscall(__NR_io_uring_setup, entries, p);
}
static inline int dwcp_sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags,
                                 const void *arg, size_t argsz) {
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
}
/* io_uring_register, or -errno. */
static inline int dwcp_sys_register(int fd, unsigned opcode, const void *arg, unsigned nr_args) {
    int ret = (int)syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
    return ret < 0 ? -errno : ret;
}

static inline void dwcp_uring_unmap(dwcp_uring *r) {
    if (r->sqe_map && r->sqe_map != MAP_FAILED) munmap(r->sqe_map, r->sqe_map_sz);
    if (r->cq_map && r->cq_map != MAP_FAILED && r->cq_map != r->sq_map) munmap(r->cq_map, r->cq_map_sz);
    if (r->sq_map && r->sq_map != MAP_FAILED) munmap(r->sq_map, r->sq_map_sz);
    r->sq_map = r->cq_map = r->sqe_map = NULL;
    if (r->fd >= 0) close(r->fd);
    r->fd = -1;
}

/* 0, or -errno (with everything undone). */
static inline int dwcp_uring_init(dwcp_uring *r, unsigned entries, unsigned flags) {
    struct io_uring_params p;
    int err;
    memset(r, 0, sizeof *r);
    memset(&p, 0, sizeof p);
    p.flags = flags;
    r->fd = dwcp_sys_setup(entries, &p);
    if (r->fd < 0) {
        r->fd = -1;
        return -errno;
    }
    r->features = p.features;
    r->sq_entries = p.sq_entries;
    r->cq_entries = p.cq_entries;
    r->sq_map_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_map_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (r->cq_map_sz > r->sq_map_sz) r->sq_map_sz = r->cq_map_sz;
        r->cq_map_sz = r->sq_map_sz;
    }
    r->sq_map = mmap(NULL, r->sq_map_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                     IORING_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED) goto fail;
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        r->cq_map = r->sq_map;
    } else {
        r->cq_map = mmap(NULL, r->cq_map_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                         IORING_OFF_CQ_RING);
        if (r->cq_map == MAP_FAILED) goto fail;
    }
    r->sqe_map_sz = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqe_map = mmap(NULL, r->sqe_map_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                      IORING_OFF_SQES);
    if (r->sqe_map == MAP_FAILED) goto fail;
    char *sq = (char *)r->sq_map, *cq = (char *)r->cq_map;
    r->sq_khead = (unsigned *)(sq + p.sq_off.head);
    r->sq_ktail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_kflags = (unsigned *)(sq + p.sq_off.flags);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->sq_mask = *(unsigned *)(sq + p.sq_off.ring_mask);
    r->sqes = (struct io_uring_sqe *)r->sqe_map;
    r->cq_khead = (unsigned *)(cq + p.cq_off.head);
    r->cq_ktail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = *(unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    r->sqe_tail = *r->sq_ktail;
    return 0;
fail:
    err = -errno;
    dwcp_uring_unmap(r);
    return err;
}

/* SQEs queued and not yet consumed by the kernel (ours minus its head). */
static inline unsigned dwcp_uring_sq_ready(const dwcp_uring *r) {
    return r->sqe_tail - __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
}

/* The next free SQE, zeroed, or NULL if the SQ is full. */
static inline struct io_uring_sqe *dwcp_uring_get_sqe(dwcp_uring *r) {
    if (dwcp_uring_sq_ready(r) >= r->sq_entries) return NULL;
    unsigned idx = r->sqe_tail & r->sq_mask;
    struct io_uring_sqe *sqe = &r->sqes[idx];
    memset(sqe, 0, sizeof *sqe);
    r->sq_array[idx] = idx;
    r->sqe_tail++;
    return sqe;
}

/* Publish the queued SQEs; returns how many the kernel has not consumed. */
static inline unsigned dwcp_uring_flush(dwcp_uring *r) {
    __atomic_store_n(r->sq_ktail, r->sqe_tail, __ATOMIC_RELEASE);
    return dwcp_uring_sq_ready(r);
}

static inline void dwcp_prep_rw(struct io_uring_sqe *sqe, uint8_t op, int fd, const void *addr, uint32_t len,
                                uint64_t off, uint64_t user_data) {
    sqe->opcode = op;
    sqe->fd = fd;
    sqe->off = off;
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->len = len;
    sqe->user_data = user_data;
}

static inline void dwcp_prep_splice(struct io_uring_sqe *sqe, int fd_in, int64_t off_in, int fd_out,
                                    int64_t off_out, uint32_t nbytes, uint32_t flags, uint64_t user_data) {
    dwcp_prep_rw(sqe, DWCP_OP_SPLICE, fd_out, NULL, nbytes, (uint64_t)off_out, user_data);
    sqe->splice_off_in = (uint64_t)off_in;
    sqe->splice_fd_in = fd_in;
    sqe->splice_flags = flags;
}

static inline void dwcp_sqe_set_addr(struct io_uring_sqe *sqe, uint64_t a) { sqe->addr = a; }
static inline uint64_t dwcp_sqe_ud(const dwcp_uring *r, unsigned pos) { return r->sqes[pos & r->sq_mask].user_data; }
static inline void dwcp_set_msg_flags(struct io_uring_sqe *sqe, uint32_t flags) { sqe->msg_flags = flags; }
static inline void dwcp_set_buf_index(struct io_uring_sqe *sqe, uint16_t i) { sqe->buf_index = i; }
static inline void dwcp_set_timeout_flags(struct io_uring_sqe *sqe, uint32_t f) { sqe->timeout_flags = f; }

/* Copy up to max CQEs out and hand their slots back; returns the count. */
static inline unsigned dwcp_uring_reap(dwcp_uring *r, uint64_t *ud, int32_t *res, uint32_t *flags, unsigned max) {
    unsigned head = *r->cq_khead; /* ours: only we write it */
    unsigned tail = __atomic_load_n(r->cq_ktail, __ATOMIC_ACQUIRE);
    unsigned n = 0;
    while (head != tail && n < max) {
        const struct io_uring_cqe *c = &r->cqes[head & r->cq_mask];
        ud[n] = c->user_data;
        res[n] = c->res;
        flags[n] = c->flags;
        n++;
        head++;
    }
    __atomic_store_n(r->cq_khead, head, __ATOMIC_RELEASE);
    return n;
}

static inline unsigned dwcp_uring_cq_ready(const dwcp_uring *r) {
    return __atomic_load_n(r->cq_ktail, __ATOMIC_ACQUIRE) - *r->cq_khead;
}

static inline int dwcp_uring_cq_overflow(const dwcp_uring *r) {
    return (__atomic_load_n(r->sq_kflags, __ATOMIC_RELAXED) & IORING_SQ_CQ_OVERFLOW) != 0;
}

/* io_uring_enter, or -errno. */
static inline int dwcp_uring_enter(dwcp_uring *r, unsigned to_submit, unsigned min_complete, unsigned flags,
                                   const void *arg, size_t argsz) {
    int ret = dwcp_sys_enter(r->fd, to_submit, min_complete, flags, arg, argsz);
    return ret < 0 ? -errno : ret;
}

static inline int dwcp_monotonic_ns(int64_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return -errno;
    *out = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    return 0;
}

#endif
