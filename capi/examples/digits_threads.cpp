// qlift's C API from C++: one quantized model shared by several threads, each running its
// share of the test set into its rows of one output buffer (RAII wrappers free everything).
//
//   c++ -std=c++17 -Icapi/include capi/examples/digits_threads.cpp -Ltarget/release
//       -lqlift_capi -Wl,-rpath,target/release -pthread -o digits_threads
//   ./digits_threads examples/models [logits.npy] [threads]
//
// The logits equal, byte for byte, those of `qlift run` on the whole test set at once.
#include "qlift.h"

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

// A failed call as an exception carrying qlift's message.
struct Error : std::runtime_error {
    QliftStatus status;
    Error(QliftStatus s, const std::string &what)
        : std::runtime_error(what + " (" + qlift_status_name(s) + "): " + qlift_last_error()), status(s) {}
};

void check(QliftStatus status, const char *what) {
    if (status != QLIFT_STATUS_OK) {
        throw Error(status, what);
    }
}

struct ModelDeleter {
    void operator()(QliftModel *m) const { qlift_model_free(m); }
};
struct ArrayDeleter {
    void operator()(QliftArray *a) const { qlift_array_free(a); }
};
using Model = std::unique_ptr<QliftModel, ModelDeleter>;
using Array = std::unique_ptr<QliftArray, ArrayDeleter>;

Array read_npy(const std::string &path) {
    QliftArray *a = nullptr;
    check(qlift_array_read_npy(path.c_str(), &a), path.c_str());
    return Array(a);
}

QliftBuffer buffer(const Array &a) {
    QliftBuffer b;
    check(qlift_array_buffer(a.get(), &b), "qlift_array_buffer");
    return b;
}

}  // namespace

int main(int argc, char **argv) try {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODELS_DIR [LOGITS.npy] [THREADS]\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const size_t threads = argc > 3 ? std::stoul(argv[3]) : 4;

    Array calib = read_npy(dir + "/digits_calib_x.npy");
    QliftBuffer calib_buffer = buffer(calib);
    QliftOptions options = qlift_default_options();
    QliftModel *raw = nullptr;
    check(qlift_compile_file((dir + "/digits_cnn.onnx").c_str(), &calib_buffer, 1, &options, &raw), "qlift_compile_file");
    Model model(raw);

    Array x = read_npy(dir + "/digits_test_x.npy");
    Array y = read_npy(dir + "/digits_test_y.npy");
    QliftBuffer input = buffer(x), labels = buffer(y);
    int64_t out_shape[2];
    size_t rank = 0;
    check(qlift_model_output_shape(model.get(), &input, 1, 0, out_shape, 2, &rank), "qlift_model_output_shape");
    const size_t rows = static_cast<size_t>(out_shape[0]), classes = static_cast<size_t>(out_shape[1]);
    const size_t sample_bytes = input.byte_len / rows;
    std::vector<float> logits(rows * classes);

    // Thread t runs rows [begin, end): its own shapes, views of the shared input and of its
    // rows of the shared output; the model is shared.
    std::vector<std::string> errors(threads);
    std::vector<std::thread> pool;
    for (size_t t = 0; t < threads; t++) {
        pool.emplace_back([&, t] {
            const size_t begin = rows * t / threads, end = rows * (t + 1) / threads;
            if (begin == end) {
                return;
            }
            std::vector<int64_t> in_shape(input.shape, input.shape + input.rank);
            in_shape[0] = static_cast<int64_t>(end - begin);
            int64_t shape[2] = {static_cast<int64_t>(end - begin), static_cast<int64_t>(classes)};
            QliftBuffer in = {input.dtype, input.rank, in_shape.data(),
                              static_cast<const unsigned char *>(input.data) + begin * sample_bytes, (end - begin) * sample_bytes};
            QliftBufferMut out = {QLIFT_DTYPE_F32, 2, shape, logits.data() + begin * classes, (end - begin) * classes * sizeof(float)};
            // Each thread has its own last error.
            if (qlift_model_run(model.get(), &in, 1, &out, 1) != QLIFT_STATUS_OK) {
                errors[t] = qlift_last_error();
            }
        });
    }
    for (auto &th : pool) {
        th.join();
    }
    for (const auto &e : errors) {
        if (!e.empty()) {
            std::fprintf(stderr, "a run failed: %s\n", e.c_str());
            return 1;
        }
    }

    const auto *truth = static_cast<const int64_t *>(labels.data);
    size_t correct = 0;
    for (size_t r = 0; r < rows; r++) {
        size_t best = 0;
        for (size_t c = 1; c < classes; c++) {
            if (logits[r * classes + c] > logits[r * classes + best]) {
                best = c;
            }
        }
        correct += static_cast<int64_t>(best) == truth[r];
    }
    std::printf("threads: %zu\naccuracy: %.2f%% (%zu/%zu)\n", threads, 100.0 * correct / rows, correct, rows);
    if (argc > 2) {
        QliftBuffer written = {QLIFT_DTYPE_F32, 2, out_shape, logits.data(), logits.size() * sizeof(float)};
        check(qlift_write_npy(argv[2], &written), "qlift_write_npy");
    }

    // A model that does not exist: an exception with the file's error, nothing leaked.
    try {
        QliftModel *none = nullptr;
        check(qlift_compile_file((dir + "/no_such_model.onnx").c_str(), nullptr, 0, nullptr, &none), "qlift_compile_file");
        std::fprintf(stderr, "a missing model compiled\n");
        return 1;
    } catch (const Error &e) {
        std::printf("missing model: %s\n", e.what());
        if (e.status != QLIFT_STATUS_BAD_MODEL) {
            return 1;
        }
    }
    return 0;
} catch (const std::exception &e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
}
