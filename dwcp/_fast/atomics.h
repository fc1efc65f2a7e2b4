/* GCC __atomic helpers for the ring buffers (dwcp/_fast/ring.pyx).
 *
 * Memory ordering, in one place:
 *   - an index owned by one side (SPSC head/tail) is published with a
 *     release store after the slot it covers is written, and read by the
 *     other side with an acquire load before the slot is touched;
 *   - Vyukov's MPMC queue orders each cell through its own sequence number
 *     (acquire load / release store); the shared positions only need the
 *     CAS to be atomic, so they are read relaxed.
 * static inline only: this header is included by one extension. */
#ifndef DWCP_ATOMICS_H
#define DWCP_ATOMICS_H
#include <stdint.h>
#include <stdlib.h>  /* aligned_alloc */
#include <time.h>

static inline uint64_t dwcp_load_acq(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t dwcp_load_rlx(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void dwcp_store_rel(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline int dwcp_cas(uint64_t *p, uint64_t *expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 1, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}
static inline int32_t dwcp_load_i32(const int32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void dwcp_store_i32(int32_t *p, int32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void dwcp_add_i32(int32_t *p, int32_t v) { __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
static inline void dwcp_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
static inline void dwcp_sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* Producer and consumer indices on separate cache lines. */
typedef struct {
    uint64_t head;
    char _pad0[56];
    uint64_t tail;
    char _pad1[56];
} dwcp_spsc_idx;

typedef struct {
    uint64_t seq;
    uint64_t value;
} dwcp_mpmc_cell;

typedef struct {
    uint64_t enq;
    char _pad0[56];
    uint64_t deq;
    char _pad1[56];
} dwcp_mpmc_idx;

/* Vyukov's bounded MPMC queue. 1 on success, 0 when full/empty. */
static inline int dwcp_mpmc_put(dwcp_mpmc_idx *ix, dwcp_mpmc_cell *cells, uint64_t mask, uint64_t v) {
    uint64_t pos = dwcp_load_rlx(&ix->enq);
    for (;;) {
        dwcp_mpmc_cell *c = &cells[pos & mask];
        uint64_t seq = dwcp_load_acq(&c->seq);
        /* difference in unsigned arithmetic, then signed: no overflow UB */
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (dwcp_cas(&ix->enq, &pos, pos + 1)) {
                c->value = v;
                dwcp_store_rel(&c->seq, pos + 1);
                return 1;
            }
        } else if (dif < 0) {
            return 0;
        } else {
            pos = dwcp_load_rlx(&ix->enq);
        }
    }
}

static inline int dwcp_mpmc_get(dwcp_mpmc_idx *ix, dwcp_mpmc_cell *cells, uint64_t mask, uint64_t *v) {
    uint64_t pos = dwcp_load_rlx(&ix->deq);
    for (;;) {
        dwcp_mpmc_cell *c = &cells[pos & mask];
        uint64_t seq = dwcp_load_acq(&c->seq);
        int64_t dif = (int64_t)(seq - (pos + 1));
        if (dif == 0) {
            if (dwcp_cas(&ix->deq, &pos, pos + 1)) {
                *v = c->value;
                dwcp_store_rel(&c->seq, pos + mask + 1);
                return 1;
            }
        } else if (dif < 0) {
            return 0;
        } else {
            pos = dwcp_load_rlx(&ix->deq);
        }
    }
}
#endif
