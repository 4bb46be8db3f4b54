// The compiled fast path of the oneDNN calls that compiled graphs make (infer/runtime/onednn.py).
//
// A call from the Relax VM, (x, w, [bias], [scale, zero point], config, out), is looked up in the
// running session's table of kernels by its config, its operands' shapes and the addresses its
// kernel was made for, and run here: data handles set, OpenMP threads set, the primitive
// executed. A miss goes to the Python entry point, which builds the kernel (weights packed, as
// before) and, when the call came from here, records it in the table with `remember`. Python
// owns every oneDNN object; a table only points at them, and is cleared whenever Python drops a
// kernel. Built and loaded by infer/runtime/dispatch.py with only tvm-ffi's C ABI.
//
// It also runs the parallel loops of TVM's kernels on OpenMP's threads, the ones oneDNN runs
// on: a compiled library's TVMBackendParallelLaunch is pointed at `infer_parallel_launch`, so
// that one pool serves the whole graph. With two pools, TVM's sleeping workers had to be woken
// for every kernel, on a core where OpenMP's idle threads were still spinning.

#include <tvm/ffi/c_api.h>

#include <dlfcn.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

struct ExecArg {
  int arg;
  void* memory;
};
using Execute = int (*)(void*, void*, int, const ExecArg*);
using StreamWait = int (*)(void*);
using SetHandle = int (*)(void*, void*);
using StreamCreate = int (*)(void**, void*, unsigned);
using OmpSetThreads = void (*)(int);
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpQuery = int (*)();

// TVM's parallel lambda and its group (tvm/runtime/c_backend_api.h).
struct ParallelGroupEnv {
  void* sync_handle;
  int32_t num_task;
};
using ParallelLambda = int (*)(int, ParallelGroupEnv*, void*);
using ParallelLaunch = int (*)(ParallelLambda, void*, int);

struct Api {
  Execute execute = nullptr;
  StreamWait wait = nullptr;
  SetHandle set_handle = nullptr;
  StreamCreate stream_create = nullptr;
  OmpSetThreads omp_set_threads = nullptr;
  void* engine = nullptr;
  GompParallel gomp_parallel = nullptr;
  OmpQuery omp_thread_num = nullptr;
  OmpQuery omp_num_threads = nullptr;
  ParallelLaunch tvm_launch = nullptr;  // TVM's own, for calls outside a session
} api;

constexpr unsigned kStreamInOrder = 1;
constexpr int kMaxHandles = 4;  // source, weights, [bias], destination

struct Primitive {
  void* primitive = nullptr;
  int nargs = 0;
  const ExecArg* args = nullptr;
  int nmemories = 0;
  void* memories[kMaxHandles] = {};
};

struct Entry {
  uint64_t required = 0;  // bit i: argument i's address must equal addresses[i]
  std::vector<void*> addresses;
  Primitive kernel;
  void* weights = nullptr;  // packed weights; null: the graph's w as it is
  int bias = -1;            // the argument holding the bias, or -1
  int threads = 1;
  Primitive convert;  // a source conversion (bf16) run first into convert_buffer
  void* convert_buffer = nullptr;
};

struct Table {
  std::unordered_map<std::string, std::vector<Entry>> entries;
  int threads = 1;  // the session's: TVM's parallel loops run on this many OpenMP threads
};

thread_local Table* active_table = nullptr;
thread_local void* stream = nullptr;
// The call being handed to Python, for `remember`.
thread_local const TVMFFIAny* pending_args = nullptr;
thread_local int32_t pending_count = 0;
thread_local const std::string* pending_key = nullptr;

const DLTensor* TensorOf(const TVMFFIAny& value) {
  if (value.type_index == kTVMFFITensor) {
    return reinterpret_cast<const DLTensor*>(static_cast<char*>(value.v_ptr) +
                                             sizeof(TVMFFIObject));
  }
  if (value.type_index == kTVMFFIDLTensorPtr) return static_cast<const DLTensor*>(value.v_ptr);
  return nullptr;
}

void* DataOf(const TVMFFIAny& value) {
  const DLTensor* t = TensorOf(value);
  return t == nullptr ? nullptr : static_cast<char*>(t->data) + t->byte_offset;
}

void AppendShape(std::string* key, const DLTensor* t) {
  key->append(reinterpret_cast<const char*>(&t->ndim), sizeof(t->ndim));
  key->append(reinterpret_cast<const char*>(t->shape), sizeof(int64_t) * t->ndim);
}

// The lookup key of a call: its config text, its operands' shapes and its argument count.
bool MakeKey(const TVMFFIAny* args, int32_t n, std::string* key) {
  if (n < 4 || n > 64) return false;
  const TVMFFIAny& config = args[n - 2];
  if (config.type_index == kTVMFFIStr) {
    const TVMFFIByteArray* text = reinterpret_cast<const TVMFFIByteArray*>(
        static_cast<char*>(config.v_ptr) + sizeof(TVMFFIObject));
    key->assign(text->data, text->size);
  } else if (config.type_index == kTVMFFISmallStr) {
    key->assign(config.v_bytes, config.small_str_len);
  } else {
    return false;
  }
  const DLTensor* x = TensorOf(args[0]);
  const DLTensor* w = TensorOf(args[1]);
  if (x == nullptr || w == nullptr || TensorOf(args[n - 1]) == nullptr) return false;
  AppendShape(key, x);
  AppendShape(key, w);
  key->append(reinterpret_cast<const char*>(&n), sizeof(n));
  return true;
}

