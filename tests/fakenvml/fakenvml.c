/*
 * A fake libnvidia-ml.so.1 for tests: the REAL pynvml bindings load it through
 * LD_LIBRARY_PATH, so everything above the C ABI (ctypes structs, error mapping,
 * versioned symbol names) runs exactly as it does against the NVIDIA driver.
 *
 * Why a C library and not a Python mock: the exporter's NVML code is mostly about
 * what pynvml does with return codes and struct layouts; mocking pynvml would test
 * our assumptions about pynvml instead of pynvml.
 *
 * Values come from the directory named by FAKE_NVML_DIR, one file per GPU: gpu0, gpu1...
 * (contiguous from 0), of key=value lines, RE-READ ON EVERY CALL so a test (or
 * tests/fixtures/tiny_train.py --fake_gpu) changes the GPU by replacing the file:
 *
 *   name=NVIDIA H100 80GB HBM3      uuid=GPU-...          utilization=97  (percent)
 *   memory_used=BYTES  memory_total=BYTES  power_mw=480000  power_limit_mw=700000
 *   temperature=55     pids=PID:BYTES,PID:BYTES          lost=1
 *
 * Missing keys take the defaults below; lines without '=' and '#' comments are
 * ignored, so a partial file still reads.  lost=1 makes every call about that GPU
 * return NVML_ERROR_GPU_IS_LOST.  A file named "fail" in the directory makes nvmlInit
 * fail with NVML_ERROR_DRIVER_NOT_LOADED and, while it exists, every other call too
 * (the driver went away under a running process).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25
#define NVML_ERROR_UNKNOWN 999

#define MAX_GPUS 64
#define MAX_PIDS 256
#define HANDLE_BASE 0x1000

typedef struct { unsigned int gpu; unsigned int memory; } nvmlUtilization_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
#define NVML_MEMORY_V2 0x02000028u
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t; /* v2 and v3 share this layout */
typedef struct {
    unsigned int version;
    int sensorType;
    int temperature;
} nvmlTemperature_v1_t;

typedef struct {
    char name[96];
    char uuid[96];
    unsigned int utilization;
    unsigned long long memory_used, memory_total;
    unsigned int power_mw, power_limit_mw, temperature;
    int lost;
    unsigned int npids;
    unsigned int pid[MAX_PIDS];
    unsigned long long pid_mem[MAX_PIDS];
} gpu_t;

static int init_count = 0;

static const char *dir(void) {
    const char *d = getenv("FAKE_NVML_DIR");
    return d && *d ? d : ".";
}

static int driver_failed(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/fail", dir());
    return access(path, F_OK) == 0;
}

static int gpu_exists(unsigned int index) {
    char path[4096];
    snprintf(path, sizeof path, "%s/gpu%u", dir(), index);
    return access(path, F_OK) == 0;
}

static unsigned int gpu_count(void) {
    unsigned int n = 0;
    while (n < MAX_GPUS && gpu_exists(n)) n++;
    return n;
}

static void parse_pids(gpu_t *g, char *value) {
    char *save = NULL;
    for (char *tok = strtok_r(value, ",", &save); tok && g->npids < MAX_PIDS;
         tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        unsigned long pid = strtoul(tok, NULL, 10);
        if (pid == 0) continue;
        g->pid[g->npids] = (unsigned int)pid;
        g->pid_mem[g->npids] = colon ? strtoull(colon + 1, NULL, 10) : 0ULL;
        g->npids++;
    }
}

static void trim(char *s) {
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = 0;
}

/* Read gpuN; 0 on success, an NVML error when the GPU is gone or lost. */
static nvmlReturn_t load(unsigned int index, gpu_t *g) {
    char path[4096], line[8192];
    memset(g, 0, sizeof *g);
    snprintf(g->name, sizeof g->name, "Fake NVIDIA GPU");
    snprintf(g->uuid, sizeof g->uuid, "GPU-00000000-fake-0000-0000-%012u", index);
    g->memory_total = 80ULL << 30;
    g->power_mw = 72000;
    g->power_limit_mw = 700000;
    g->temperature = 40;
    snprintf(path, sizeof path, "%s/gpu%u", dir(), index);
    FILE *f = fopen(path, "r");
    if (!f) return NVML_ERROR_GPU_IS_LOST;
    while (fgets(line, sizeof line, f)) {
        trim(line);
        if (line[0] == '#') continue;
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = 0;
        char *k = line, *v = eq + 1;
        while (*k == ' ') k++;
        while (*v == ' ') v++;
        if (!strcmp(k, "name")) snprintf(g->name, sizeof g->name, "%s", v);
        else if (!strcmp(k, "uuid")) snprintf(g->uuid, sizeof g->uuid, "%s", v);
        else if (!strcmp(k, "utilization")) g->utilization = (unsigned int)strtoul(v, NULL, 10);
        else if (!strcmp(k, "memory_used")) g->memory_used = strtoull(v, NULL, 10);
        else if (!strcmp(k, "memory_total")) g->memory_total = strtoull(v, NULL, 10);
        else if (!strcmp(k, "power_mw")) g->power_mw = (unsigned int)strtoul(v, NULL, 10);
        else if (!strcmp(k, "power_limit_mw")) g->power_limit_mw = (unsigned int)strtoul(v, NULL, 10);
        else if (!strcmp(k, "temperature")) g->temperature = (unsigned int)strtoul(v, NULL, 10);
        else if (!strcmp(k, "lost")) g->lost = atoi(v) != 0;
        else if (!strcmp(k, "pids")) parse_pids(g, v);
    }
    fclose(f);
    return g->lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
}

