/* LeNet5 for the Frechet LeNet Distance (SPEC.md "Models"): 44,426 parameters at 10 classes.
 *   conv1 5x5 1->6, relu, maxpool 2   (28 -> 24 -> 12)
 *   conv2 5x5 6->16, relu, maxpool 2  (12 -> 8 -> 4)
 *   flatten 16*4*4 = 256 (C-order, as torch.flatten)
 *   fc1 256->120 relu, fc2 120->84 relu (the features), fc3 84->K (logits) */
#include "blocks.h"
#include "diffusion/models.h"

int mb_build_lenet(dd_graph *g, const dd_model_config *c, int x, int *features) {
    int h = dd_conv2d_layer(g, "conv1", x, 6, 5, 1, 0, 1);
    h = dd_maxpool2x2(g, dd_activation(g, h, DD_ACT_RELU));
    h = dd_conv2d_layer(g, "conv2", h, 16, 5, 1, 0, 1);
    h = dd_maxpool2x2(g, dd_activation(g, h, DD_ACT_RELU));
    /* dense flattens trailing dims: (N, 16, 4, 4) -> (N, 256) */
    h = dd_activation(g, dd_dense_layer(g, "fc1", h, 120, 1), DD_ACT_RELU);
    int f = dd_activation(g, dd_dense_layer(g, "fc2", h, 84, 1), DD_ACT_RELU);
    if (features) *features = f;
    return dd_dense_layer(g, "fc3", f, c->classes, 1);
}
