/*
 * minifw.backend._native: an optional compiled kernel for the NumPy backend.
 *
 * One operation: a direct convolution (any stride) of a zero-padded channels-last input,
 * with its bias, an optional 2x2 max-pool of stride 2 and an optional ReLU, written
 * through arbitrary output strides (channels-last into the next layer's padded input,
 * channels-first, or the blocked pixel order of the fused training blocks). It replaces
 * im2col + GEMM for the float32 convolutions of the NumPy backend
 * (backend/_conv_numpy.py: ``conv2d`` and the conv chains' ``_run_nhwc``): no im2col
 * matrix is ever written, and each output row goes through its pool and ReLU while in
 * cache.
 *
 * Register blocking, as in the direct convolutions of oneDNN and ONNX Runtime's MLAS: a
 * block of PB output pixels of one row times NV vectors of output channels is held in
 * PB*NV vector accumulators; for each window position (i, j) and input channel c, NV
 * weight vectors are loaded and each pixel's input value is broadcast into NV fused
 * multiply-adds. Each output value is the bias plus its kh*kw*C products added in the
 * order (i, j, c), whatever the block, the batch or the thread: results do not depend
 * on how a batch is split.
 *
 * Two builds of the same code, chosen at run time from the CPU's features: AVX-512
 * (16-float vectors, 32 registers) and AVX2+FMA (8-float vectors, 16 registers). Other
 * CPUs (and compilers without these target attributes) get no kernel: Python then keeps
 * the im2col path. Python calls it through ctypes, which releases the GIL.
 */
#include <Python.h>
#include <stddef.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MINIFW_X86 1
#else
#define MINIFW_X86 0
#endif

#if MINIFW_X86

/* the maximum (NaN if either is: as NumPy's maximum) and the ReLU (NaN stays NaN) */
static inline float maxn(float a, float b) { return (a > b || a != a) ? a : b; }
static inline float relu1(float v) { return v < 0.0f ? 0.0f : v; }

#define DEF_ISA(SUF, ATTR, VW)                                                                 \
    typedef float SUF##_v __attribute__((vector_size(VW * 4)));                                 \
    typedef float SUF##_u __attribute__((vector_size(VW * 4), aligned(4)));                     \
    DEF_BLOCKS_##SUF(SUF, ATTR, VW)

/* one block: PB pixels (input row x; PS floats from one output pixel's window to the
 * next: C times the stride) by NV vectors of channels (weights w, row stride F, bias b)
 * into o (pixel stride F) */
