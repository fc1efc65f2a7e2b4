/* AES-256-GCM through the process's own libcrypto (the one Python's ssl module loaded), resolved with
 * dlopen/dlsym at run time: no OpenSSL headers or -dev package at build time.  The EVP calls below are
 * OpenSSL's stable public API (1.1 and 3.x).
 *
 * One dwcp_aead is one direction of one connection: a key and a record counter.  Record i's nonce
 * is 4 zero bytes then i as a big-endian u64 (RFC 5116 style); a key is never used for 2**64
 * records, and dwcp.security.aead derives a fresh key for every connection and direction.
 */
#ifndef DWCP_AEAD_H
#define DWCP_AEAD_H

#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DWCP_AEAD_KEY 32
#define DWCP_AEAD_TAG 16
#define DWCP_EVP_CTRL_AEAD_SET_IVLEN 0x9
#define DWCP_EVP_CTRL_AEAD_GET_TAG 0x10
#define DWCP_EVP_CTRL_AEAD_SET_TAG 0x11

typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
typedef struct evp_cipher_st EVP_CIPHER;

static struct {
    int loaded;
    EVP_CIPHER_CTX *(*ctx_new)(void);
    void (*ctx_free)(EVP_CIPHER_CTX *);
    const EVP_CIPHER *(*aes_256_gcm)(void);
    int (*cipher_init)(EVP_CIPHER_CTX *, const EVP_CIPHER *, void *, const unsigned char *,
                       const unsigned char *, int);
    int (*cipher_update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int);
    int (*cipher_final)(EVP_CIPHER_CTX *, unsigned char *, int *);
    int (*ctrl)(EVP_CIPHER_CTX *, int, int, void *);
} dwcp_evp;

/* 0 on success; -1 if the library cannot be opened, -2 if a symbol is missing. */
static int dwcp_aead_load(const char *path) {
    void *h;
    if (dwcp_evp.loaded)
        return 0;
    h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return -1;
#define DWCP_SYM(field, name) \
    do { *(void **)(&dwcp_evp.field) = dlsym(h, name); if (!dwcp_evp.field) return -2; } while (0)
    DWCP_SYM(ctx_new, "EVP_CIPHER_CTX_new");
    DWCP_SYM(ctx_free, "EVP_CIPHER_CTX_free");
    DWCP_SYM(aes_256_gcm, "EVP_aes_256_gcm");
    DWCP_SYM(cipher_init, "EVP_CipherInit_ex");
    DWCP_SYM(cipher_update, "EVP_CipherUpdate");
    DWCP_SYM(cipher_final, "EVP_CipherFinal_ex");
    DWCP_SYM(ctrl, "EVP_CIPHER_CTX_ctrl");
#undef DWCP_SYM
    dwcp_evp.loaded = 1;
    return 0;
}

typedef struct {
    EVP_CIPHER_CTX *ctx;
    int enc;
    uint64_t counter; /* the next record's */
    unsigned char key[DWCP_AEAD_KEY];
} dwcp_aead;

static int dwcp_aead_init(dwcp_aead *a, const unsigned char *key, int enc) {
    memset(a, 0, sizeof(*a));
    if (!dwcp_evp.loaded)
        return -1;
    a->ctx = dwcp_evp.ctx_new();
    if (!a->ctx)
        return -1;
    a->enc = enc;
    memcpy(a->key, key, DWCP_AEAD_KEY);
    if (dwcp_evp.cipher_init(a->ctx, dwcp_evp.aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
        dwcp_evp.ctrl(a->ctx, DWCP_EVP_CTRL_AEAD_SET_IVLEN, 12, NULL) != 1)
        return -1;
    return 0;
}

static void dwcp_aead_clear(dwcp_aead *a) {
    if (a->ctx)
        dwcp_evp.ctx_free(a->ctx);
    a->ctx = NULL;
    memset(a->key, 0, sizeof(a->key));
}

/* Start the next record: its nonce, then ``aad``.  0 on success. */
static int dwcp_aead_begin(dwcp_aead *a, const unsigned char *aad, size_t aadlen) {
    unsigned char iv[12];
    int outl, i;
    uint64_t c = a->counter;
    if (c == UINT64_MAX)
        return -1;
    memset(iv, 0, 4);
    for (i = 0; i < 8; i++)
        iv[11 - i] = (unsigned char)(c >> (8 * i));
    if (dwcp_evp.cipher_init(a->ctx, NULL, NULL, a->key, iv, -1) != 1)
        return -1;
    if (aadlen && dwcp_evp.cipher_update(a->ctx, NULL, &outl, aad, (int)aadlen) != 1)
        return -1;
    a->counter = c + 1;
    return 0;
}

/* Encrypt or decrypt ``n`` bytes (in place allowed), in pieces under INT_MAX.  0 on success. */
static int dwcp_aead_update(dwcp_aead *a, unsigned char *out, const unsigned char *in, size_t n) {
    int outl;
    while (n) {
        int k = n > (1u << 30) ? (1 << 30) : (int)n;
        if (dwcp_evp.cipher_update(a->ctx, out, &outl, in, k) != 1 || outl != k)
            return -1;
        out += k;
        in += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Seal: write the record's tag.  Open: check it (0: authentic; -1: forged, corrupted or reordered). */
static int dwcp_aead_finish(dwcp_aead *a, unsigned char *tag) {
    unsigned char dummy[16];
    int outl;
    if (a->enc) {
        if (dwcp_evp.cipher_final(a->ctx, dummy, &outl) != 1)
            return -1;
        return dwcp_evp.ctrl(a->ctx, DWCP_EVP_CTRL_AEAD_GET_TAG, DWCP_AEAD_TAG, tag) == 1 ? 0 : -1;
    }
    if (dwcp_evp.ctrl(a->ctx, DWCP_EVP_CTRL_AEAD_SET_TAG, DWCP_AEAD_TAG, tag) != 1)
        return -1;
    return dwcp_evp.cipher_final(a->ctx, dummy, &outl) == 1 ? 0 : -1;
}

#endif
