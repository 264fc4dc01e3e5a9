// The Python module rlvfast._C. It holds no functions of its own: importing it loads
// this shared library, whose TORCH_LIBRARY_FRAGMENT blocks (one per op file in cpu/
// and cuda/) register the ops as torch.ops.rlvfast.*.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