#define DEF_BLOCK(SUF, ATTR, VW, NV, PB)                                                       \
    ATTR static void SUF##_blk_##NV##_##PB(const float *x, const float *w, const float *b,     \
                                           float *o, ptrdiff_t C, ptrdiff_t F, ptrdiff_t Wp,   \
                                           int KH, int KW, ptrdiff_t PS)                       \
    {                                                                                          \
        SUF##_v acc[PB][NV];                                                                   \
        for (int v = 0; v < NV; v++) {                                                         \
            SUF##_v bv = *(const SUF##_u *)(b + v * VW);                                       \
            for (int p = 0; p < PB; p++)                                                       \
                acc[p][v] = bv;                                                                \
        }                                                                                      \
        for (int i = 0; i < KH; i++)                                                           \
            for (int j = 0; j < KW; j++) {                                                     \
                const float *xr = x + (i * Wp + j) * C;                                        \
                const float *wr = w + (ptrdiff_t)(i * KW + j) * C * F;                         \
                for (ptrdiff_t c = 0; c < C; c++) {                                            \
                    SUF##_v wv[NV];                                                            \
                    for (int v = 0; v < NV; v++)                                               \
                        wv[v] = *(const SUF##_u *)(wr + c * F + v * VW);                       \
                    for (int p = 0; p < PB; p++) {                                             \
                        float s = xr[p * PS + c];                                              \
                        for (int v = 0; v < NV; v++)                                           \
                            acc[p][v] += s * wv[v];                                            \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        for (int p = 0; p < PB; p++)                                                           \
            for (int v = 0; v < NV; v++)                                                       \
                *(SUF##_u *)(o + p * F + v * VW) = acc[p][v];                                  \
    }

typedef void (*blk_fn)(const float *, const float *, const float *, float *, ptrdiff_t,
                       ptrdiff_t, ptrdiff_t, int, int, ptrdiff_t);

/* AVX-512: 32 registers; up to 24 accumulators */
#define DEF_BLOCKS_z(SUF, ATTR, VW)                                                            \
    DEF_BLOCK(SUF, ATTR, VW, 1, 1) DEF_BLOCK(SUF, ATTR, VW, 1, 2) DEF_BLOCK(SUF, ATTR, VW, 1, 3) \
    DEF_BLOCK(SUF, ATTR, VW, 1, 4) DEF_BLOCK(SUF, ATTR, VW, 1, 5) DEF_BLOCK(SUF, ATTR, VW, 1, 6) \
    DEF_BLOCK(SUF, ATTR, VW, 1, 7) DEF_BLOCK(SUF, ATTR, VW, 1, 8) DEF_BLOCK(SUF, ATTR, VW, 1, 9) \
    DEF_BLOCK(SUF, ATTR, VW, 1, 10) DEF_BLOCK(SUF, ATTR, VW, 1, 11)                            \
    DEF_BLOCK(SUF, ATTR, VW, 1, 12) DEF_BLOCK(SUF, ATTR, VW, 1, 13)                            \
    DEF_BLOCK(SUF, ATTR, VW, 1, 14)                                                            \
    DEF_BLOCK(SUF, ATTR, VW, 2, 1) DEF_BLOCK(SUF, ATTR, VW, 2, 2) DEF_BLOCK(SUF, ATTR, VW, 2, 3) \
    DEF_BLOCK(SUF, ATTR, VW, 2, 4) DEF_BLOCK(SUF, ATTR, VW, 2, 5) DEF_BLOCK(SUF, ATTR, VW, 2, 6) \
    DEF_BLOCK(SUF, ATTR, VW, 2, 7) DEF_BLOCK(SUF, ATTR, VW, 2, 8)                              \
    DEF_BLOCK(SUF, ATTR, VW, 4, 1) DEF_BLOCK(SUF, ATTR, VW, 4, 2) DEF_BLOCK(SUF, ATTR, VW, 4, 3) \
    DEF_BLOCK(SUF, ATTR, VW, 4, 4)

/* AVX2: 16 registers; up to 12 accumulators, at most 2 vectors of channels (2 weight
 * vectors + 1 broadcast + 12 accumulators fit; 4 weight vectors would spill) */
#define DEF_BLOCKS_y(SUF, ATTR, VW)                                                            \
    DEF_BLOCK(SUF, ATTR, VW, 1, 1) DEF_BLOCK(SUF, ATTR, VW, 1, 2) DEF_BLOCK(SUF, ATTR, VW, 1, 3) \
    DEF_BLOCK(SUF, ATTR, VW, 1, 4) DEF_BLOCK(SUF, ATTR, VW, 1, 5) DEF_BLOCK(SUF, ATTR, VW, 1, 6) \
    DEF_BLOCK(SUF, ATTR, VW, 1, 7) DEF_BLOCK(SUF, ATTR, VW, 1, 8) DEF_BLOCK(SUF, ATTR, VW, 1, 9) \
    DEF_BLOCK(SUF, ATTR, VW, 1, 10) DEF_BLOCK(SUF, ATTR, VW, 1, 11)                            \
    DEF_BLOCK(SUF, ATTR, VW, 1, 12)                                                            \
    DEF_BLOCK(SUF, ATTR, VW, 2, 1) DEF_BLOCK(SUF, ATTR, VW, 2, 2) DEF_BLOCK(SUF, ATTR, VW, 2, 3) \
    DEF_BLOCK(SUF, ATTR, VW, 2, 4) DEF_BLOCK(SUF, ATTR, VW, 2, 5) DEF_BLOCK(SUF, ATTR, VW, 2, 6)

DEF_ISA(z, __attribute__((target("avx512f"))), 16)
DEF_ISA(y, __attribute__((target("avx2,fma"))), 8)

#define PBMAX 14
/* [isa][nv index (1, 2, 4)][pb] */
static const blk_fn TABLE[2][3][PBMAX + 1] = {
    {
        {0, z_blk_1_1, z_blk_1_2, z_blk_1_3, z_blk_1_4, z_blk_1_5, z_blk_1_6, z_blk_1_7,
         z_blk_1_8, z_blk_1_9, z_blk_1_10, z_blk_1_11, z_blk_1_12, z_blk_1_13, z_blk_1_14},
        {0, z_blk_2_1, z_blk_2_2, z_blk_2_3, z_blk_2_4, z_blk_2_5, z_blk_2_6, z_blk_2_7,
         z_blk_2_8},
        {0, z_blk_4_1, z_blk_4_2, z_blk_4_3, z_blk_4_4},
    },
    {
        {0, y_blk_1_1, y_blk_1_2, y_blk_1_3, y_blk_1_4, y_blk_1_5, y_blk_1_6, y_blk_1_7,
         y_blk_1_8, y_blk_1_9, y_blk_1_10, y_blk_1_11, y_blk_1_12},
        {0, y_blk_2_1, y_blk_2_2, y_blk_2_3, y_blk_2_4, y_blk_2_5, y_blk_2_6},
        {0},
    },
};
/* the largest PB of each [isa][nv index] */
static const int PB_TOP[2][3] = {{14, 8, 4}, {12, 6, 0}};
static const int VWIDTH[2] = {16, 8};

#endif /* MINIFW_X86 */

/* the interface's version: Python refuses a library built from another version of this
 * file (an extension left from an older checkout, not rebuilt) */
int minifw_native_version(void) { return 4; }

/* 1: AVX-512, 2: AVX2+FMA, 0: none */
int minifw_isa(void)
{
#if MINIFW_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return 1;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 2;
#endif
    return 0;
}

#if MINIFW_X86
/* the pixel block for a row of ow pixels: the PB (at most top, at least top/2 unless the
 * row is shorter) that computes the fewest pixels (ties: the larger) */
static int pick_pb(int ow, int top)
{
    if (ow <= top)
        return ow;
    int best = top, cost = ((ow + top - 1) / top) * top;
    for (int pb = top - 1; pb * 2 >= top; pb--) {
        int c = ((ow + pb - 1) / pb) * pb;
        if (c < cost) {
            cost = c;
            best = pb;
        }
    }
    return best;
}

/* one output row (OW pixels, F channels apart, in row) into dst: pixel q, channel f < FO at
 * d[(q >> bs) * sp + (q & bs) * sj + f * sf] (bs 1: the blocked order of 2x2 windows) */
static void store_row(const float *row, ptrdiff_t OW, ptrdiff_t F, ptrdiff_t FO, float *d,
                      ptrdiff_t sp, ptrdiff_t sj, ptrdiff_t sf, int bs, int relu)
{
    if (sf == 1) { /* channels-last: each pixel's channels are contiguous */
        for (ptrdiff_t q = 0; q < OW; q++) {
            const float *src = row + q * F;
            float *dq = d + (q >> bs) * sp + (q & bs) * sj;
            if (relu)
                for (ptrdiff_t f = 0; f < FO; f++)
                    dq[f] = relu1(src[f]);
            else
                memcpy(dq, src, (size_t)FO * sizeof(float));
        }
        return;
    }
    /* channels-first: per channel, one run of pixels (two when blocked: even and odd
     * columns), read F apart from the row (in L1) */
    const ptrdiff_t runs = bs ? 2 : 1, len = bs ? OW / 2 : OW, step = bs ? 2 * F : F;
    for (ptrdiff_t f = 0; f < FO; f++)
        for (ptrdiff_t j = 0; j < runs; j++) {
            const float *src = row + j * F + f;
            float *df = d + f * sf + j * sj;
            if (relu)
                for (ptrdiff_t q = 0; q < len; q++)
                    df[q * sp] = relu1(src[q * step]);
            else
                for (ptrdiff_t q = 0; q < len; q++)
                    df[q * sp] = src[q * step];
        }
}

#endif /* MINIFW_X86 */

/*
 * x: (n, Hp, Wp, C) float32, contiguous, already zero-padded; w: (KH, KW, C, F) contiguous;
 * b: (F,); strides SH, SW; scratch: at least 2 * OW * F floats (OW = (Wp - KW) / SW + 1).
 * Output pixel (img, r, q), channel f < FO, goes to
 *   dst[img * sn + r * sr + q * sp + f * sf]                                    (plain),
 *   dst[img * sn + (r/2) * sr + (q/2) * sp + f * sf], the max of its 2x2 window (pool),
 *   dst[img * sn + (r%2) * si + (q%2) * sj + (r/2) * sr + (q/2) * sp + f * sf] (blocked)
 * (element strides); channels FO..F-1 are computed and dropped (the caller pads a filter
 * count up to the vector width with zero filters). pool and blocked exclude each other.
 * isa: 1 or 2 (as minifw_isa); F must be a multiple of that ISA's vector width.
 * Returns 0, or -1 for arguments it cannot take.
 */
int minifw_conv_nhwc(int isa, const float *x, ptrdiff_t n, ptrdiff_t Hp, ptrdiff_t Wp,
                     ptrdiff_t C, const float *w, int KH, int KW, ptrdiff_t F, const float *b,
                     int SH, int SW, int relu, int pool, int blocked, float *scratch,
                     float *dst, ptrdiff_t sn,
                     ptrdiff_t sr, ptrdiff_t sp, ptrdiff_t sf, ptrdiff_t si, ptrdiff_t sj,
                     ptrdiff_t FO)
{
#if MINIFW_X86
    if (isa < 1 || isa > 2 || KH < 1 || KW < 1 || Hp < KH || Wp < KW || C < 1 || F < 1 ||
        SH < 1 || SW < 1 || FO < 1 || FO > F || (pool && blocked))
        return -1;
    const int s = isa - 1, vw = VWIDTH[s];
    if (F % vw)
        return -1;
    const ptrdiff_t OH = (Hp - KH) / SH + 1, OW = (Wp - KW) / SW + 1;
    if (blocked && (OH % 2 || OW % 2))
        return -1;
    /* channel groups: NV vectors each (the widest of 4, 2, 1 that divides F / vw) */
    const ptrdiff_t nvec = F / vw;
    int ni = nvec % 4 == 0 ? 2 : (nvec % 2 == 0 ? 1 : 0);
    if (PB_TOP[s][ni] == 0)
        ni = 1;
    const int nv = 1 << ni;
    const int pb = pick_pb((int)OW, PB_TOP[s][ni]);
    const blk_fn blk = TABLE[s][ni][pb];
    const ptrdiff_t rows = pool ? (OH / 2) * 2 : OH;
    const ptrdiff_t pw = pool ? OW / 2 : OW;
    const int bs = blocked ? 1 : 0;
    for (ptrdiff_t img = 0; img < n; img++) {
        const float *xi = x + img * Hp * Wp * C;
        for (ptrdiff_t r = 0; r < rows; r++) {
            float *row = scratch + (r & 1) * OW * F;
            const float *xr = xi + r * SH * Wp * C;
            for (ptrdiff_t f0 = 0; f0 < F; f0 += (ptrdiff_t)nv * vw)
                for (ptrdiff_t q = 0;; q += pb) {
                    ptrdiff_t q0 = q + pb > OW ? OW - pb : q; /* the last block: shifted */
                    blk(xr + q0 * SW * C, w + f0, b + f0, row + q0 * F + f0, C, F, Wp, KH, KW,
                        SW * C);
                    if (q0 + pb >= OW)
                        break;
                }
            if (!pool) {
                float *d = dst + img * sn + (r >> bs) * sr + (r & bs) * si;
                store_row(row, OW, F, FO, d, sp, sj, sf, bs, relu);
            } else if (r & 1) {
                const float *r0 = scratch, *r1 = scratch + OW * F;
                float *d = dst + img * sn + (r / 2) * sr;
                for (ptrdiff_t q = 0; q < pw; q++) {
                    const float *a = r0 + 2 * q * F, *bq = r1 + 2 * q * F;
                    float *dq = d + q * sp;
                    for (ptrdiff_t f = 0; f < FO; f++) {
                        float m = maxn(maxn(a[f], a[f + F]), maxn(bq[f], bq[f + F]));
                        dq[f * sf] = relu ? relu1(m) : m;
                    }
                }
            }
        }
    }
    return 0;
#else
    (void)isa; (void)x; (void)n; (void)Hp; (void)Wp; (void)C; (void)w; (void)KH; (void)KW;
    (void)SH; (void)SW;
    (void)F; (void)b; (void)relu; (void)pool; (void)scratch; (void)dst; (void)sn; (void)sr;
    (void)sp; (void)sf; (void)FO; (void)blocked; (void)si; (void)sj;
    return -1;
#endif
}

/* A Python module so that setuptools builds and installs this file like any extension;
 * the functions above are called through ctypes (minifw.backend._native_conv). */
static struct PyModuleDef native_module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }
