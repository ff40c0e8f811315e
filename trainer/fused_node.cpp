/*
 * The hidden stack of trainer/fused.py as a native (C++) autograd node: the same matrix products in the
 * same order as its Python node (_HiddenStack there), and the same C kernels of fused.c, which this
 * library links in. The biases are the kernels' too: added in the ReLU's pass (not by the product),
 * their gradients summed in the ReLU's backward pass. A Python autograd node costs ~85 us more per
 * training step of two hidden layers (the engine's call back into Python and each backward
 * operation's Python dispatch); this is what is left of the regularizers' overhead once their
 * arithmetic is fused. The model's output layer (a Linear with no activation) may close the stack:
 * in the node, its autograd bookkeeping is saved too (~4 % of a plain 784-256-256-10 step, measured
 * in place).
 *
 * trainer/fused.py compiles this file with fused.c (the system C++ compiler, PyTorch's headers) on
 * first use and loads it with torch.ops.load_library; the operator is
 *
 *   torch.ops.sweeps_fused.hidden_stack(x, params, buffers, words, layout, scalars) -> Tensor
 *
 * with, for each layer l of the stack, in order:
 *   layout[4l .. 4l+3]  = has_bias, has_batchnorm, has_relu, drop_level (0: no dropout)
 *   scalars[3l .. 3l+2] = dropout scale, batch-norm momentum, batch-norm eps
 *   params              : weight, [bias], [gamma, beta]
 *   buffers             : [running_mean, running_var, num_batches_tracked]   (batch-norm layers)
 *   words               : [the mask's 16-bit words]                         (dropout layers)
 * All float32 (num_batches_tracked int64, words int64), contiguous, on the CPU; x is (n, in_features).
 * A layer without ReLU is an output layer, z = x W^T + b: only the last layer may be one, and it has
 * no batch norm and no dropout.
 */
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

extern "C" {
void bn_relu_drop_fwd(const float *z, float *y, int64_t n, int64_t c, const float *gamma, const float *beta,
                      float *running_mean, float *running_var, int64_t *batches, double momentum, double eps,
                      const uint16_t *u, int32_t level, float scale, float *stats);
void bn_relu_drop_bwd(const float *gy, const float *z, const float *y, int64_t n, int64_t c, const float *gamma,
                      const float *stats, float scale, float *gz, float *dgamma, float *dbeta);
void relu_drop_fwd(const float *h, float *y, int64_t n, int64_t c, const float *bias, const uint16_t *u,
                   int32_t level, float scale);
void relu_drop_bwd(const float *gy, const float *y, int64_t n, int64_t c, float scale, float *gh, float *dbias);
void bias_add(float *z, int64_t n, int64_t c, const float *bias);
void column_sums(const float *g, int64_t n, int64_t c, float *out);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check(const at::Tensor &t, at::ScalarType type, int64_t numel, const char *what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == type && t.is_contiguous() && t.numel() == numel,
              "hidden_stack: ", what, " must be a contiguous CPU tensor of ", numel, " ", type, ", got ",
              t.scalar_type(), " ", t.sizes());
}

