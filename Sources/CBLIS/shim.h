// The BLIS calls SwiftTitan makes, declared here rather than through <blis.h>: Debian's header is per threading
// variant (the OpenMP one includes <omp.h>, which the Swift toolchain's clang does not ship). This is BLIS's typed
// API (docs/BLISTypedAPI.md) on a 64-bit build: dim_t and inc_t are int64_t; trans_t and arch_t are enums (trans_t 0
// = no transpose: we express transposes as strides instead).
#include <stdint.h>

void bli_init(void);
void bli_sgemm(unsigned int transa, unsigned int transb, int64_t m, int64_t n, int64_t k,
               const float *alpha, const float *a, int64_t rsa, int64_t csa,
               const float *b, int64_t rsb, int64_t csb,
               const float *beta, float *c, int64_t rsc, int64_t csc);
void bli_thread_set_num_threads(int64_t n_threads);
int bli_arch_query_id(void);
const char *bli_arch_string(int id);
const char *bli_info_get_version_str(void);
