/* Linked into the emu_gpu_* tests: the emulated device runs queued work only at
 * synchronisation points, as a GPU does (tests/emu/emu_stream.h). */
#include "emu_stream.h"

namespace {
struct Deferred {
    Deferred() { emu_defer = true; }
} deferred;
} /* namespace */