static nvmlReturn_t ready(void) {
    if (init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    if (driver_failed()) return NVML_ERROR_DRIVER_NOT_LOADED;
    return NVML_SUCCESS;
}

/* Common prologue of every device call: initialised, driver there, GPU readable. */
static nvmlReturn_t device(nvmlDevice_t h, gpu_t *g) {
    nvmlReturn_t r = ready();
    if (r) return r;
    uintptr_t v = (uintptr_t)h;
    if (v < HANDLE_BASE || v >= HANDLE_BASE + MAX_GPUS) return NVML_ERROR_INVALID_ARGUMENT;
    return load((unsigned int)(v - HANDLE_BASE), g);
}

static nvmlReturn_t copy_str(const char *s, char *buf, unsigned int len) {
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, s, strlen(s) + 1);
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- lifecycle */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    if (driver_failed()) return NVML_ERROR_DRIVER_NOT_LOADED;
    init_count++;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    init_count--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

/* ---------------------------------------------------------------- system */

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    nvmlReturn_t r = ready();
    return r ? r : copy_str("999.99-fake", version, length);
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    nvmlReturn_t r = ready();
    return r ? r : copy_str("99.999.99-fake", version, length);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    nvmlReturn_t r = ready();
    if (r) return r;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = gpu_count();
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    gpu_t g;
    nvmlReturn_t r = ready();
    if (r) return r;
    if (!device || index >= gpu_count()) return NVML_ERROR_INVALID_ARGUMENT;
    r = load(index, &g);
    if (r) return r;
    *device = (nvmlDevice_t)(uintptr_t)(HANDLE_BASE + index);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

/* ---------------------------------------------------------------- device */

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t h, char *name, unsigned int length) {
    gpu_t g;
    nvmlReturn_t r = device(h, &g);
    return r ? r : copy_str(g.name, name, length);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t h, char *uuid, unsigned int length) {
    gpu_t g;
    nvmlReturn_t r = device(h, &g);
    return r ? r : copy_str(g.uuid, uuid, length);
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t h, nvmlUtilization_t *u) {
    gpu_t g;
    nvmlReturn_t r = device(h, &g);
    if (r) return r;
    if (!u) return NVML_ERROR_INVALID_ARGUMENT;
    u->gpu = g.utilization;
    u->memory = g.utilization / 2;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *m) {
    gpu_t g;
    nvmlReturn_t r = device(h, &g);
    if (r) return r;
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    m->total = g.memory_total;
    m->used = g.memory_used;
    m->free = g.memory_total > g.memory_used ? g.memory_total - g.memory_used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t h, nvmlMemory_v2_t *m) {
    gpu_t g;
    nvmlReturn_t r = device(h, &g);
    if (r) return r;
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    if (m->version != NVML_MEMORY_V2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    m->total = g.memory_total;
    m->reserved = 0;
    m->used = g.memory_used;
    m->free = g.memory_total > g.memory_used ? g.memory_total - g.memory_used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t h, unsigned int *mw) {
    gpu_t g;
    nvmlReturn_t r = device(h, &g);
    if (r) return r;
    if (!mw) return NVML_ERROR_INVALID_ARGUMENT;
    *mw = g.power_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t h, unsigned int *mw) {
    gpu_t g;
    nvmlReturn_t r = device(h, &g);
    if (r) return r;
    if (!mw) return NVML_ERROR_INVALID_ARGUMENT;
    *mw = g.power_limit_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t h, int sensor, unsigned int *temp) {
    gpu_t g;
    nvmlReturn_t r = device(h, &g);
    if (r) return r;
    if (!temp || sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *temp = g.temperature;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t h, nvmlTemperature_v1_t *t) {
    gpu_t g;
    nvmlReturn_t r = device(h, &g);
    if (r) return r;
    if (!t || t->sensorType != 0) return NVML_ERROR_INVALID_ARGUMENT;
    t->temperature = (int)g.temperature;
    return NVML_SUCCESS;
}

/* The two-call protocol pynvml uses: NULL/too small -> INSUFFICIENT_SIZE with the count. */
static nvmlReturn_t processes(nvmlDevice_t h, unsigned int *count, nvmlProcessInfo_t *infos) {
    gpu_t g;
    nvmlReturn_t r = device(h, &g);
    if (r) return r;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (g.npids == 0) {
        *count = 0;
        return NVML_SUCCESS;
    }
    if (!infos || *count < g.npids) {
        *count = g.npids;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned int i = 0; i < g.npids; i++) {
        infos[i].pid = g.pid[i];
        infos[i].usedGpuMemory = g.pid_mem[i];
        infos[i].gpuInstanceId = 0xFFFFFFFFu;
        infos[i].computeInstanceId = 0xFFFFFFFFu;
    }
    *count = g.npids;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t h, unsigned int *c,
                                                     nvmlProcessInfo_t *p) {
    return processes(h, c, p);
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t h, unsigned int *c,
                                                     nvmlProcessInfo_t *p) {
    return processes(h, c, p);
}
