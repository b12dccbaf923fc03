/* Building blocks shared by the model builders (the files of models/ only). Each appends nodes to a graph,
 * names its parameters "<prefix>.<name>" as the PyTorch module of tests/reference/models.py
 * names them, and returns a tensor id or -1 (a -1 input gives -1, with the first message kept). */
#ifndef DD_MODELS_BLOCKS_H
#define DD_MODELS_BLOCKS_H

#include <stddef.h>

#include "diffusion/graph.h"
#include "diffusion/models.h"

/* "prefix.suffix", or "suffix" for an empty prefix. */
const char *mb_name(char *buf, size_t size, const char *prefix, const char *suffix);
/* Channels (dim 1) of a tensor, or -1 for an invalid id. */
int mb_channels(const dd_graph *g, int x);

/* The fixed sinusoidal table "name" (rows, dim) as a parameter (values filled on first
 * registration), then table[t] -> (N, dim). t: 0-based int32 index input. */
int mb_sinusoid_lookup(dd_graph *g, const char *name, int t, int rows, int dim);
/* An embedding table "<prefix>.weight" (rows, dim), standard normal init, looked up at idx. */
int mb_embedding(dd_graph *g, const char *prefix, int idx, int rows, int dim);
/* Time MLP of the UNet: Dense t1 -> GELU (tanh form) -> Dense t2, both dim -> dim. */
int mb_time_mlp(dd_graph *g, int emb, int dim);
/* GroupNorm "<prefix>.weight/.bias" (C), optional per-channel add (N, C), optional swish. */
int mb_group_norm(dd_graph *g, const char *prefix, int x, int groups, int add, int swish);
/* ConvEmbed: swish(GN(conv3x3(x)) + Dense(emb_swish)); emb_swish = swish(emb), shared. */
int mb_conv_embed(dd_graph *g, const char *prefix, int x, int cout, int emb_swish, int groups);
/* ResBlock: swish(GN(conv3x3(ConvEmbed(x)))) + skip(x); skip = identity or conv3x3. */
int mb_res_block(dd_graph *g, const char *prefix, int x, int cout, int emb_swish, int groups);
/* x + out(attention(qkv(x))), qkv a bias-free conv3x3 (C -> 3C), out a conv3x3 (C -> C). */
int mb_attention(dd_graph *g, const char *prefix, int x, int heads);
/* conv4x4 stride 2 pad 1. */
int mb_downsample(dd_graph *g, const char *prefix, int x, int cout);
/* nearest 2x then conv3x3 pad 1. */
int mb_upsample(dd_graph *g, const char *prefix, int x, int cout);

/* The per-family builders behind dd_model_build (config validated, inputs checked there). */
int mb_build_unet(dd_graph *g, const dd_model_config *c, int x, int t, int labels);
int mb_build_mlp2d(dd_graph *g, const dd_model_config *c, int x, int t, int labels);
int mb_build_lenet(dd_graph *g, const dd_model_config *c, int x, int *features);

#endif
