// Prints, as JSON, the exact f32 bits of ggml_mul_mat for every weight type llamabus loads, computed by
// ggml as llama.cpp's CMake builds it (scripts/build-oracle.sh links this against that build's
// libggml-base.a and libggml-cpu.a). tests/ggml_ops.rs computes the same products with the ggml
// that build.rs compiles and must get the same bits: any difference in how the two builds compile
// ggml (dialect, floating-point contraction, SIMD flags, defines) shows up here first.
//
// Inputs are those of tests/ggml_ops.rs: values(seed, n) is the same xorshift sequence, weights
// [k=512, n=24] quantized with ggml_quantize_chunk, activations f32 [k, m]. Per type it also prints
// FNV-1a hashes of the quantized bytes and of their dequantization (ggml_get_type_traits()->to_float,
// the path of get_rows on a quantized token embedding): quantize and dequantize live in ggml-base,
// which CMake compiles without SIMD flags.
#include "ggml.h"
#include "ggml-cpu.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void values(uint64_t seed, int n, float * out) {
    uint64_t s = (seed * 0x9E3779B97F4A7C15ull) | 1;
    for (int i = 0; i < n; i++) {
        float u[4];
        for (int j = 0; j < 4; j++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            u[j] = (float) (s >> 40) / (float) (1ull << 24);
        }
        // Same association as the Rust ((((a + b) + c) + d) - 2) * 1.7, all in f32.
        float acc = u[0] + u[1];
        acc = acc + u[2];
        acc = acc + u[3];
        acc = acc - 2.0f;
        out[i] = acc * 1.7f;
    }
}

static uint64_t fnv1a(const void * p, size_t n) {
    const unsigned char * b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ b[i]) * 0x100000001b3ull;
    }
    return h;
}

static const enum ggml_type TYPES[] = {
    GGML_TYPE_F32,  GGML_TYPE_F16,  GGML_TYPE_BF16, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1,   GGML_TYPE_Q5_0,
    GGML_TYPE_Q5_1, GGML_TYPE_Q8_0, GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K,   GGML_TYPE_Q5_K,
    GGML_TYPE_Q6_K, GGML_TYPE_IQ4_NL, GGML_TYPE_IQ4_XS,
};

// (m, threads) as in tests/ggml_ops.rs: matrix-vector on 1 thread, matrix-matrix on 2.
static const int RUNS[][2] = { { 1, 1 }, { 7, 2 } };

int main(void) {
    const int k = 512, n = 24;
    float * w = malloc(sizeof(float) * k * n);
    float * x = malloc(sizeof(float) * k * 7);
    values(1, k * n, w);

    const char * path = ggml_cpu_has_avx512() ? "avx512" : ggml_cpu_has_avx2() ? "avx2" : "other";
    printf("{\n \"simd_path\": \"%s\",\n \"k\": %d,\n \"n\": %d,\n \"cases\": [", path, k, n);
    int first = 1;
    for (size_t r = 0; r < sizeof(RUNS) / sizeof(RUNS[0]); r++) {
        const int m = RUNS[r][0], threads = RUNS[r][1];
        values(2, k * m, x);
        for (size_t t = 0; t < sizeof(TYPES) / sizeof(TYPES[0]); t++) {
            const enum ggml_type ty = TYPES[t];
            struct ggml_init_params ip = { 64 * 1024 * 1024, NULL, false };
            struct ggml_context * ctx = ggml_init(ip);
            struct ggml_tensor * wt = ggml_new_tensor_2d(ctx, ty, k, n);
            struct ggml_tensor * xt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, m);
            if (ty == GGML_TYPE_F32) {
                memcpy(wt->data, w, sizeof(float) * k * n);
            } else {
                ggml_quantize_chunk(ty, w, wt->data, 0, n, k, NULL);
            }
            memcpy(xt->data, x, sizeof(float) * k * m);
            struct ggml_tensor * y = ggml_mul_mat(ctx, wt, xt);
            struct ggml_cgraph * g = ggml_new_graph(ctx);
            ggml_build_forward_expand(g, y);
            if (ggml_graph_compute_with_ctx(ctx, g, threads) != GGML_STATUS_SUCCESS) {
                fprintf(stderr, "compute failed for %s\n", ggml_type_name(ty));
                return 1;
            }
            float * deq = malloc(sizeof(float) * k * n);
            if (ty == GGML_TYPE_F32) {
                memcpy(deq, wt->data, sizeof(float) * k * n);
            } else {
                ggml_get_type_traits(ty)->to_float(wt->data, deq, (int64_t) k * n);
            }
            printf("%s\n  {\"type\": \"%s\", \"m\": %d, \"threads\": %d, \"quant_fnv\": \"%016llx\", "
                   "\"dequant_fnv\": \"%016llx\", \"bits\": [",
                   first ? "" : ",", ggml_type_name(ty), m, threads,
                   (unsigned long long) fnv1a(wt->data, ggml_nbytes(wt)),
                   (unsigned long long) fnv1a(deq, sizeof(float) * k * n));
            free(deq);
            first = 0;
            const float * out = (const float *) y->data;
            for (int i = 0; i < n * m; i++) {
                uint32_t b;
                memcpy(&b, &out[i], 4);
                printf("%s%u", i ? ", " : "", b);
            }
            printf("]}");
            ggml_free(ctx);
        }
    }
    printf("\n ]\n}\n");
    free(w);
    free(x);
    return 0;
}
