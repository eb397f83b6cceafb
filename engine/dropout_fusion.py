"""Channel dropout folded into the convolution after it: T samples of one cached input as one convolution.

Used by :mod:`engine.prefix_cache` behind its ``fuse`` switch (``build_mc_forward(..., fuse=True)``): a
channelwise, non-alpha :class:`~engine.dropout.SeededDropout` on a cached tensor whose only reader is a plain
``nn.Conv2d`` (groups 1, zero padding) becomes a :class:`DropoutConv`. The masks are the dropout layer's own
draws (:meth:`SeededDropout.keep_mask`), so fusing changes only the order of the sums.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["fusable_dropout_convs", "DropoutConv"]


def fusable_dropout_convs(root, lazy, tail):
    """{dropout node: conv node} for channelwise dropouts on a cached tensor whose one reader is a Conv2d."""
    calls = {}
    for node in tail:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    fused = {}
    for boundary_node, targets in lazy.items():
        for dropout in (u for u in boundary_node.users if u in tail and u.target in targets):
            module = root.get_submodule(dropout.target)
            users = list(dropout.users)
            if not module.channelwise or module.alpha or len(users) != 1:
                continue
            conv = users[0]
            if conv.op != "call_module" or calls.get(conv.target) != 1 or len(conv.args) != 1 or conv.kwargs:
                continue
            conv_module = root.get_submodule(conv.target)
            if (type(conv_module) is nn.Conv2d and conv_module.groups == 1 and conv_module.padding_mode == "zeros"
                    and conv.args[0] is dropout):
                fused[dropout] = conv
    return fused


class DropoutConv(nn.Module):
    """Channel dropout then a convolution, for T samples of one cached input, as ONE convolution.

    A channel mask m_t (scaled by 1/(1-p)) in front of a convolution with weights W equals the convolution of
    the unmasked input with weights W ⊙ m_t (mask on the input-channel axis): conv(x ⊙ m_t, W) = conv(x, W ⊙ m_t).
    Stacking the T masked weight sets gives one convolution of x with T·C_out output channels: x is read once
    instead of being copied, masked and convolved T times (a Unet head: about 5× faster on CPU). The masks are
    the dropout layer's own draws; the sums run in another order, so samples agree with the plain path to float
    rounding (about 1e-6), not bit for bit.
    """

    def __init__(self, dropout, conv):
        super().__init__()
        self.dropout = dropout
        self.conv = conv

    def forward(self, x):
        dropout, conv = self.dropout, self.conv
        repeats = dropout.input_repeats
        if not dropout.active or dropout.p <= 0.0:
            return conv(x.repeat_interleave(repeats, 0) if repeats > 1 else x)
        batch, channels = x.shape[0], x.shape[1]
        keep = dropout.keep_mask(x, batch * repeats).view(batch, repeats, channels)
        scale = keep * (1.0 / (1.0 - dropout.p))
        weight, bias = conv.weight, conv.bias
        out_channels = weight.shape[0]
        outputs = []
        for b in range(batch):
            masked = (weight.unsqueeze(0) * scale[b][:, None, :, None, None]).reshape(
                (repeats * out_channels,) + tuple(weight.shape[1:])
            )
            y = F.conv2d(x[b : b + 1], masked, None if bias is None else bias.repeat(repeats), conv.stride,
                         conv.padding, conv.dilation, conv.groups)
            outputs.append(y.view((repeats, out_channels) + tuple(y.shape[-2:])))
        return torch.cat(outputs)
