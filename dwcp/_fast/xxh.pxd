# The vendored xxHash (vendor/xxhash.h, XXH_INLINE_ALL): the declarations the kernels share.
cdef extern from "xxhash.h" nogil:
    ctypedef unsigned long long XXH64_hash_t
    ctypedef struct XXH128_hash_t:
        XXH64_hash_t low64
        XXH64_hash_t high64
    ctypedef struct XXH128_canonical_t:
        unsigned char digest[16]
    XXH64_hash_t XXH3_64bits(const void* data, size_t len)
    XXH64_hash_t XXH3_64bits_withSeed(const void* data, size_t len, XXH64_hash_t seed)
    XXH128_hash_t XXH3_128bits(const void* data, size_t len)
    void XXH128_canonicalFromHash(XXH128_canonical_t* dst, XXH128_hash_t hash)
