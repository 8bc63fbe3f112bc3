/*
 * edgeship's test delegate: a real external TFLite delegate, as small as one can be.
 *
 * `make test` builds it (build/test-delegate/libedgeship_test_delegate.so) with the system C
 * compiler, and tests/test_delegates.py gives it to an agent through its board-side allow-list
 * (`--allow-delegate test=PATH`). It declares the stable TFLite C delegate ABI itself, without
 * TensorFlow headers: the struct layouts below follow tensorflow/lite/core/c/common.h of
 * TFLite 2.21 (LiteRT 2.3), whose fields are only ever appended, never reordered.
 *
 * What it does: Prepare walks the execution plan and claims the nodes of ONE builtin op that is a
 * byte copy (RESHAPE, SQUEEZE or EXPAND_DIMS: the output holds the input's bytes), chosen by the
 * option `claim`; its kernel copies input 0 to output 0, so results stay exact. So the partition
 * report shows the nodes it took and the ops left on the CPU, and which op it took shows that
 * the options reached it. Options:
 *   claim=RESHAPE|SQUEEZE|EXPAND_DIMS   the op to claim (default RESHAPE)
 *   max_nodes=N                         claim at most N nodes (default: all)
 *   fail=create                         refuse to be created (the load fails, with a message)
 *   fail=prepare                        fail in Prepare (the interpreter cannot be built with it)
 * Any other key, or a bad value, makes creation fail with a message naming it.
 *
 * For the refusal tests, loading the library has a side effect: when EDGESHIP_TEST_DELEGATE_MARKER
 * names a file, its constructor appends a line there (so a test sees whether anything ever
 * dlopen()ed it), and when EDGESHIP_TEST_DELEGATE_ABORT is set it aborts the process that loads it.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the TFLite C ABI this library needs (tensorflow/lite/core/c/common.h, c_api_types.h) ---- */
typedef enum { kTfLiteOk = 0, kTfLiteError = 1, kTfLiteDelegateError = 2 } TfLiteStatus;

typedef struct TfLiteIntArray {
  int size;
  int data[];
} TfLiteIntArray;

typedef struct {
  float scale;
  int32_t zero_point;
} TfLiteQuantizationParams;

typedef struct {
  int type; /* TfLiteQuantizationType */
  void* params;
} TfLiteQuantization;

struct TfLiteDelegate;

typedef struct TfLiteTensor {
  int type; /* TfLiteType */
  void* data; /* TfLitePtrUnion: a union of pointers */
  TfLiteIntArray* dims;
  TfLiteQuantizationParams params;
  int allocation_type; /* TfLiteAllocationType */
  size_t bytes;
  const void* allocation;
  const char* name;
  struct TfLiteDelegate* delegate;
  int buffer_handle;
  bool data_is_stale;
  bool is_variable;
  TfLiteQuantization quantization;
  void* sparsity;
  const TfLiteIntArray* dims_signature;
} TfLiteTensor;

typedef struct TfLiteNode {
  TfLiteIntArray* inputs;
  TfLiteIntArray* outputs;
  TfLiteIntArray* intermediates;
  TfLiteIntArray* temporaries;
  void* user_data;
  void* builtin_data;
  const void* custom_initial_data;
  int custom_initial_data_size;
  struct TfLiteDelegate* delegate;
  bool might_have_side_effect;
} TfLiteNode;

struct TfLiteRegistration;

typedef struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext* context, TfLiteIntArray** execution_plan);
  TfLiteTensor* tensors;
  void* impl_;
  TfLiteStatus (*ResizeTensor)(struct TfLiteContext*, TfLiteTensor* tensor, TfLiteIntArray* new_size);
  void (*ReportError)(struct TfLiteContext*, const char* msg, ...);
  TfLiteStatus (*AddTensors)(struct TfLiteContext*, int tensors_to_add, int* first_new_tensor_index);
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext*, int node_index, TfLiteNode** node,
                                         struct TfLiteRegistration** registration);
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(struct TfLiteContext*, struct TfLiteRegistration registration,
                                                        const TfLiteIntArray* nodes_to_replace,
                                                        struct TfLiteDelegate* delegate);
  /* later fields are not used here */
} TfLiteContext;

typedef struct TfLiteRegistration {
  void* (*init)(TfLiteContext* context, const char* buffer, size_t length);
  void (*free)(TfLiteContext* context, void* buffer);
  TfLiteStatus (*prepare)(TfLiteContext* context, TfLiteNode* node);
  TfLiteStatus (*invoke)(TfLiteContext* context, TfLiteNode* node);
  const char* (*profiling_string)(const TfLiteContext* context, const TfLiteNode* node);
  int32_t builtin_code;
  const char* custom_name;
  int version;
  void* registration_external; /* TfLiteOperator* */
  void* async_kernel;          /* struct TfLiteAsyncKernel* (*)(TfLiteContext*, TfLiteNode*) */
  uint64_t inplace_operator;
} TfLiteRegistration; /* passed BY VALUE to ReplaceNodeSubsetsWithDelegateKernels: the full layout matters */

