// ADInplaceOrView kernels of the ops that write an argument in place (schema Tensor(a!)): what
// ATen's generated code does for its own in-place ops, and a library op registered for its
// devices only does not get: bump the written tensor's version counter, so that autograd refuses
// a backward that would read its old values ("modified by an inplace operation") and an
// inference tensor is refused outside InferenceMode. Without it, a conv_state saved by
// causal_conv1d (initial_state) and then stepped by causal_conv1d_update gave silently wrong
// gradients. The kernels run in any mode (InferenceMode skips this dispatch key, as for ATen's).
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace fusedgru {
namespace {

at::Tensor causal_conv1d_update_ad_inplace(c10::DispatchKeySet keys, const at::Tensor& x,
                                           at::Tensor& conv_state, const at::Tensor& weight,
                                           const std::optional<at::Tensor>& bias, int64_t dilation,
                                           int64_t activation) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fusedgru::causal_conv1d_update", "")
          .typed<at::Tensor(const at::Tensor&, at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, int64_t, int64_t)>();
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    y = op.redispatch(keys & c10::after_ADInplaceOrView_keyset, x, conv_state, weight, bias,
                      dilation, activation);
  }
  // c10's VariableVersion::bump: refuses an inference tensor outside InferenceMode.
  conv_state.unsafeGetTensorImpl()->bump_version();
  return y;
}

}  // namespace
}  // namespace fusedgru

TORCH_LIBRARY_IMPL(fusedgru, ADInplaceOrView, m) {
  m.impl("causal_conv1d_update", TORCH_FN(fusedgru::causal_conv1d_update_ad_inplace));
}
