/* Runs a qlift-compiled digits classifier (an object file + header from `qlift compile`)
 * on the bundled test set and prints its accuracy. Build and run:
 *
 *   qlift compile ../models/digits_cnn.onnx --calib ../models/digits_calib_x.npy \
 *       -o digits.o --header digits.h --name digits
 *   cc -O2 -I. main.c digits.o -lm -o digits
 *   ./digits ../models/digits_test_x.npy ../models/digits_test_y.npy [logits.bin]
 *
 * The optional third argument receives the raw float32 logits (for bit-exact comparisons).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "digits.h"

/* Reads a little-endian, C-order .npy array whose dtype descriptor is `descr` ("<f4", "<i8").
 * Returns the data and sets *rows to the first dimension; NULL on error. */
static void *read_npy(const char *path, const char *descr, size_t elem, size_t *rows, size_t *count) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char magic[10];
    if (fread(magic, 1, 10, f) != 10 || memcmp(magic, "\x93NUMPY", 6) != 0) { fclose(f); return NULL; }
    size_t header_len = magic[8] | (magic[9] << 8);
    if (magic[6] >= 2) { /* version 2+: 4-byte header length */
        unsigned char more[2];
        if (fread(more, 1, 2, f) != 2) { fclose(f); return NULL; }
        header_len |= ((size_t)more[0] << 16) | ((size_t)more[1] << 24);
    }
    char *header = calloc(1, header_len + 1);
    if (!header || fread(header, 1, header_len, f) != header_len) { free(header); fclose(f); return NULL; }
    const char *shape = strstr(header, "'shape': (");
    if (!strstr(header, descr) || strstr(header, "'fortran_order': True") || !shape) { free(header); fclose(f); return NULL; }
    size_t n = 1, first = 0;
    const char *p = shape + strlen("'shape': (");
    for (int dim = 0; *p && *p != ')'; dim++) {
        size_t d = strtoul(p, (char **)&p, 10);
        if (dim == 0) first = d;
        n *= d;
        while (*p == ',' || *p == ' ') p++;
    }
    free(header);
    void *data = malloc(n * elem);
    if (!data || fread(data, elem, n, f) != n) { free(data); fclose(f); return NULL; }
    fclose(f);
    *rows = first;
    *count = n;
    return data;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s TEST_X.npy TEST_Y.npy [LOGITS.bin]\n", argv[0]);
        return 1;
    }
    size_t n, xs, ny, ys;
    float *x = read_npy(argv[1], "<f4", sizeof(float), &n, &xs);
    int64_t *y = read_npy(argv[2], "<i8", sizeof(int64_t), &ny, &ys);
    if (!x || !y || n != ny || xs != n * DIGITS_INPUT0_ELEMENTS_PER_SAMPLE) {
        fprintf(stderr, "cannot read the test set (or it does not fit the model's input)\n");
        return 1;
    }
    size_t classes = DIGITS_OUTPUT0_ELEMENTS_PER_SAMPLE;
    float *logits = malloc(n * classes * sizeof(float));
    void *scratch = aligned_alloc(64, (DIGITS_SCRATCH_BYTES(n) + 63) / 64 * 64 + 64);
    const void *inputs[1] = {x};
    void *outputs[1] = {logits};
    int32_t status = digits_run(inputs, outputs, scratch, (int64_t)n);
    if (status != 0) {
        fprintf(stderr, "digits_run failed with status %d\n", status);
        return 2;
    }
    size_t correct = 0;
    for (size_t i = 0; i < n; i++) {
        size_t best = 0;
        for (size_t c = 1; c < classes; c++)
            if (logits[i * classes + c] > logits[i * classes + best]) best = c;
        correct += (int64_t)best == y[i];
    }
    printf("accuracy: %.2f%% (%zu/%zu)\n", 100.0 * correct / n, correct, n);
    if (argc > 3) {
        FILE *out = fopen(argv[3], "wb");
        if (!out || fwrite(logits, sizeof(float), n * classes, out) != n * classes) return 1;
        fclose(out);
    }
    free(x); free(y); free(logits); free(scratch);
    return 0;
}
