// DLPack capsule -> pws::TensorView, with the capsule's deleter called when the view is released.
#pragma once
#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <vector>

#include "pws/tensor_view.h"

namespace pws::bind {

// Owns one consumed DLPack capsule; its destructor calls the producer's deleter. Destroy with the
// GIL held.
class DLPackOwner {
 public:
  virtual ~DLPackOwner() = default;
};

struct ImportedTensor {
  TensorView view;
  std::unique_ptr<DLPackOwner> owner;
};

// Consume a "dltensor" or "dltensor_versioned" capsule. `what` names the input in error messages.
// Raises TypeError for unsupported dtypes and ValueError for unsupported devices.
ImportedTensor import_capsule(pybind11::capsule cap, const std::string& what);

std::vector<ImportedTensor> import_capsules(const pybind11::list& caps,
                                            const std::vector<std::string>& names);

}  // namespace pws::bind