struct HiddenStack : public torch::autograd::Function<HiddenStack> {
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, at::TensorList params, at::TensorList buffers,
                            at::TensorList words, std::vector<int64_t> layout, std::vector<double> scalars) {
    TORCH_CHECK(layout.size() % 4 == 0 && layout.size() / 4 * 3 == scalars.size() && !layout.empty(),
                "hidden_stack: layout needs four entries per layer and scalars three");
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2,
                "hidden_stack: x must be a 2-D float32 CPU tensor");
    const size_t layers = layout.size() / 4;
    size_t pi = 0, bi = 0, wi = 0;
    variable_list saved;
    at::Tensor h = x;
    for (size_t l = 0; l < layers; l++) {
      const bool has_bias = layout[4 * l] != 0, has_bn = layout[4 * l + 1] != 0, has_relu = layout[4 * l + 2] != 0;
      const int32_t level = static_cast<int32_t>(layout[4 * l + 3]);
      const float scale = static_cast<float>(scalars[3 * l]);
      TORCH_CHECK(has_relu || (l + 1 == layers && !has_bn && level == 0),
                  "hidden_stack: only the last layer may be an output layer (no ReLU), without batch norm or dropout");
      TORCH_CHECK(pi + 1 + has_bias + 2 * has_bn <= params.size() && bi + 3 * has_bn <= buffers.size() &&
                      wi + (level > 0) <= words.size(),
                  "hidden_stack: fewer params, buffers or words than the layout names");
      const at::Tensor &w = params[pi++];
      // the product without the bias: the kernels add it in their pass over z
      at::Tensor z = at::mm(h, w.t());
      const int64_t n = z.size(0), c = z.size(1);
      const float *bias = nullptr;
      if (has_bias) {
        check(params[pi], at::kFloat, c, "a bias");
        bias = params[pi++].data_ptr<float>();
      }
      if (!has_relu) {
        if (bias) bias_add(z.data_ptr<float>(), n, c, bias);
        saved.insert(saved.end(), {h, w});
        h = z;
        continue;
      }
      const uint16_t *u = nullptr;
      if (level > 0) {
        const at::Tensor &mask = words[wi++];
        check(mask, at::kLong, (n * c + 3) / 4, "a dropout layer's words");
        u = reinterpret_cast<const uint16_t *>(mask.data_ptr<int64_t>());
      }
      // batch norm's backward reads z: a new output; otherwise the ReLU (and mask) in place, as z is not kept
      at::Tensor y = has_bn ? at::empty_like(z) : z;
      if (has_bn) {
        const at::Tensor &gamma = params[pi++], &beta = params[pi++];
        check(gamma, at::kFloat, c, "gamma");
        check(beta, at::kFloat, c, "beta");
        check(buffers[bi], at::kFloat, c, "running_mean");
        check(buffers[bi + 1], at::kFloat, c, "running_var");
        check(buffers[bi + 2], at::kLong, 1, "num_batches_tracked");
        at::Tensor stats = at::empty({3 * c}, z.options());
        if (bias) bias_add(z.data_ptr<float>(), n, c, bias);  // (build_mlp gives batch-norm layers none)
        bn_relu_drop_fwd(z.data_ptr<float>(), y.data_ptr<float>(), n, c, gamma.data_ptr<float>(),
                         beta.data_ptr<float>(), buffers[bi].data_ptr<float>(), buffers[bi + 1].data_ptr<float>(),
                         buffers[bi + 2].data_ptr<int64_t>(), scalars[3 * l + 1], scalars[3 * l + 2], u, level,
                         scale, stats.data_ptr<float>());
        bi += 3;
        saved.insert(saved.end(), {h, w, z, gamma, stats});
      } else {
        relu_drop_fwd(z.data_ptr<float>(), y.data_ptr<float>(), n, c, bias, u, level, scale);
        saved.insert(saved.end(), {h, w});
      }
      h = y;
    }
    TORCH_CHECK(pi == params.size() && bi == buffers.size() && wi == words.size(),
                "hidden_stack: more params, buffers or words than the layout names");
    saved.push_back(h);
    ctx->save_for_backward(saved);
    ctx->saved_data["layout"] = layout;
    ctx->saved_data["scalars"] = scalars;
    ctx->saved_data["others"] = static_cast<int64_t>(buffers.size() + words.size() + 2);
    return h;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "hidden_stack: no double backward (create_graph=True): the fused kernels have no derivative "
                "of their own; set TRAINER_KERNELS=eager for higher-order gradients");
    variable_list saved = ctx->get_saved_variables();
    const std::vector<int64_t> layout = ctx->saved_data["layout"].toIntVector();
    const std::vector<double> scalars = ctx->saved_data["scalars"].toDoubleVector();
    const int64_t others = ctx->saved_data["others"].toInt();
    const size_t layers = layout.size() / 4;
    size_t nparams = 0;
    for (size_t l = 0; l < layers; l++) nparams += 1 + (layout[4 * l] != 0) + 2 * (layout[4 * l + 1] != 0);
    // inputs, as autograd counts them: x, each of params, each of buffers and words, layout, scalars
    variable_list grads(1 + nparams + others);
    size_t si = saved.size() - 1, pi = nparams;
    at::Tensor y = saved[si];
    at::Tensor g = grad_outputs[0].contiguous();
    bool g_ours = false;  // g made here (by a product below): the ReLU's backward may overwrite it
    for (size_t k = layers; k-- > 0;) {
      const bool has_bias = layout[4 * k] != 0, has_bn = layout[4 * k + 1] != 0, has_relu = layout[4 * k + 2] != 0;
      const float scale = static_cast<float>(scalars[3 * k]);
      const size_t first = pi - 1 - has_bias - 2 * has_bn;  // this layer's weight among the params
      const int64_t n = g.size(0), c = g.size(1);
      at::Tensor gz, dbias;
      if (has_bias) dbias = at::empty({c}, g.options());
      at::Tensor h, w;
      if (!has_relu) {  // the output layer: dL/dz is the incoming gradient
        si -= 2;
        h = saved[si];
        w = saved[si + 1];
        gz = g;
        if (has_bias) column_sums(gz.data_ptr<float>(), n, c, dbias.data_ptr<float>());
      } else if (has_bn) {
        gz = g_ours ? g : at::empty_like(y);
        si -= 5;
        h = saved[si];
        w = saved[si + 1];
        const at::Tensor &z = saved[si + 2], &gamma = saved[si + 3], &stats = saved[si + 4];
        at::Tensor dgamma = at::empty({c}, z.options()), dbeta = at::empty({c}, z.options());
        bn_relu_drop_bwd(g.data_ptr<float>(), z.data_ptr<float>(), y.data_ptr<float>(), n, c,
                         gamma.data_ptr<float>(), stats.data_ptr<float>(), scale, gz.data_ptr<float>(),
                         dgamma.data_ptr<float>(), dbeta.data_ptr<float>());
        if (ctx->needs_input_grad(1 + pi - 2)) grads[1 + pi - 2] = dgamma;
        if (ctx->needs_input_grad(1 + pi - 1)) grads[1 + pi - 1] = dbeta;
        if (has_bias) column_sums(gz.data_ptr<float>(), n, c, dbias.data_ptr<float>());
      } else {
        gz = g_ours ? g : at::empty_like(y);
        si -= 2;
        h = saved[si];
        w = saved[si + 1];
        relu_drop_bwd(g.data_ptr<float>(), y.data_ptr<float>(), n, c, scale, gz.data_ptr<float>(),
                      has_bias ? dbias.data_ptr<float>() : nullptr);
      }
      // as nn.Linear's backward computes the products: gz^T h, gz W (the bias's sum(gz) is the kernels')
      if (ctx->needs_input_grad(1 + first)) grads[1 + first] = at::mm(gz.t(), h);
      if (has_bias && ctx->needs_input_grad(2 + first)) grads[2 + first] = dbias;
      if (k > 0 || ctx->needs_input_grad(0)) {
        g = at::mm(gz, w);
        g_ours = true;
      }
      y = h;
      pi = first;
    }
    if (ctx->needs_input_grad(0)) grads[0] = g;
    return grads;
  }
};

at::Tensor hidden_stack(const at::Tensor &x, at::TensorList params, at::TensorList buffers, at::TensorList words,
                        at::IntArrayRef layout, at::ArrayRef<double> scalars) {
  return HiddenStack::apply(x, params, buffers, words, layout.vec(), scalars.vec());
}

}  // namespace

TORCH_LIBRARY(sweeps_fused, m) {
  m.def("hidden_stack(Tensor x, Tensor[] params, Tensor[] buffers, Tensor[] words, int[] layout, float[] scalars) "
        "-> Tensor",
        &hidden_stack);
}
