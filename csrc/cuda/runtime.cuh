// Host-side CUDA runtime helpers of the launchers: one error check with the message every op
// shares, and the device guard of a launch.
//
// _C links its own (static) CUDA runtime. The current device is per host thread and shared with
// torch's runtime (both make the device's primary context current), so a launcher that set it
// and left it would silently move torch's current device. DeviceGuard sets the launch's device
// only when it is not current already (the Python dispatcher makes the tensors' device current,
// so normally it changes nothing) and restores the caller's device on every exit path.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace pgap {
namespace cuda {

// Throws std::runtime_error("pgap <what>: <CUDA error>") unless err is cudaSuccess; names the
// usual cause when _C's runtime is newer than the installed driver.
inline void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  std::string msg = std::string("pgap ") + what + ": " + cudaGetErrorString(err);
  if (err == cudaErrorInsufficientDriver || err == cudaErrorUnsupportedPtxVersion ||
      err == cudaErrorCompatNotSupportedOnDevice) {
    msg += " (pgap_kernels._C was built with CUDA " + std::to_string(CUDART_VERSION / 1000) + "." +
           std::to_string(CUDART_VERSION % 1000 / 10) +
           ", newer than this driver supports: `nvidia-smi` shows the newest CUDA the driver "
           "runs. Rebuild _C with an nvcc no newer than that (pip install --no-build-isolation "
           "-e . with that toolkit's nvcc on PATH), or update the driver)";
  }
  throw std::runtime_error(msg);
}

class DeviceGuard {
 public:
  DeviceGuard(int device, const char* what) {
    check(cudaGetDevice(&previous_), what);
    if (previous_ != device) {
      check(cudaSetDevice(device), what);
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(previous_);  // no throw from a destructor; it was current before
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

}  // namespace cuda
}  // namespace pgap
