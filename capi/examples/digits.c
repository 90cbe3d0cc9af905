/* qlift's C API from C: quantize the bundled digits CNN from its calibration set, run the
 * test set into a buffer this program allocates, print the accuracy and write the logits.
 *
 *   cc -Icapi/include capi/examples/digits.c target/release/libqlift_capi.a -lpthread -ldl -lm -o digits
 *   ./digits examples/models [logits.npy]
 *
 * The logits equal, byte for byte, those of
 *   qlift run examples/models/digits_cnn.onnx --calib examples/models/digits_calib_x.npy \
 *       --input examples/models/digits_test_x.npy --output logits.npy
 */
#include "qlift.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints the failed call and the thread's last error, and exits. */
static void check(QliftStatus status, const char *what) {
    if (status != QLIFT_STATUS_OK) {
        fprintf(stderr, "%s failed (%s): %s\n", what, qlift_status_name(status), qlift_last_error());
        exit(1);
    }
}

static QliftArray *read_npy(const char *dir, const char *file) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    QliftArray *array = NULL;
    check(qlift_array_read_npy(path, &array), path);
    return array;
}

static void print_info(const char *kind, const QliftValueInfo *info) {
    printf("%s %s: dtype %d, shape [", kind, info->name, info->dtype);
    for (size_t d = 0; d < info->rank; d++) {
        printf(d ? ", %lld" : "%lld", (long long)info->shape[d]);
    }
    printf("]\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODELS_DIR [LOGITS.npy]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    printf("qlift %s\n", qlift_version());

    /* Compile, quantizing from the calibration set (samples on axis 0). */
    QliftArray *calib = read_npy(dir, "digits_calib_x.npy");
    QliftBuffer calib_buffer;
    check(qlift_array_buffer(calib, &calib_buffer), "qlift_array_buffer");
    QliftOptions options = qlift_default_options();
    options.method = "minmax";
    char model_path[4096];
    snprintf(model_path, sizeof model_path, "%s/digits_cnn.onnx", dir);
    QliftModel *model = NULL;
    check(qlift_compile_file(model_path, &calib_buffer, 1, &options, &model), "qlift_compile_file");
    qlift_array_free(calib);

    QliftValueInfo info;
    for (size_t i = 0; i < qlift_model_num_inputs(model); i++) {
        check(qlift_model_input(model, i, &info), "qlift_model_input");
        print_info("input", &info);
    }
    for (size_t i = 0; i < qlift_model_num_outputs(model); i++) {
        check(qlift_model_output(model, i, &info), "qlift_model_output");
        print_info("output", &info);
    }

    /* The test set, and an output buffer of the shape the model gives for it. */
    QliftArray *x = read_npy(dir, "digits_test_x.npy");
    QliftArray *y = read_npy(dir, "digits_test_y.npy");
    QliftBuffer input, labels;
    check(qlift_array_buffer(x, &input), "qlift_array_buffer");
    check(qlift_array_buffer(y, &labels), "qlift_array_buffer");
    int64_t shape[8];
    size_t rank = 0;
    check(qlift_model_output_shape(model, &input, 1, 0, shape, 8, &rank), "qlift_model_output_shape");
    if (rank != 2 || labels.dtype != QLIFT_DTYPE_I64 || labels.rank != 1 || labels.shape[0] != shape[0]) {
        fprintf(stderr, "unexpected shapes: logits of rank %zu, labels of rank %zu\n", rank, labels.rank);
        return 1;
    }
    size_t rows = (size_t)shape[0], classes = (size_t)shape[1];
    float *logits = malloc(rows * classes * sizeof(float));
    if (!logits) {
        return 1;
    }
    QliftBufferMut output = {QLIFT_DTYPE_F32, rank, shape, logits, rows * classes * sizeof(float)};
    check(qlift_model_run(model, &input, 1, &output, 1), "qlift_model_run");

    /* Top-1 accuracy. */
    const int64_t *truth = labels.data;
    size_t correct = 0;
    for (size_t r = 0; r < rows; r++) {
        size_t best = 0;
        for (size_t c = 1; c < classes; c++) {
            if (logits[r * classes + c] > logits[r * classes + best]) {
                best = c;
            }
        }
        correct += (int64_t)best == truth[r];
    }
    printf("accuracy: %.2f%% (%zu/%zu)\n", 100.0 * (double)correct / (double)rows, correct, rows);

    if (argc > 2) {
        QliftBuffer written = {QLIFT_DTYPE_F32, rank, shape, logits, rows * classes * sizeof(float)};
        check(qlift_write_npy(argv[2], &written), "qlift_write_npy");
    }

    /* A mistake is a status and a message, not a crash: the flat MLP input for the CNN. */
    int64_t flat_shape[2] = {(int64_t)rows, 64};
    QliftBuffer wrong = {QLIFT_DTYPE_F32, 2, flat_shape, input.data, input.byte_len};
    QliftStatus status = qlift_model_run(model, &wrong, 1, &output, 1);
    printf("wrong input: %s: %s\n", qlift_status_name(status), qlift_last_error());
    if (status != QLIFT_STATUS_BAD_INPUT) {
        return 1;
    }
    status = qlift_model_run(NULL, &input, 1, &output, 1);
    printf("null model: %s: %s\n", qlift_status_name(status), qlift_last_error());
    if (status != QLIFT_STATUS_INVALID_ARGUMENT) {
        return 1;
    }

    free(logits);
    qlift_array_free(x);
    qlift_array_free(y);
    qlift_model_free(model);
    return 0;
}
