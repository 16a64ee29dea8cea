// ssd_postprocess: an SSD head's raw outputs -> the final, padded detections of a whole batch.
// Declarations shared by the CPU and CUDA files.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastladder {
namespace ops {

struct SsdPostprocessShape {
  int64_t batch, priors, classes;
  int64_t topk;            // candidates per class kept before NMS
  int64_t max_detections;  // K: detections per image (the outputs are padded to K)
  int64_t background;      // the class index that is never reported, or -1 for none
  double v_center, v_size;
};

// loc [B, P, 4], conf_logits [B, P, C], priors [P, 4], one floating dtype and device; parameters in
// range. Raises errors that name the argument and the shapes seen.
SsdPostprocessShape check_ssd_postprocess(const at::Tensor& loc, const at::Tensor& conf_logits,
                                          const at::Tensor& priors, double score_thresh, double nms_thresh,
                                          int64_t topk, int64_t max_detections, at::ArrayRef<double> variances,
                                          int64_t background);

}  // namespace ops
}  // namespace fastladder
