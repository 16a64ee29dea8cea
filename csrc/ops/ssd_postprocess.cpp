// Schema and argument checks of fastladder::ssd_postprocess (kernels: cpu/ and
// cuda/ssd_postprocess_kernel).
#include "ops/ssd_postprocess.h"

#include <torch/library.h>

#include <cmath>

namespace fastladder {
namespace ops {

SsdPostprocessShape check_ssd_postprocess(const at::Tensor& loc, const at::Tensor& conf_logits,
                                          const at::Tensor& priors, double score_thresh, double nms_thresh,
                                          int64_t topk, int64_t max_detections, at::ArrayRef<double> variances,
                                          int64_t background) {
  TORCH_CHECK_VALUE(loc.dim() == 3 && loc.size(2) == 4, "loc must be a [B, P, 4] tensor of box offsets, got shape ",
                    loc.sizes());
  TORCH_CHECK_VALUE(conf_logits.dim() == 3, "conf_logits must be a [B, P, C] tensor of class logits, got shape ",
                    conf_logits.sizes());
  TORCH_CHECK_VALUE(priors.dim() == 2 && priors.size(1) == 4, "priors must be a [P, 4] tensor of (cx, cy, w, h), got shape ",
                    priors.sizes());
  TORCH_CHECK_VALUE(loc.size(0) == conf_logits.size(0) && loc.size(1) == conf_logits.size(1),
                    "loc and conf_logits must have the same batch size and number of priors, got loc ", loc.sizes(),
                    " and conf_logits ", conf_logits.sizes());
  TORCH_CHECK_VALUE(loc.size(1) == priors.size(0), "loc has ", loc.size(1), " priors per image but priors has ",
                    priors.size(0), " (loc ", loc.sizes(), ", priors ", priors.sizes(), ")");
  TORCH_CHECK_VALUE(conf_logits.size(2) >= 1, "conf_logits needs at least one class, got shape ", conf_logits.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(loc.scalar_type()), "loc must be floating point, got ", loc.scalar_type());
  TORCH_CHECK_VALUE(loc.scalar_type() == conf_logits.scalar_type() && loc.scalar_type() == priors.scalar_type(),
                    "loc, conf_logits and priors must have the same dtype, got ", loc.scalar_type(), ", ",
                    conf_logits.scalar_type(), " and ", priors.scalar_type());
  TORCH_CHECK_VALUE(loc.device() == conf_logits.device() && loc.device() == priors.device(),
                    "loc, conf_logits and priors must be on the same device, got ", loc.device(), ", ",
                    conf_logits.device(), " and ", priors.device());
  TORCH_CHECK_VALUE(std::isfinite(score_thresh) && score_thresh >= 0.0 && score_thresh < 1.0,
                    "score_thresh must be in [0, 1), got ", score_thresh);
  TORCH_CHECK_VALUE(nms_thresh >= 0.0 && nms_thresh <= 1.0, "nms_thresh must be in [0, 1], got ", nms_thresh);
  TORCH_CHECK_VALUE(topk >= 1, "topk must be >= 1, got ", topk);
  TORCH_CHECK_VALUE(max_detections >= 1, "max_detections must be >= 1, got ", max_detections);
  TORCH_CHECK_VALUE(variances.size() == 2, "variances must be two numbers (center, size), got ", variances.size());
  TORCH_CHECK_VALUE(std::isfinite(variances[0]) && std::isfinite(variances[1]) && variances[0] > 0 && variances[1] > 0,
                    "variances must be positive and finite, got (", variances[0], ", ", variances[1], ")");
  const int64_t classes = conf_logits.size(2);
  TORCH_CHECK_VALUE(background >= -1 && background < classes, "background must be a class index in [0, ", classes,
                    ") or -1 for none, got ", background, " (conf_logits ", conf_logits.sizes(), ")");
  SsdPostprocessShape s;
  s.batch = loc.size(0);
  s.priors = loc.size(1);
  s.classes = classes;
  s.topk = topk;
  s.max_detections = max_detections;
  s.background = background;
  s.v_center = variances[0];
  s.v_size = variances[1];
  return s;
}

}  // namespace ops
}  // namespace fastladder

TORCH_LIBRARY_FRAGMENT(fastladder, m) {
  // -> (boxes [B, K, 4], scores [B, K], labels [B, K] int64, num_detections [B] int64), K =
  // max_detections; rows past num_detections hold zeros and label -1.
  m.def(
      "ssd_postprocess(Tensor loc, Tensor conf_logits, Tensor priors, float score_thresh, float nms_thresh, "
      "int topk, int max_detections, float[] variances, int background) -> (Tensor, Tensor, Tensor, Tensor)");
}