typedef struct TfLiteDelegateParams {
  struct TfLiteDelegate* delegate;
  TfLiteIntArray* nodes_to_replace;
  TfLiteIntArray* input_tensors;
  TfLiteIntArray* output_tensors;
} TfLiteDelegateParams; /* what a delegate kernel's init gets as `buffer` */

typedef struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(TfLiteContext* context, struct TfLiteDelegate* delegate);
  TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext*, struct TfLiteDelegate*, int, TfLiteTensor*);
  TfLiteStatus (*CopyToBufferHandle)(TfLiteContext*, struct TfLiteDelegate*, int, TfLiteTensor*);
  void (*FreeBufferHandle)(TfLiteContext*, struct TfLiteDelegate*, int*);
  int64_t flags;
  void* opaque_delegate_builder; /* struct TfLiteOpaqueDelegateBuilder*: NULL, so Prepare above is used */
} TfLiteDelegate;

/* ---- what loading it does ---- */
__attribute__((constructor)) static void on_load(void) {
  const char* marker = getenv("EDGESHIP_TEST_DELEGATE_MARKER");
  if (marker != NULL && *marker != '\0') {
    FILE* f = fopen(marker, "a");
    if (f != NULL) {
      fputs("loaded\n", f);
      fclose(f);
    }
  }
  if (getenv("EDGESHIP_TEST_DELEGATE_ABORT") != NULL) abort();
}

/* ---- the delegate ---- */
enum { kBuiltinReshape = 22, kBuiltinSqueeze = 43, kBuiltinExpandDims = 70 };

static const struct {
  const char* name;
  int code;
} kClaimable[] = {{"RESHAPE", kBuiltinReshape}, {"SQUEEZE", kBuiltinSqueeze}, {"EXPAND_DIMS", kBuiltinExpandDims}};

typedef struct {
  TfLiteDelegate base; /* first, so a TfLiteDelegate* is this struct's address */
  int claim_code;
  long max_nodes; /* < 0: no limit */
  bool fail_prepare;
  /* The claimed nodes' tensors (input 0, output 0), by node index: noted in Prepare, the only time
     the runtime lets a delegate read nodes (kernels look them up here in init). */
  int claimed;
  int* node_of;
  int* input_of;
  int* output_of;
} TestDelegate;

typedef struct {
  int count;
  int tensors[]; /* input, output of each node this kernel runs, in order */
} Kernel;

static void* kernel_init(TfLiteContext* context, const char* buffer, size_t length) {
  (void)context;
  (void)length;
  const TfLiteDelegateParams* params = (const TfLiteDelegateParams*)buffer;
  const TestDelegate* self = (const TestDelegate*)params->delegate;
  int n = params->nodes_to_replace->size;
  Kernel* k = malloc(sizeof(Kernel) + 2 * sizeof(int) * (size_t)n);
  if (k == NULL) return NULL;
  k->count = 0;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < self->claimed; j++)
      if (self->node_of[j] == params->nodes_to_replace->data[i]) {
        k->tensors[2 * k->count] = self->input_of[j];
        k->tensors[2 * k->count + 1] = self->output_of[j];
        k->count++;
      }
  return k;
}

static void kernel_free(TfLiteContext* context, void* buffer) {
  (void)context;
  free(buffer);
}

static TfLiteStatus copy(TfLiteContext* context, const Kernel* k, bool run) {
  for (int i = 0; i < k->count; i++) {
    TfLiteTensor* in = &context->tensors[k->tensors[2 * i]];
    TfLiteTensor* out = &context->tensors[k->tensors[2 * i + 1]];
    if (in->bytes != out->bytes) {
      context->ReportError(context, "edgeship test delegate: a claimed node copies %zu bytes into %zu", in->bytes,
                           out->bytes);
      return kTfLiteError;
    }
    if (run) memmove(out->data, in->data, in->bytes);
  }
  return kTfLiteOk;
}

static TfLiteStatus kernel_prepare(TfLiteContext* context, TfLiteNode* node) {
  return copy(context, (const Kernel*)node->user_data, false);
}

static TfLiteStatus kernel_invoke(TfLiteContext* context, TfLiteNode* node) {
  return copy(context, (const Kernel*)node->user_data, true);
}

static bool produced_by_claimed(const TestDelegate* self, int tensor) {
  for (int i = 0; i < self->claimed; i++)
    if (self->output_of[i] == tensor) return true;
  return false;
}

