/* spank_compat.h: lets slurm-spank 0.4 generate bindings against Slurm 22.05.
 *
 * slurm-spank 0.4 binds spank_prepend_task_argv, which first appears in
 * Slurm 23.11. On older headers we declare it so bindgen succeeds; torpor
 * never calls it (the symbol does not exist in 22.05's slurmstepd).
 * See docs/design/0002-slurm-version-policy.md.
 */
#ifndef TORPOR_SPANK_COMPAT_H
#define TORPOR_SPANK_COMPAT_H
#include <slurm/spank.h>
#include <slurm/slurm_version.h>

#if SLURM_VERSION_NUMBER < SLURM_VERSION_NUM(23, 11, 0)
spank_err_t spank_prepend_task_argv(spank_t spank, int argc, const char *argv[]);
#endif

#endif