int Fail(const char* what, int status) {
  char message[128];
  std::snprintf(message, sizeof(message), "oneDNN: %s failed (dnnl_status_t %d)", what, status);
  TVMFFIErrorSetRaisedFromCStr("RuntimeError", message);
  return -1;
}

int RunPrimitive(const Primitive& p, void* const* handles, const char* what) {
  for (int i = 0; i < p.nmemories; ++i) {
    int status = api.set_handle(p.memories[i], handles[i]);
    if (status != 0) return Fail("setting a data handle", status);
  }
  int status = api.execute(p.primitive, stream, p.nargs, p.args);
  if (status != 0) return Fail(what, status);
  status = api.wait(stream);
  return status == 0 ? 0 : Fail("stream wait", status);
}

int Run(const Entry& e, const TVMFFIAny* args, int32_t n) {
  if (stream == nullptr) {
    int status = api.stream_create(&stream, api.engine, kStreamInOrder);
    if (status != 0) return Fail("stream", status);
  }
  if (api.omp_set_threads != nullptr) api.omp_set_threads(e.threads);
  void* source = DataOf(args[0]);
  if (e.convert.primitive != nullptr) {
    void* handles[2] = {source, e.convert_buffer};
    if (RunPrimitive(e.convert, handles, "source conversion") != 0) return -1;
    source = e.convert_buffer;
  }
  void* handles[kMaxHandles];
  int h = 0;
  handles[h++] = source;
  handles[h++] = e.weights != nullptr ? e.weights : DataOf(args[1]);
  if (e.bias >= 0) handles[h++] = DataOf(args[e.bias]);
  handles[h++] = DataOf(args[n - 1]);
  if (h != e.kernel.nmemories) return Fail("a call's operand count", h);
  return RunPrimitive(e.kernel, handles, "execute");
}

const Entry* Find(const Table& table, const std::string& key, const TVMFFIAny* args) {
  auto it = table.entries.find(key);
  if (it == table.entries.end()) return nullptr;
  for (const Entry& e : it->second) {
    bool match = true;
    for (size_t i = 0; i < e.addresses.size() && match; ++i) {
      if ((e.required >> i & 1) && DataOf(args[i]) != e.addresses[i]) match = false;
    }
    if (match) return &e;
  }
  return nullptr;
}

// The safe call of infer.onednn.conv2d / infer.onednn.matmul; self is the Python entry point.
int Call(void* self, const TVMFFIAny* args, int32_t n, TVMFFIAny* result) {
  Table* table = active_table;
  std::string key;
  if (table != nullptr && MakeKey(args, n, &key)) {
    if (const Entry* e = Find(*table, key, args)) return Run(*e, args, n);
    pending_args = args;
    pending_count = n;
    pending_key = &key;
  }
  int status = TVMFFIFunctionCall(self, const_cast<TVMFFIAny*>(args), n, result);
  pending_args = nullptr;
  pending_key = nullptr;
  return status;
}

struct Launch {
  ParallelLambda lambda;
  void* data;
  int num_task;
  std::atomic<int> status{0};
};

// One OpenMP thread's share of a launch: its task, or more when OpenMP gave fewer threads.
void RunTasks(void* data) {
  Launch* launch = static_cast<Launch*>(data);
  ParallelGroupEnv env{nullptr, launch->num_task};
  int team = api.omp_num_threads();
  for (int task = api.omp_thread_num(); task < launch->num_task; task += team) {
    int status = launch->lambda(task, &env, launch->data);
    if (status != 0) launch->status.store(status);
  }
}

}  // namespace