static TfLiteStatus delegate_prepare(TfLiteContext* context, TfLiteDelegate* delegate) {
  TestDelegate* self = (TestDelegate*)delegate;
  if (self->fail_prepare) {
    context->ReportError(context, "edgeship test delegate: Prepare fails (option fail=prepare)");
    return kTfLiteDelegateError;
  }
  TfLiteIntArray* plan;
  if (context->GetExecutionPlan(context, &plan) != kTfLiteOk) return kTfLiteError;
  size_t n = (size_t)plan->size;
  free(self->node_of);
  free(self->input_of);
  free(self->output_of);
  self->claimed = 0;
  self->node_of = malloc(sizeof(int) * (n + 1));
  self->input_of = malloc(sizeof(int) * (n + 1));
  self->output_of = malloc(sizeof(int) * (n + 1));
  TfLiteIntArray* nodes = malloc(sizeof(TfLiteIntArray) + sizeof(int) * (n + 1));
  if (self->node_of == NULL || self->input_of == NULL || self->output_of == NULL || nodes == NULL) {
    free(nodes);
    return kTfLiteError;
  }
  for (int i = 0; i < plan->size; i++) {
    if (self->max_nodes >= 0 && self->claimed >= self->max_nodes) break;
    TfLiteNode* node;
    TfLiteRegistration* reg;
    if (context->GetNodeAndRegistration(context, plan->data[i], &node, &reg) != kTfLiteOk) continue;
    if (reg->builtin_code != self->claim_code || node->inputs->size < 1 || node->outputs->size != 1) continue;
    /* A node fed by another claimed node would join its partition and leave the tensor between them
       unallocated: claim only nodes whose input comes from the CPU, so every partition is one node. */
    if (produced_by_claimed(self, node->inputs->data[0])) continue;
    self->node_of[self->claimed] = plan->data[i];
    self->input_of[self->claimed] = node->inputs->data[0];
    self->output_of[self->claimed] = node->outputs->data[0];
    self->claimed++;
  }
  nodes->size = self->claimed;
  memcpy(nodes->data, self->node_of, sizeof(int) * (size_t)self->claimed);
  TfLiteStatus status = kTfLiteOk;
  if (self->claimed > 0) {
    TfLiteRegistration reg;
    memset(&reg, 0, sizeof reg);
    reg.init = kernel_init;
    reg.free = kernel_free;
    reg.prepare = kernel_prepare;
    reg.invoke = kernel_invoke;
    reg.custom_name = "EdgeshipTestDelegate";
    reg.version = 1;
    status = context->ReplaceNodeSubsetsWithDelegateKernels(context, reg, nodes, delegate);
  }
  free(nodes);
  return status;
}

static void destroy(TestDelegate* self) {
  if (self == NULL) return;
  free(self->node_of);
  free(self->input_of);
  free(self->output_of);
  free(self);
}

static TestDelegate* refuse(void (*report_error)(const char*), TestDelegate* self, const char* message) {
  if (report_error != NULL) report_error(message);
  destroy(self);
  return NULL;
}

/* The external delegate entry points (tensorflow/lite/delegates/external/external_delegate_interface.h).
   The Python loaders declare num_options as a C int: only its low 32 bits are read. */
TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t num_options,
                                              void (*report_error)(const char*)) {
  unsigned int n = (unsigned int)num_options;
  TestDelegate* self = calloc(1, sizeof(TestDelegate));
  char message[256];
  if (self == NULL) return NULL;
  self->base.Prepare = delegate_prepare;
  self->base.data_ = self;
  self->claim_code = kBuiltinReshape;
  self->max_nodes = -1;
  for (unsigned int i = 0; i < n; i++) {
    const char* key = keys[i];
    const char* value = values[i];
    if (strcmp(key, "claim") == 0) {
      int code = -1;
      for (size_t j = 0; j < sizeof kClaimable / sizeof kClaimable[0]; j++)
        if (strcmp(value, kClaimable[j].name) == 0) code = kClaimable[j].code;
      if (code < 0) {
        snprintf(message, sizeof message, "option claim=%.64s: it claims RESHAPE, SQUEEZE or EXPAND_DIMS", value);
        return (TfLiteDelegate*)refuse(report_error, self, message);
      }
      self->claim_code = code;
    } else if (strcmp(key, "max_nodes") == 0) {
      char* end;
      long v = strtol(value, &end, 10);
      if (*value == '\0' || *end != '\0' || v < 0) {
        snprintf(message, sizeof message, "option max_nodes=%.64s: give a whole number >= 0", value);
        return (TfLiteDelegate*)refuse(report_error, self, message);
      }
      self->max_nodes = v;
    } else if (strcmp(key, "fail") == 0 && strcmp(value, "create") == 0) {
      return (TfLiteDelegate*)refuse(report_error, self, "refused to be created (option fail=create)");
    } else if (strcmp(key, "fail") == 0 && strcmp(value, "prepare") == 0) {
      self->fail_prepare = true;
    } else {
      snprintf(message, sizeof message, "unknown option %.64s=%.64s (it takes claim, max_nodes, fail)", key, value);
      return (TfLiteDelegate*)refuse(report_error, self, message);
    }
  }
  return &self->base;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) {
  destroy((TestDelegate*)delegate);
}