extern "C" {

// TVMBackendParallelLaunch of the libraries pointed here: the loop's tasks on the active
// session's OpenMP threads, one task each (TVM's lambdas split their loop by num_task).
int infer_parallel_launch(ParallelLambda lambda, void* data, int num_task) {
  Table* table = active_table;
  if (table == nullptr || api.gomp_parallel == nullptr) {
    return api.tvm_launch(lambda, data, num_task);
  }
  int threads = table->threads;
  if (num_task > 0 && num_task < threads) threads = num_task;
  if (threads <= 1) {
    ParallelGroupEnv env{nullptr, 1};
    return lambda(0, &env, data);
  }
  Launch launch{lambda, data, threads};
  api.gomp_parallel(RunTasks, &launch, static_cast<unsigned>(threads), 0);
  return launch.status.load();
}

// OpenMP's GOMP_parallel, omp_get_thread_num and omp_get_num_threads.
void infer_parallel_init(void* gomp_parallel, void* omp_thread_num, void* omp_num_threads) {
  api.gomp_parallel = reinterpret_cast<GompParallel>(gomp_parallel);
  api.omp_thread_num = reinterpret_cast<OmpQuery>(omp_thread_num);
  api.omp_num_threads = reinterpret_cast<OmpQuery>(omp_num_threads);
}

// Point the parallel launch of the compiled library loaded from path (by TVM) here. Returns 1
// when done, 0 when the library has no parallel loops or synchronises inside them (TVM's
// barrier needs TVM's pool), -1 when it is not loaded.
int infer_parallel_adopt(const char* path) {
  void* handle = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return -1;
  auto* slot = static_cast<ParallelLaunch*>(dlsym(handle, "__TVMBackendParallelLaunch"));
  int adopted = 0;
  if (slot != nullptr && dlsym(handle, "__TVMBackendParallelBarrier") == nullptr &&
      api.gomp_parallel != nullptr) {
    if (*slot != infer_parallel_launch) {
      api.tvm_launch = *slot;  // TVM's, set by TVM as it loaded the library
      *slot = infer_parallel_launch;
    }
    adopted = 1;
  }
  dlclose(handle);
  return adopted;
}

// The oneDNN and OpenMP entry points, as loaded by the Python side (omp may be null).
void infer_dispatch_init(void* execute, void* wait, void* set_handle, void* stream_create,
                         void* omp_set_threads, void* engine) {
  api.execute = reinterpret_cast<Execute>(execute);
  api.wait = reinterpret_cast<StreamWait>(wait);
  api.set_handle = reinterpret_cast<SetHandle>(set_handle);
  api.stream_create = reinterpret_cast<StreamCreate>(stream_create);
  api.omp_set_threads = reinterpret_cast<OmpSetThreads>(omp_set_threads);
  api.engine = engine;
}

// Register global function `name` as this fast path in front of global function `fallback`.
int infer_dispatch_register(const char* name, const char* fallback) {
  TVMFFIByteArray fallback_name{fallback, std::strlen(fallback)};
  TVMFFIObjectHandle python = nullptr;
  if (TVMFFIFunctionGetGlobal(&fallback_name, &python) != 0 || python == nullptr) return -1;
  TVMFFIObjectHandle function = nullptr;
  // The fast path holds its reference to the Python entry point for the life of the process.
  if (TVMFFIFunctionCreate(python, Call, nullptr, &function) != 0) return -1;
  TVMFFIByteArray global{name, std::strlen(name)};
  int status = TVMFFIFunctionSetGlobal(&global, function, 1);
  TVMFFIObjectDecRef(function);
  return status;
}

void* infer_dispatch_table_new(int threads) {
  Table* table = new Table();
  table->threads = threads;
  return table;
}

void infer_dispatch_table_free(void* table) { delete static_cast<Table*>(table); }

void infer_dispatch_table_clear(void* table) { static_cast<Table*>(table)->entries.clear(); }

// Make table the calling thread's (null: none); return the one it replaces.
void* infer_dispatch_activate(void* table) {
  void* previous = active_table;
  active_table = static_cast<Table*>(table);
  return previous;
}

// Record the kernel the pending call was run with. required: bit i when argument i's address
// is part of what the kernel was made for (packed weights, int8 scales); bias: its argument or
// -1; memories: the primitive's memory objects for source, weights, [bias], destination.
// convert_*: a source conversion run first (null primitive: none). Returns 0 when recorded, 1
// when no call was pending (a call from outside a table), -1 on a bad argument.
int infer_dispatch_remember(uint64_t required, int bias, int threads, void* primitive, int nargs,
                            const void* args, int nmemories, void* const* memories, void* weights,
                            void* convert_primitive, int convert_nargs, const void* convert_args,
                            void* const* convert_memories, void* convert_buffer) {
  Table* table = active_table;
  if (table == nullptr || pending_key == nullptr) return 1;
  if (nmemories < 3 || nmemories > kMaxHandles || bias >= pending_count) return -1;
  Entry e;
  e.required = required;
  for (int32_t i = 0; i < pending_count && i < 64; ++i) e.addresses.push_back(DataOf(pending_args[i]));
  e.kernel.primitive = primitive;
  e.kernel.nargs = nargs;
  e.kernel.args = static_cast<const ExecArg*>(args);
  e.kernel.nmemories = nmemories;
  for (int i = 0; i < nmemories; ++i) e.kernel.memories[i] = memories[i];
  e.weights = weights;
  e.bias = bias;
  e.threads = threads;
  if (convert_primitive != nullptr) {
    e.convert.primitive = convert_primitive;
    e.convert.nargs = convert_nargs;
    e.convert.args = static_cast<const ExecArg*>(convert_args);
    e.convert.nmemories = 2;
    e.convert.memories[0] = convert_memories[0];
    e.convert.memories[1] = convert_memories[1];
    e.convert_buffer = convert_buffer;
  }
  table->entries[*pending_key].push_back(e);
  return 0;
}

}  // extern "C"
