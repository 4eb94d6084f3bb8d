"""Every architecture of the suite, the registry that tells scripts how to feed and train each one, and all
surgery on them (BatchNorm fusing, the tail before the shuffle, the fast PReLU backward, configurations read off
weights: the tutorial's, EDSR-PyTorch's / the official RCAN release's, BasicSR's MSRResNet, Real-ESRGAN's
SRVGGNetCompact).

The SRResNet/SRGAN classes keep the tutorial's module names, so its state_dicts load unchanged;
EDSR and RCAN keep EDSR-PyTorch's names (``sub_mean``, ``head``, ``body``, ``tail``, ``add_mean``), the names
the official EDSR, EDSR-baseline and RCAN weights are published in; MSRResNet keeps BasicSR's, SRVGGNetCompact
Real-ESRGAN's. The Keras SRGAN of srgan-keras (KerasSRGANGenerator, arch 'srgan_keras', and KerasSRGANDiscriminator)
follows Keras's conventions instead (BatchNorm momentum and epsilon, initialisers, 'same' padding, depth_to_space).

    from models import build_model, ARCHS
    model = build_model('srresnet', {'scaling_factor': 4})        # (N, 3, h, w) -> (N, 3, 4h, 4w)

Nothing here picks a device or touches the network at import time, and nothing is imported from the project.
"""
import copy
import dataclasses
import inspect
import math
import os
import sys
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# ----------------------------------------------------------------------------------------------
# The tutorial's SRResNet / SRGAN
# ----------------------------------------------------------------------------------------------


class _PReLUFunction(torch.autograd.Function):
    """PReLU with one weight, whose backward is two vectorised passes (see PReLU)."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.leaky_relu_backward(grad, x, weight.item(), False)  # x > 0 ? g : a * g
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * x.clamp(max=0)).sum().reshape(weight.shape)  # sum of g * x over x <= 0
        return grad_x, grad_weight


class PReLU(nn.PReLU):
    """nn.PReLU (same parameter, same state_dict) with an optional faster backward on the CPU.

    torch's CPU PReLU backward is a scalar loop that also writes a full-size tensor for the weight's gradient:
    2.5-4x slower than two vectorised passes, and ~14% of an SRResNet training step (torch.profiler). With
    ``fast_backward`` (set by use_fast_prelu) a one-weight PReLU on fp32 CPU tensors computes the input's
    gradient with leaky_relu's backward (bit for bit the same) and the weight's as sum(g * min(x, 0)) (the same
    sum, in another order). Everywhere else (CUDA, bf16, torch.compile, per-channel weights, no grad) it is
    nn.PReLU.
    """
    fast_backward = False

    def forward(self, x):
        if (self.fast_backward and self.num_parameters == 1 and x.device.type == 'cpu' and x.dtype == torch.float32
                and torch.is_grad_enabled() and not torch.compiler.is_compiling()):
            return _PReLUFunction.apply(x, self.weight)
        return super().forward(x)


def _switch(model, cls, attribute, enabled):
    """Set ``attribute`` to ``enabled`` on every ``cls`` module of ``model``; returns how many there are."""
    found = [m for m in model.modules() if isinstance(m, cls)]
    for m in found:
        setattr(m, attribute, bool(enabled))
    return len(found)


def use_fast_prelu(model, enabled=True):
    """Switch PReLU.fast_backward on (or off) in every PReLU of ``model``; returns how many there are."""
    return _switch(model, PReLU, 'fast_backward', enabled)


class _TanhFunction(torch.autograd.Function):
    """tanh(x) as 2 * sigmoid(2x) - 1, computed in fp32 (bf16 inputs: rounded back to bf16 once, as torch's bf16
    tanh does), its gradient as g * (1 - y^2) (torch's tanh_backward)."""

    @staticmethod
    def forward(ctx, x):
        x2 = x.float().mul_(2) if x.dtype != torch.float32 else x * 2  # a new fp32 tensor, then all in place
        y = x2.sigmoid_().mul_(2).sub_(1).to(x.dtype)  # within 2e-7 of tanh(x) before rounding
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        y, = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


class Tanh(nn.Tanh):
    """nn.Tanh with an optional faster CPU path (the same module, no state).

    torch's CPU tanh is slow beside its sigmoid (32x64x17x17 on two threads of an AVX512 CPU: fp32 1.1 ms against
    0.27 ms for the rewrite, bf16 0.60 against 0.39 ms) and ~11% of an ESPCN training step (torch.profiler). With
    ``fast`` (set by use_fast_tanh) fp32 and bf16 CPU tensors take 2 * sigmoid(2x) - 1 in fp32, within 2e-7 of tanh
    (bf16 then rounded once, as torch's bf16 tanh), and tanh's own backward formula. Everywhere else (CUDA, other
    dtypes, torch.compile) it is nn.Tanh.
    """
    fast = False

    def forward(self, x):
        if (self.fast and x.device.type == 'cpu' and x.dtype in (torch.float32, torch.bfloat16)
                and not torch.compiler.is_compiling()):
            return _TanhFunction.apply(x)
        return super().forward(x)


def use_fast_tanh(model, enabled=True):
    """Switch Tanh.fast on (or off) in every Tanh of ``model``; returns how many there are."""
    return _switch(model, Tanh, 'fast', enabled)


class ConvolutionalBlock(nn.Module):
    """Conv (same padding) -> optional BatchNorm -> optional PReLU / LeakyReLU(0.2) / Tanh."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, batch_norm=False, activation=None):
        super().__init__()
        if activation is not None:
            activation = activation.lower()
            if activation not in {'prelu', 'leakyrelu', 'tanh'}:
                raise ValueError(f"activation must be PReLu, LeakyReLu, Tanh or None, not {activation!r}")
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if activation == 'prelu':
            layers.append(PReLU())
        elif activation == 'leakyrelu':
            layers.append(nn.LeakyReLU(0.2))
        elif activation == 'tanh':
            layers.append(Tanh())
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return self.conv_block(x)  # (N, out_channels, h / stride, w / stride)


def before_shuffle_qualifies(conv):
    """True when ``conv`` is square K x K (odd K), stride 1, zero 'same' padding, no groups or dilation: the convs
    that conv_before_shuffle can move before a PixelShuffle."""
    k = conv.kernel_size[0]
    return (conv.kernel_size == (k, k) and k % 2 == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding == (k // 2, k // 2) and conv.padding_mode == 'zeros')


def before_shuffle_index(conv, r):
    """Where each tap of ``conv`` applied after PixelShuffle(r) lands in the equal conv applied before it.

    conv must satisfy before_shuffle_qualifies. Returns (index, padding). index: (out * r^2, in * r^2, K', K')
    int64 positions in conv's flattened (out, in, K, K) weight, out * in * K * K (one past its end) where the new
    kernel is zero; K' = 2 * ceil((K // 2) / r) + 1. Channel o * r^2 + a * r + b is sub-position (a, b) of channel
    o, pixel_shuffle's order, on both sides.
    """
    k, p = conv.kernel_size[0], conv.kernel_size[0] // 2
    lo, hi = (-p) // r, (r - 1 + k - 1 - p) // r  # tap offsets on the coarse grid; -lo == hi for odd k
    taps = torch.arange(conv.weight.numel()).view(conv.out_channels, conv.in_channels, k, k)
    index = torch.full((conv.out_channels * r * r, conv.in_channels * r * r, hi - lo + 1, hi - lo + 1), taps.numel())
    for a in range(r):  # output sub-position (a, b) within each r x r block
        for b in range(r):
            for dy in range(k):
                u, a2 = divmod(a + dy - p, r)  # coarse-grid row offset, input sub-row
                for dx in range(k):
                    v, b2 = divmod(b + dx - p, r)
                    index[a * r + b::r * r, a2 * r + b2::r * r, u - lo, v - lo] = taps[:, :, dy, dx]
    return index.to(conv.weight.device), -lo


def conv_before_shuffle(conv, r, index):
    """(weight, bias) of the convolution on the grid before PixelShuffle(r) that equals ``conv`` after it:
    ``conv(pixel_shuffle(z, r)) == pixel_shuffle(F.conv2d(z, weight, bias, padding=padding), r)`` up to float
    rounding, with (index, padding) from before_shuffle_index. Built from conv's own parameters by indexing, so
    gradients flow back to them.

    SRResNet's last 9x9 64 -> 3 conv at 4x becomes 5x5 256 -> 12 at 2x: more multiply-adds on zeros, but a shape
    CPUs run ~1.7x faster (3 output channels waste most of a SIMD tile).
    """
    weight = torch.cat([conv.weight.flatten(), conv.weight.new_zeros(1)])[index]
    bias = None if conv.bias is None else conv.bias.repeat_interleave(r * r)
    return weight, bias


class SubPixelConvolutionalBlock(nn.Module):
    """Conv to n_channels * s^2 channels -> PixelShuffle(s) -> PReLU: upscales h and w by s."""

    def __init__(self, kernel_size=3, n_channels=64, scaling_factor=2):
        super().__init__()
        self.conv = nn.Conv2d(n_channels, n_channels * scaling_factor ** 2, kernel_size, padding=kernel_size // 2)
        self.pixel_shuffle = nn.PixelShuffle(upscale_factor=scaling_factor)
        self.prelu = PReLU()

    def forward(self, x):
        x = self.conv(x)  # (N, n_channels * s^2, h, w)
        x = self.pixel_shuffle(x)  # (N, n_channels, h * s, w * s)
        return self.prelu(x)


class ResidualBlock(nn.Module):
    """Two conv-BN blocks (the first with PReLU) and an identity skip."""

    def __init__(self, kernel_size=3, n_channels=64):
        super().__init__()
        self.conv_block1 = ConvolutionalBlock(n_channels, n_channels, kernel_size, batch_norm=True, activation='PReLu')
        self.conv_block2 = ConvolutionalBlock(n_channels, n_channels, kernel_size, batch_norm=True, activation=None)

    def forward(self, x):
        return self.conv_block2(self.conv_block1(x)) + x  # (N, n_channels, h, w)


class SRResNet(nn.Module):
    """SRResNet (Ledig et al. 2017) exactly as the tutorial builds it.

    Input: imagenet-normalised RGB (N, 3, h, w). Output: RGB in [-1, 1] (N, 3, s*h, s*w), s in {2, 4, 8}.
    """

    def __init__(self, large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16, scaling_factor=4):
        super().__init__()
        scaling_factor = int(scaling_factor)
        if scaling_factor not in {2, 4, 8}:
            raise ValueError(f"SRResNet's scaling factor must be 2, 4 or 8, not {scaling_factor}")
        self.conv_block1 = ConvolutionalBlock(3, n_channels, large_kernel_size, batch_norm=False, activation='PReLu')
        self.residual_blocks = nn.Sequential(
            *[ResidualBlock(kernel_size=small_kernel_size, n_channels=n_channels) for _ in range(n_blocks)])
        self.conv_block2 = ConvolutionalBlock(n_channels, n_channels, small_kernel_size, batch_norm=True,
                                              activation=None)
        n_subpixel = int(math.log2(scaling_factor))
        self.subpixel_convolutional_blocks = nn.Sequential(
            *[SubPixelConvolutionalBlock(small_kernel_size, n_channels, scaling_factor=2) for _ in range(n_subpixel)])
        self.conv_block3 = ConvolutionalBlock(n_channels, 3, large_kernel_size, batch_norm=False, activation='Tanh')
        self.tail_before_shuffle = False  # set by use_tail_before_shuffle; not part of the state_dict

    def use_tail_before_shuffle(self, enabled=True):
        """Run the final conv before the last pixel shuffle (conv_before_shuffle): the same function of the same
        parameters up to float rounding, and a CPU training step ~20% faster. Off (the tutorial's order) by
        default. Returns whether it is on: it stays off for a PReLU with per-channel weights, which would not
        commute with the shuffle."""
        last, conv = self.subpixel_convolutional_blocks[-1], self.conv_block3.conv_block[0]
        self.tail_before_shuffle = bool(enabled and last.prelu.num_parameters == 1 and before_shuffle_qualifies(conv))
        if self.tail_before_shuffle:  # a buffer follows the model's device; not saved, so checkpoints stay the same
            index, self.tail_padding = before_shuffle_index(conv, last.pixel_shuffle.upscale_factor)
            self.register_buffer('tail_index', index, persistent=False)
        return self.tail_before_shuffle

    def forward(self, lr_imgs):
        output = self.conv_block1(lr_imgs)  # (N, n_channels, h, w)
        residual = output
        output = self.residual_blocks(output)  # (N, n_channels, h, w)
        output = self.conv_block2(output) + residual  # (N, n_channels, h, w)
        if self.tail_before_shuffle:
            return self._tail_before_shuffle(output)
        output = self.subpixel_convolutional_blocks(output)  # (N, n_channels, s*h, s*w)
        return self.conv_block3(output)  # (N, 3, s*h, s*w), in [-1, 1]

    def _tail_before_shuffle(self, x):
        *blocks, last = self.subpixel_convolutional_blocks
        for block in blocks:
            x = block(x)  # (N, n_channels, s*h/r, s*w/r)
        r = last.pixel_shuffle.upscale_factor
        x = last.prelu(last.conv(x))  # (N, n_channels * r^2, s*h/r, s*w/r); a 1-weight PReLU commutes with shuffle
        weight, bias = conv_before_shuffle(self.conv_block3.conv_block[0], r, self.tail_index)
        if x.is_contiguous(memory_format=torch.channels_last):
            weight = weight.contiguous(memory_format=torch.channels_last)
        x = F.conv2d(x, weight, bias, padding=self.tail_padding)  # (N, 3 * r^2, s*h/r, s*w/r)
        return self.conv_block3.conv_block[1](F.pixel_shuffle(x, r))  # (N, 3, s*h, s*w), in [-1, 1]


class Generator(nn.Module):
    """SRGAN generator: an SRResNet held as ``.net`` (so keys are ``net.`` + SRResNet keys)."""

    def __init__(self, large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16, scaling_factor=4):
        super().__init__()
        self.net = SRResNet(large_kernel_size=large_kernel_size, small_kernel_size=small_kernel_size,
                            n_channels=n_channels, n_blocks=n_blocks, scaling_factor=scaling_factor)

    def forward(self, lr_imgs):
        return self.net(lr_imgs)  # (N, 3, s*h, s*w), in [-1, 1]


class Discriminator(nn.Module):
    """SRGAN discriminator: 8 conv blocks, adaptive pool to 6x6, fc(fc_size) -> LeakyReLU -> fc(1).

    Returns logits (N, 1); pair it with BCEWithLogitsLoss.
    """

    def __init__(self, kernel_size=3, n_channels=64, n_blocks=8, fc_size=1024):
        super().__init__()
        in_channels = 3
        out_channels = n_channels
        conv_blocks = []
        for i in range(n_blocks):
            # Even blocks widen (x2 after the first) at stride 1; odd blocks keep width and halve the size.
            if i % 2 == 0:
                out_channels = n_channels if i == 0 else in_channels * 2
            else:
                out_channels = in_channels
            conv_blocks.append(ConvolutionalBlock(in_channels, out_channels, kernel_size,
                                                  stride=1 if i % 2 == 0 else 2, batch_norm=i != 0,
                                                  activation='LeakyReLu'))
            in_channels = out_channels
        self.conv_blocks = nn.Sequential(*conv_blocks)
        self.adaptive_pool = nn.AdaptiveAvgPool2d((6, 6))
        self.fc1 = nn.Linear(out_channels * 6 * 6, fc_size)
        self.leaky_relu = nn.LeakyReLU(0.2)
        self.fc2 = nn.Linear(fc_size, 1)  # the tutorial hard-codes 1024 here, breaking any other fc_size

    def forward(self, imgs):
        output = self.conv_blocks(imgs)  # (N, C, h / 16, w / 16)
        output = self.adaptive_pool(output)  # (N, C, 6, 6)
        output = self.leaky_relu(self.fc1(output.flatten(1)))  # (N, fc_size)
        return self.fc2(output)  # (N, 1) logits


class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's discriminator (Wang et al., ICCVW 2021): a U-Net that scores every pixel, its inner convolutions
    under spectral normalisation, in the key layout of Real-ESRGAN's released RealESRGAN_x4plus_netD.pth: conv0 and
    conv9 plain (weight, bias), conv1 to conv8 spectral-normed without bias (weight_orig, weight_u, weight_v).

    Three stride-2 4x4 convolutions go down (C, 2C, 4C, 8C channels), three 3x3 convolutions after bilinear x2
    upsampling come back, each added to the encoder map of its size (``skip_connection``), then two 3x3 convolutions
    and a 3x3 to one channel. LeakyReLU(0.2) after all but the last.
    Input: RGB (N, 3, H, W) in [0, 1], H and W multiples of 8. Output: logits (N, 1, H, W); pair with
    BCEWithLogitsLoss.
    """

    def __init__(self, n_channels=64, skip_connection=True, in_channels=3):
        super().__init__()
        c, sn = n_channels, nn.utils.spectral_norm  # the older API: its weight_orig/_u/_v are the released keys
        self.skip_connection = skip_connection
        self.conv0 = nn.Conv2d(in_channels, c, 3, 1, 1)
        self.conv1 = sn(nn.Conv2d(c, c * 2, 4, 2, 1, bias=False))
        self.conv2 = sn(nn.Conv2d(c * 2, c * 4, 4, 2, 1, bias=False))
        self.conv3 = sn(nn.Conv2d(c * 4, c * 8, 4, 2, 1, bias=False))
        self.conv4 = sn(nn.Conv2d(c * 8, c * 4, 3, 1, 1, bias=False))
        self.conv5 = sn(nn.Conv2d(c * 4, c * 2, 3, 1, 1, bias=False))
        self.conv6 = sn(nn.Conv2d(c * 2, c, 3, 1, 1, bias=False))
        self.conv7 = sn(nn.Conv2d(c, c, 3, 1, 1, bias=False))
        self.conv8 = sn(nn.Conv2d(c, c, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(c, 1, 3, 1, 1)

    def _up(self, conv, x, skip):
        """conv of x upsampled x2 (bilinear), LeakyReLU, plus the encoder map ``skip`` of that size."""
        x = F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)  # (N, C', 2h, 2w)
        x = F.leaky_relu(conv(x), 0.2)
        return x + skip if self.skip_connection else x

    def forward(self, imgs):
        if imgs.shape[-2] % 8 or imgs.shape[-1] % 8:
            raise ValueError(f"UNetDiscriminatorSN needs sides that are multiples of 8, not {tuple(imgs.shape[-2:])}")
        x0 = F.leaky_relu(self.conv0(imgs), 0.2)  # (N, C, H, W)
        x1 = F.leaky_relu(self.conv1(x0), 0.2)  # (N, 2C, H / 2, W / 2)
        x2 = F.leaky_relu(self.conv2(x1), 0.2)  # (N, 4C, H / 4, W / 4)
        x3 = F.leaky_relu(self.conv3(x2), 0.2)  # (N, 8C, H / 8, W / 8)
        x4 = self._up(self.conv4, x3, x2)  # (N, 4C, H / 4, W / 4)
        x5 = self._up(self.conv5, x4, x1)  # (N, 2C, H / 2, W / 2)
        x6 = self._up(self.conv6, x5, x0)  # (N, C, H, W)
        out = F.leaky_relu(self.conv7(x6), 0.2)
        out = F.leaky_relu(self.conv8(out), 0.2)
        return self.conv9(out)  # (N, 1, H, W) logits


class BackboneWeightsError(RuntimeError):
    """The ImageNet weights of a torchvision backbone (VGG19 of the SRGAN loss, AlexNet / VGG16 of LPIPS) are not
    available."""


VGGWeightsError = BackboneWeightsError  # the name train_srgan.py catches

# torchvision's weights enum of each backbone whose ``features`` the suite uses.
BACKBONE_WEIGHTS = {'vgg19': 'VGG19_Weights', 'vgg16': 'VGG16_Weights', 'alexnet': 'AlexNet_Weights'}


def _imagenet_weights(arch):
    """(torchvision's ImageNet weights entry of ``arch``, the file it is read from in the torch hub cache)."""
    import torchvision
    weights = getattr(torchvision.models, BACKBONE_WEIGHTS[arch]).IMAGENET1K_V1
    return weights, os.path.join(torch.hub.get_dir(), 'checkpoints', weights.url.rsplit('/', 1)[-1])


def imagenet_weights_path(arch):
    """The file in the torch hub cache that torchvision's weights API reads ``arch``'s ImageNet weights from."""
    return _imagenet_weights(arch)[1]


def backbone_help(arch, flag):
    """One sentence naming both ways to get ``arch``'s ImageNet weights offline: the file in the torch hub cache
    (where torchvision's weights API reads it, and downloads it to once when online), or ``flag`` PATH."""
    _, cached = _imagenet_weights(arch)
    return (f"{arch} ImageNet weights are not available: torchvision reads them from the torch hub cache, "
            f"{cached} (it downloads them there once when online; TORCH_HOME moves the cache): put that file "
            f"there, or pass {flag} PATH to a state_dict file of torchvision's {arch}")


def backbone_state(arch, weights, flag):
    """The ``features`` state_dict (keys '0.weight', ...) of torchvision's ``arch`` ('vgg19', 'vgg16', 'alexnet'):
    ``weights`` = 'imagenet' (torchvision's weights API: read from the torch hub cache, downloaded there once when
    online) or a path to a state_dict file (a whole torchvision model or ``features.*`` keys); read with
    weights_only. BackboneWeightsError of one line (naming both ways and ``flag``) when they cannot be had."""
    if weights == 'imagenet':
        imagenet, _ = _imagenet_weights(arch)
        try:  # reads the hub cache; downloads into it once when online (torch.hub says so on stdout)
            state = imagenet.get_state_dict(progress=True, map_location='cpu', weights_only=True)
        except Exception as e:  # offline download failure surfaces as URLError, OSError, RuntimeError...
            raise BackboneWeightsError(f"{backbone_help(arch, flag)} ({type(e).__name__})") from None
    else:
        try:
            state = torch.load(weights, map_location='cpu', weights_only=True)
        except FileNotFoundError:
            raise BackboneWeightsError(f"{flag} {weights}: no such file. {backbone_help(arch, flag)}") from None
        except Exception as e:
            raise BackboneWeightsError(f"{flag} {weights}: not a loadable state_dict ({type(e).__name__})") \
                from None
        if isinstance(state, dict) and 'state_dict' in state:
            state = state['state_dict']
    if not isinstance(state, dict):
        raise BackboneWeightsError(f"{flag} {weights}: not a state_dict")
    return {k[len('features.'):]: v for k, v in state.items() if k.startswith('features.')} or state


def _vgg19_features():
    """torchvision's VGG19 ``features`` layout (randomly initialised), without building the 100 M-parameter
    classifier that the loss never uses."""
    from torchvision.models import vgg  # here, not at the top: only the SRGAN loss needs torchvision
    return vgg.make_layers(vgg.cfgs['E'], batch_norm=False)


def load_vgg19_features(weights='imagenet'):
    """torchvision's vgg19 ``features`` with ``weights`` = 'imagenet' (torchvision weights API, hub cache),
    a path to a vgg19 state_dict (full model or ``features.*`` keys), or 'random' (tests and smoke runs only)."""
    features = _vgg19_features()
    if weights == 'random':
        print("WARNING: --vgg-weights random: the VGG content loss uses RANDOM weights. This is for tests and "
              "smoke runs only; an SRGAN trained like this is meaningless.", file=sys.stderr)
        return features
    state = backbone_state('vgg19', weights, '--vgg-weights')
    try:
        features.load_state_dict(state)
    except RuntimeError as e:
        raise VGGWeightsError(f"--vgg-weights {weights}: not a vgg19 state_dict ({str(e).splitlines()[0]})") from None
    return features


VGG19_BLOCK_CONVS = (2, 2, 4, 4, 4)  # convolutions in each of VGG19's 5 blocks (a max-pool after each)


def check_vgg19_layer(i, j):
    """ValueError unless (i, j) names a VGG19 convolution: the j-th of block i (TruncatedVGG19's i, j)."""
    if not 1 <= i <= len(VGG19_BLOCK_CONVS):
        raise ValueError(f"VGG19 has {len(VGG19_BLOCK_CONVS)} blocks: i must be 1 to {len(VGG19_BLOCK_CONVS)}")
    if not 1 <= j <= VGG19_BLOCK_CONVS[i - 1]:
        raise ValueError(f"block {i} of VGG19 has {VGG19_BLOCK_CONVS[i - 1]} convolutions: j must be 1 to "
                         f"{VGG19_BLOCK_CONVS[i - 1]}")


def vgg19_layer_names():
    """The names of VGG19's 37 ``features`` layers in order, BasicSR's: conv1_1, relu1_1, conv1_2, relu1_2, pool1,
    conv2_1, ... relu5_4, pool5."""
    names = []
    for block, convs in enumerate(VGG19_BLOCK_CONVS, start=1):
        for conv in range(1, convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return names


class TruncatedVGG19(nn.Module):
    """VGG19 ``features`` up to and including the ReLU of the j-th conv before the i-th max-pool.

    i=5, j=4 keeps the first 36 layers (conv5_4 and its ReLU). Frozen: no parameter needs a gradient.
    Input: imagenet-normalised RGB (N, 3, H, W). Output: (N, 512, H / 16, W / 16) for i=5.
    """

    def __init__(self, i=5, j=4, weights='imagenet'):
        super().__init__()
        check_vgg19_layer(i, j)
        features = load_vgg19_features(weights)
        keep = vgg19_layer_names().index(f"relu{i}_{j}") + 1  # up to the ReLU that follows the j-th convolution
        self.truncated_vgg19 = nn.Sequential(*list(features.children())[:keep])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        return super().train(False)  # always in eval mode: it is a fixed feature extractor

    def forward(self, x):
        return self.truncated_vgg19(x)  # (N, 512, H / 16, W / 16) for i=5


class VGG19FeatureMaps(nn.Module):
    """VGG19 feature maps at named layers (vgg19_layer_names), up to the last one named: Real-ESRGAN's perceptual loss
    takes conv1_2, conv2_2, conv3_4, conv4_4 and conv5_4 before their ReLU. The ReLUs are not in-place, so a conv's
    output is kept as it was. Frozen and always in eval mode.
    Input: imagenet-normalised RGB (N, 3, H, W). Output: {name: (N, C, H / 2^k, W / 2^k)} (k pools before it).
    ``weights``: as load_vgg19_features."""

    def __init__(self, layers, weights='imagenet'):
        super().__init__()
        names = vgg19_layer_names()
        unknown = [name for name in layers if name not in names]
        if unknown or not layers:
            raise ValueError(f"VGG19 layers {unknown or '(none)'}: not among {', '.join(names)}")
        last = max(names.index(name) for name in layers)
        features = list(load_vgg19_features(weights).children())[:last + 1]
        self.features = nn.Sequential(*(nn.ReLU() if isinstance(m, nn.ReLU) else m for m in features))
        self.names, self.layers = names[:last + 1], tuple(layers)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        return super().train(False)  # always in eval mode: it is a fixed feature extractor

    def forward(self, x):
        out = {}
        for name, layer in zip(self.names, self.features):
            x = layer(x)
            if name in self.layers:
                out[name] = x
        return out


# ----------------------------------------------------------------------------------------------
# LPIPS (eval.py --metrics lpips): the lpips package's network, its weights loaded here so nothing downloads
# ----------------------------------------------------------------------------------------------

LPIPS_BACKBONES = {'alex': 'alexnet', 'vgg': 'vgg16'}  # lpips's net name -> torchvision backbone
LPIPS_VERSION = '0.1'  # the lpips package's default and latest linear layers
# Smallest image side each backbone takes: AlexNet's stride-4 11x11 conv and two 3x3 stride-2 max-pools before
# its last features need 31 px; VGG16's four 2x2 max-pools need 16.
LPIPS_MIN_SIDE = {'alex': 31, 'vgg': 16}


def build_lpips(net='alex', backbone_weights='imagenet', flag='--lpips-backbone-weights'):
    """lpips.LPIPS (version 0.1) with the ``net`` backbone ('alex' or 'vgg'), frozen, in eval mode, on the CPU.

    It is built with a random backbone and without its linear layers (so the package downloads nothing), then
    given the backbone's torchvision ImageNet weights (``backbone_weights``: 'imagenet' for the torch hub cache, or
    a state_dict file; see backbone_state) and the linear layers shipped inside the lpips package.
    Input: two RGB images (N, 3, H, W) in [-1, 1], sides >= LPIPS_MIN_SIDE[net]. Output: (N, 1, 1, 1) distances.
    BackboneWeightsError of one line when weights are missing or do not fit.
    """
    import lpips  # here, not at the top: only eval.py --metrics lpips needs it (and it imports torchvision)
    arch = LPIPS_BACKBONES[net]
    state = backbone_state(arch, backbone_weights, flag)
    with warnings.catch_warnings():  # lpips builds torchvision's model with the deprecated pretrained=False
        warnings.simplefilter('ignore', UserWarning)
        metric = lpips.LPIPS(net=net, version=LPIPS_VERSION, pretrained=False, pnet_rand=True, verbose=False)
    lin_path = os.path.join(os.path.dirname(lpips.__file__), 'weights', f'v{LPIPS_VERSION}', f'{net}.pth')
    try:
        lin = torch.load(lin_path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise BackboneWeightsError(f"the lpips package's {net} linear layers ({lin_path}) do not load "
                                   f"({type(e).__name__}): reinstall lpips") from None
    # lpips keeps torchvision's layer indices inside its slices: net.slice<k>.<i>.<param> is features.<i>.<param>
    backbone = {key: state.get('.'.join(key.split('.')[2:])) for key in metric.state_dict() if key.startswith('net.')}
    absent = [key.split('.', 2)[2] for key, value in backbone.items() if value is None]
    if absent:
        raise BackboneWeightsError(f"{flag} {backbone_weights}: not a state_dict of torchvision's {arch} "
                                   f"(no {absent[0]})")
    try:
        missing, unexpected = metric.load_state_dict({**backbone, **lin}, strict=False)
    except RuntimeError as e:
        raise BackboneWeightsError(f"{flag} {backbone_weights}: not a state_dict of torchvision's {arch} "
                                   f"({str(e).splitlines()[-1].strip()[:160]})") from None
    # lins.<k> are the same modules as lin<k>; scaling_layer holds constants
    left = [k for k in missing if not k.startswith(('lins.', 'scaling_layer.'))]
    if left or unexpected:
        raise BackboneWeightsError(f"the lpips package's {net} linear layers ({lin_path}) do not fit its network "
                                   f"({', '.join(left + unexpected)[:160]}): reinstall lpips")
    return metric.requires_grad_(False).eval()


# ----------------------------------------------------------------------------------------------
# SRCNN (Dong et al. 2016), ESPCN (Shi et al. 2016)
# ----------------------------------------------------------------------------------------------


class SRCNN(nn.Module):
    """SRCNN 9-1-5 (Dong et al. 2014/2016) on the Y channel of a bicubic-upscaled image.

    Input: (N, 1, H, W) Y in [0, 1], already upscaled to the output size. Output: same size (zero padding,
    as the paper's code does at test time). ``scaling_factor`` is recorded only: the network itself does not resize.
    init: 'default' (PyTorch's) or 'paper' (weights N(0, 0.001), zero biases, as Dong et al. for SGD; with Adam it
    trains much slower: 30.98 vs 31.74 dB on Set5 x3 after the same 5 short epochs on T91).
    """

    def __init__(self, scaling_factor=3, channels=(64, 32), kernel_sizes=(9, 1, 5), in_channels=1, init='default'):
        super().__init__()
        self.scaling_factor = int(scaling_factor)
        c1, c2 = channels
        k1, k2, k3 = kernel_sizes
        self.conv1 = nn.Conv2d(in_channels, c1, k1, padding=k1 // 2)
        self.conv2 = nn.Conv2d(c1, c2, k2, padding=k2 // 2)
        self.conv3 = nn.Conv2d(c2, in_channels, k3, padding=k3 // 2)
        self.relu = nn.ReLU(inplace=True)
        if init == 'paper':
            for conv in (self.conv1, self.conv2, self.conv3):
                nn.init.normal_(conv.weight, std=1e-3)
                nn.init.zeros_(conv.bias)
        elif init != 'default':
            raise ValueError("SRCNN init is 'paper' or 'default'")

    def forward(self, x):
        x = self.relu(self.conv1(x))  # (N, 64, H, W)
        x = self.relu(self.conv2(x))  # (N, 32, H, W)
        return self.conv3(x)  # (N, 1, H, W), Y in ~[0, 1]


class ESPCN(nn.Module):
    """ESPCN (Shi et al. 2016) on the Y channel of the LR image: convs on LR, then one pixel shuffle.

    Default: 5-3-3 kernels, 64 and 32 filters, tanh, a final 3x3 conv to s^2 channels.
    A wider variant seen in reimplementations: channels=(512, 256, 64), kernel_sizes=(5, 3, 3, 3), activation='relu',
    final_activation='relu', init='orthogonal'.
    Input: (N, 1, h, w) Y in [0, 1]. Output: (N, 1, s*h, s*w).
    """

    def __init__(self, scaling_factor=3, channels=(64, 32), kernel_sizes=(5, 3, 3), activation='tanh',
                 final_activation=None, init='default', in_channels=1):
        super().__init__()
        channels, kernel_sizes = tuple(channels), tuple(kernel_sizes)
        if len(kernel_sizes) != len(channels) + 1:
            raise ValueError("ESPCN needs one kernel size per hidden layer plus one for the output layer")
        acts = {'tanh': Tanh, 'relu': nn.ReLU}
        if activation not in acts or final_activation not in (None, 'relu', 'tanh'):
            raise ValueError("ESPCN activations are 'tanh' or 'relu' (final: also None)")
        self.scaling_factor = s = int(scaling_factor)
        layers, c_in = [], in_channels
        for c, k in zip(channels, kernel_sizes):
            layers += [nn.Conv2d(c_in, c, k, padding=k // 2), acts[activation]()]
            c_in = c
        layers.append(nn.Conv2d(c_in, in_channels * s * s, kernel_sizes[-1], padding=kernel_sizes[-1] // 2))
        if final_activation is not None:
            layers.append(acts[final_activation]())
        self.body = nn.Sequential(*layers)
        self.pixel_shuffle = nn.PixelShuffle(s)
        if init == 'orthogonal':
            for m in self.body:
                if isinstance(m, nn.Conv2d):
                    nn.init.orthogonal_(m.weight)
                    nn.init.zeros_(m.bias)
        elif init != 'default':
            raise ValueError("ESPCN init is 'default' or 'orthogonal'")

    def forward(self, x):
        x = self.body(x)  # (N, s^2, h, w)
        return self.pixel_shuffle(x)  # (N, 1, s*h, s*w)


# ----------------------------------------------------------------------------------------------
# EDSR (Lim et al. 2017) and RCAN (Zhang et al. 2018), module names as in EDSR-PyTorch
# ----------------------------------------------------------------------------------------------

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv that subtracts (sign=-1) or adds (sign=+1) the DIV2K RGB mean times rgb_range."""

    def __init__(self, rgb_range, rgb_mean=DIV2K_RGB_MEAN, sign=-1):
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean))
        self.requires_grad_(False)


def default_conv(in_channels, out_channels, kernel_size, bias=True):
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class Upsampler(nn.Sequential):
    """Pixel-shuffle upsampler: log2(s) x (conv to 4C, shuffle 2) for s = 2, 4, 8; conv to 9C, shuffle 3 for 3."""

    def __init__(self, scale, n_feats):
        layers = []
        if scale in (2, 4, 8):
            for _ in range(int(math.log2(scale))):
                layers += [default_conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [default_conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"the pixel-shuffle upsampler supports scales 2, 3, 4 and 8, not {scale}")
        super().__init__(*layers)


class ResBlock(nn.Module):
    """EDSR residual block: conv-ReLU-conv, no batch norm, output scaled by res_scale before the skip."""

    def __init__(self, n_feats, kernel_size=3, res_scale=1.0):
        super().__init__()
        self.body = nn.Sequential(default_conv(n_feats, n_feats, kernel_size), nn.ReLU(True),
                                  default_conv(n_feats, n_feats, kernel_size))
        self.res_scale = res_scale

    def forward(self, x):
        return self.body(x) * self.res_scale + x  # (N, n_feats, h, w)


class EDSR(nn.Module):
    """EDSR. Baseline: n_resblocks=16, n_feats=64, res_scale=1. Full: 32, 256, 0.1.

    Input/output: RGB in [0, rgb_range] (N, 3, h, w) -> (N, 3, s*h, s*w), s in {2, 3, 4, 8}.
    """

    def __init__(self, scaling_factor=4, n_resblocks=16, n_feats=64, res_scale=1.0, rgb_range=255):
        super().__init__()
        self.scaling_factor = int(scaling_factor)
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.head = nn.Sequential(default_conv(3, n_feats, 3))
        self.body = nn.Sequential(*[ResBlock(n_feats, 3, res_scale) for _ in range(n_resblocks)],
                                  default_conv(n_feats, n_feats, 3))
        self.tail = nn.Sequential(Upsampler(self.scaling_factor, n_feats), default_conv(n_feats, 3, 3))
        self.add_mean = MeanShift(rgb_range, sign=1)

    def forward(self, x):
        x = self.head(self.sub_mean(x))  # (N, n_feats, h, w)
        x = self.body(x) + x  # (N, n_feats, h, w)
        return self.add_mean(self.tail(x))  # (N, 3, s*h, s*w)


class CALayer(nn.Module):
    """Channel attention: global average pool -> 1x1 conv (C/r) -> ReLU -> 1x1 conv (C) -> sigmoid gate."""

    def __init__(self, channel, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(nn.Conv2d(channel, channel // reduction, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(channel // reduction, channel, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))  # (N, C, h, w) gated by (N, C, 1, 1)


class RCAB(nn.Module):
    """Residual channel attention block: conv-ReLU-conv-CA plus identity skip."""

    def __init__(self, n_feat, kernel_size=3, reduction=16):
        super().__init__()
        self.body = nn.Sequential(default_conv(n_feat, n_feat, kernel_size), nn.ReLU(True),
                                  default_conv(n_feat, n_feat, kernel_size), CALayer(n_feat, reduction))

    def forward(self, x):
        return self.body(x) + x


class ResidualGroup(nn.Module):
    """n_resblocks RCABs and a closing conv, with a short skip connection."""

    def __init__(self, n_feat, kernel_size, reduction, n_resblocks):
        super().__init__()
        self.body = nn.Sequential(*[RCAB(n_feat, kernel_size, reduction) for _ in range(n_resblocks)],
                                  default_conv(n_feat, n_feat, kernel_size))

    def forward(self, x):
        return self.body(x) + x


class RCAN(nn.Module):
    """RCAN: 10 residual groups x 20 RCABs, long skip, pixel-shuffle tail; ~15.6 M parameters at x4.

    Input/output: RGB in [0, rgb_range] (N, 3, h, w) -> (N, 3, s*h, s*w), s in {2, 3, 4, 8}.
    """

    def __init__(self, scaling_factor=4, n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, rgb_range=255):
        super().__init__()
        self.scaling_factor = int(scaling_factor)
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.head = nn.Sequential(default_conv(3, n_feats, 3))
        self.body = nn.Sequential(*[ResidualGroup(n_feats, 3, reduction, n_resblocks) for _ in range(n_resgroups)],
                                  default_conv(n_feats, n_feats, 3))
        self.tail = nn.Sequential(Upsampler(self.scaling_factor, n_feats), default_conv(n_feats, 3, 3))
        self.add_mean = MeanShift(rgb_range, sign=1)

    def forward(self, x):
        x = self.head(self.sub_mean(x))  # (N, n_feats, h, w)
        x = self.body(x) + x  # long skip, (N, n_feats, h, w)
        return self.add_mean(self.tail(x))  # (N, 3, s*h, s*w)


# ----------------------------------------------------------------------------------------------
# MSRResNet: BasicSR's "modified SRResNet" (SRResNet without BatchNorm), module names as in BasicSR
# ----------------------------------------------------------------------------------------------


def _basicsr_init(convs, scale=0.1):
    """BasicSR's default_init_weights: Kaiming-normal weights (fan_in, ReLU gain) times ``scale``, zero biases."""
    with torch.no_grad():
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.mul_(scale)
            nn.init.zeros_(conv.bias)


class ResidualBlockNoBN(nn.Module):
    """conv-ReLU-conv plus the identity, no BatchNorm (BasicSR's ResidualBlockNoBN with res_scale 1)."""

    def __init__(self, n_channels=64):
        super().__init__()
        self.conv1 = default_conv(n_channels, n_channels, 3)
        self.conv2 = default_conv(n_channels, n_channels, 3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x)))  # (N, n_channels, h, w)


class MSRResNet(nn.Module):
    """BasicSR's modified SRResNet (basicsr/archs/srresnet_arch.py): SRResNet's trunk without BatchNorm and without
    the long skip, LeakyReLU(0.1) instead of PReLU, 3x3 convolutions throughout, and the input upscaled bilinearly
    (align_corners=False) added to the output, so the network learns the residual. BasicSR's key names
    (conv_first, body.i.conv1/conv2, upconv1, upconv2 at x4, conv_hr, conv_last), so its checkpoints load unchanged.

    Input/output: RGB in [0, 1] (N, 3, h, w) -> (N, 3, s*h, s*w), s in {2, 3, 4}.
    init: 'basicsr' (Kaiming-normal x 0.1, zero biases, as BasicSR) or 'default' (PyTorch's).
    """

    def __init__(self, scaling_factor=4, n_channels=64, n_blocks=16, init='basicsr'):
        super().__init__()
        self.scaling_factor = s = int(scaling_factor)
        if s not in (2, 3, 4):
            raise ValueError(f"MSRResNet's scaling factor must be 2, 3 or 4, not {s}")
        self.conv_first = default_conv(3, n_channels, 3)
        self.body = nn.Sequential(*[ResidualBlockNoBN(n_channels) for _ in range(n_blocks)])
        r = 2 if s == 4 else s  # x4 is two x2 steps
        self.upconv1 = default_conv(n_channels, n_channels * r * r, 3)
        self.upconv2 = default_conv(n_channels, n_channels * 4, 3) if s == 4 else None
        self.pixel_shuffle = nn.PixelShuffle(r)
        self.conv_hr = default_conv(n_channels, n_channels, 3)
        self.conv_last = default_conv(n_channels, 3, 3)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)
        if init == 'basicsr':
            convs = [self.conv_first, self.upconv1, self.conv_hr, self.conv_last] + [self.upconv2] * (s == 4)
            _basicsr_init(convs + [c for block in self.body for c in (block.conv1, block.conv2)])
        elif init != 'default':
            raise ValueError("MSRResNet init is 'basicsr' or 'default'")

    def forward(self, x):
        out = self.body(self.lrelu(self.conv_first(x)))  # (N, n_channels, h, w)
        out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))  # (N, n_channels, r*h, r*w)
        if self.upconv2 is not None:
            out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))  # (N, n_channels, 4h, 4w)
        out = self.conv_last(self.lrelu(self.conv_hr(out)))  # (N, 3, s*h, s*w): the residual
        base = F.interpolate(x, scale_factor=self.scaling_factor, mode='bilinear', align_corners=False)
        return out + base  # (N, 3, s*h, s*w), RGB in ~[0, 1]


# ----------------------------------------------------------------------------------------------
# SRVGGNetCompact: Real-ESRGAN's compact network for real photos, module names as in Real-ESRGAN
# ----------------------------------------------------------------------------------------------

SRVGG_ACTIVATIONS = ('prelu', 'relu', 'leakyrelu')


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact VGG-style network (Wang et al., ICCVW 2021; the network of its realesr-general-x4v3
    (num_conv 32) and realesr-animevideov3 (num_conv 16) releases): num_conv + 2 3x3 convolutions, all at the input's
    size, each but the last followed by an activation, the last giving 3 * s^2 channels for a pixel shuffle by s,
    and the input upscaled by nearest neighbour added, so the network learns the residual. Real-ESRGAN's key names:
    body.0 the first convolution, body.1 its PReLU (one weight per channel), ..., body.<2 num_conv + 2> the last
    convolution; its released weights load unchanged (infer_srvgg_config reads their configuration).

    Input/output: RGB in [0, 1] (N, 3, h, w) -> (N, 3, s*h, s*w).
    act_type: 'prelu' (the releases'), 'relu' or 'leakyrelu' (slope 0.1).
    """

    def __init__(self, scaling_factor=4, num_feat=64, num_conv=16, act_type='prelu'):
        super().__init__()
        if act_type not in SRVGG_ACTIVATIONS:
            raise ValueError(f"act_type is one of {', '.join(SRVGG_ACTIVATIONS)}, not {act_type!r}")
        self.scaling_factor = s = int(scaling_factor)

        def activation():
            if act_type == 'prelu':
                return nn.PReLU(num_parameters=num_feat)
            return nn.ReLU(inplace=True) if act_type == 'relu' else nn.LeakyReLU(0.1, inplace=True)
        layers = [nn.Conv2d(3, num_feat, 3, padding=1), activation()]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, padding=1), activation()]
        layers.append(nn.Conv2d(num_feat, 3 * s * s, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.upsampler = nn.PixelShuffle(s)

    def forward(self, x):
        out = self.upsampler(self.body(x))  # (N, 3, s*h, s*w): the residual
        return out + F.interpolate(x, scale_factor=self.scaling_factor, mode='nearest')  # (N, 3, s*h, s*w)


# ----------------------------------------------------------------------------------------------
# The Keras SRGAN (bubbliiiing/srgan-keras, nets/srgan.py), layer for layer in PyTorch terms

KERAS_BN_MOMENTUM = 0.5  # srgan-keras's BatchNormalization(momentum=0.5), in Keras's convention
KERAS_BN_EPSILON = 1e-3  # Keras's default epsilon (PyTorch's is 1e-5)
KERAS_INIT_STD = 0.02  # srgan-keras's kernel_initializer=random_normal(stddev=0.02)


def keras_batch_norm(channels, momentum=KERAS_BN_MOMENTUM):
    """nn.BatchNorm2d that behaves as Keras's BatchNormalization(momentum=momentum) with its default epsilon 1e-3.

    Keras keeps ``momentum`` of the old statistic (moving = m * moving + (1 - m) * batch); PyTorch's momentum is
    the weight of the new one (running = (1 - p) * running + p * batch), so p = 1 - m: 0.5 both ways only because
    srgan-keras's 0.5 is symmetric. (Keras's moving variance takes the batch variance times n / (n - 1 - eps),
    PyTorch's times n / (n - 1): a relative difference of about 1e-3 / n.)"""
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPSILON, momentum=1. - momentum)


def keras_normal_(layer, std=KERAS_INIT_STD):
    """Keras's random_normal(stddev=std) kernel and its default zero bias, in place; returns the layer."""
    nn.init.normal_(layer.weight, 0., std)
    nn.init.zeros_(layer.bias)
    return layer


def keras_glorot_uniform_(layer):
    """Keras's default kernel_initializer (glorot_uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)) with fans
    counted over the kernel's taps, as torch's xavier_uniform_) and its zero bias, in place; returns the layer."""
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def keras_same_padding(size, kernel_size, stride):
    """(before, after) zero padding of TensorFlow's padding='same' along one axis: the output has ceil(size /
    stride) samples and the odd pixel of an odd total goes after (bottom/right). A 3x3 stride-2 conv on an even
    size pads (0, 1): its windows start on even pixels, where PyTorch's padding=1 starts them on odd ones."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


class KerasSameConv2d(nn.Conv2d):
    """nn.Conv2d with TensorFlow's padding='same' at any stride and input size (keras_same_padding)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)

    def forward(self, x):
        top, bottom = keras_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = keras_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))  # (N, out, ceil(h / s), ceil(w / s))


class DepthToSpace(nn.Module):
    """TensorFlow's depth_to_space (srgan-keras's SubpixelConv2D) on NCHW tensors: output channel c at sub-position
    (i, j) of each r x r block is input channel (i * r + j) * C + c (nn.PixelShuffle takes c * r^2 + i * r + j).
    The same family of networks either way; this order keeps srgan-keras's conv weights where Keras has them."""

    def __init__(self, r):
        super().__init__()
        self.r = int(r)

    def forward(self, x):
        n, c, h, w = x.shape
        r = self.r
        x = x.reshape(n, r, r, c // (r * r), h, w)  # (N, i, j, C, h, w)
        return x.permute(0, 3, 4, 1, 5, 2).reshape(n, c // (r * r), h * r, w * r)  # (N, C, h*r, w*r)


def _keras_prelu(channels):
    """Keras PReLU(shared_axes=[1, 2]): one slope per channel, shared over height and width, initialised to 0
    (Keras's alpha_initializer='zeros'; PyTorch's default is 0.25)."""
    return nn.PReLU(num_parameters=channels, init=0.)


class KerasResidualBlock(nn.Module):
    """srgan-keras's residual_block: conv-BN-PReLU-conv-BN plus the identity."""

    def __init__(self, n_channels=64, kernel_size=3, bn_momentum=KERAS_BN_MOMENTUM):
        super().__init__()
        self.body = nn.Sequential(
            keras_normal_(nn.Conv2d(n_channels, n_channels, kernel_size, padding=kernel_size // 2)),
            keras_batch_norm(n_channels, bn_momentum), _keras_prelu(n_channels),
            keras_normal_(nn.Conv2d(n_channels, n_channels, kernel_size, padding=kernel_size // 2)),
            keras_batch_norm(n_channels, bn_momentum))

    def forward(self, x):
        return self.body(x) + x  # (N, n_channels, h, w)


class KerasSRGANGenerator(nn.Module):
    """srgan-keras's build_generator: 9x9 conv + PReLU, n_blocks residual blocks, conv-BN and the long skip,
    log2(s) x (conv to 4 * n_channels (srgan-keras's 256), depth_to_space(2), PReLU), a 9x9 conv to RGB with tanh.

    Convolutions stride 1 with odd kernels, so Keras's 'same' is PyTorch's padding=k//2. Every conv kernel
    N(0, 0.02) except the last, which srgan-keras leaves at Keras's default glorot_uniform; zero biases; BatchNorm as
    keras_batch_norm; PReLU slopes per channel, from 0. 1,550,659 parameters at the defaults (x4).
    Input: RGB in [-1, 1] (N, 3, h, w) (srgan-keras's (x / 255 - 0.5) / 0.5). Output: RGB in [-1, 1] (N, 3, s*h, s*w).
    """

    def __init__(self, scaling_factor=4, n_channels=64, n_blocks=16, large_kernel_size=9, small_kernel_size=3,
                 bn_momentum=KERAS_BN_MOMENTUM):
        super().__init__()
        scaling_factor = int(scaling_factor)
        if scaling_factor not in {2, 4, 8}:
            raise ValueError(f"the Keras SRGAN's scaling factor must be 2, 4 or 8, not {scaling_factor}")
        c, k, small = n_channels, large_kernel_size, small_kernel_size
        self.head = nn.Sequential(keras_normal_(nn.Conv2d(3, c, k, padding=k // 2)), _keras_prelu(c))
        self.body = nn.Sequential(*[KerasResidualBlock(c, small, bn_momentum) for _ in range(n_blocks)])
        self.body_end = nn.Sequential(keras_normal_(nn.Conv2d(c, c, small, padding=small // 2)),
                                      keras_batch_norm(c, bn_momentum))
        self.upsample = nn.Sequential(*[
            nn.Sequential(keras_normal_(nn.Conv2d(c, 4 * c, small, padding=small // 2)), DepthToSpace(2),
                          _keras_prelu(c))
            for _ in range(int(math.log2(scaling_factor)))])
        self.tail = keras_glorot_uniform_(nn.Conv2d(c, 3, k, padding=k // 2))

    def forward(self, lr_imgs):
        x = self.head(lr_imgs)  # (N, C, h, w)
        x = self.body_end(self.body(x)) + x  # (N, C, h, w)
        x = self.upsample(x)  # (N, C, s*h, s*w)
        return torch.tanh(self.tail(x))  # (N, 3, s*h, s*w), in [-1, 1]


class KerasSRGANDiscriminator(nn.Module):
    """srgan-keras's build_discriminator: conv + LeakyReLU(0.2), then conv-BN-LeakyReLU(0.2) blocks (widths and
    strides as the tutorial's Discriminator: 64, 64/2, 128, 128/2, 256, 256/2, 512, 512/2 at the defaults), global
    average pooling, dense fc_size, LeakyReLU(0.2), dense 1 with sigmoid.

    Convolutions pad as Keras's 'same' (KerasSameConv2d: the stride-2 ones pad bottom/right only on even sizes);
    every kernel N(0, 0.02), zero biases, BatchNorm as keras_batch_norm. 5,215,425 parameters at the defaults.
    Input: RGB (N, 3, H, W) in [-1, 1], any size. Returns the probability of "real" (N, 1), not logits.
    """

    def __init__(self, kernel_size=3, n_channels=64, n_blocks=8, fc_size=1024, bn_momentum=KERAS_BN_MOMENTUM):
        super().__init__()
        blocks, in_channels = [], 3
        for i in range(n_blocks):
            out_channels = (n_channels if i == 0 else in_channels * 2) if i % 2 == 0 else in_channels
            layers = [keras_normal_(KerasSameConv2d(in_channels, out_channels, kernel_size, stride=1 + i % 2))]
            layers += [keras_batch_norm(out_channels, bn_momentum)] if i else []
            blocks.append(nn.Sequential(*layers, nn.LeakyReLU(0.2)))
            in_channels = out_channels
        self.conv_blocks = nn.Sequential(*blocks)
        self.fc1 = keras_normal_(nn.Linear(in_channels, fc_size))
        self.leaky_relu = nn.LeakyReLU(0.2)
        self.fc2 = keras_normal_(nn.Linear(fc_size, 1))

    def forward(self, imgs):
        x = self.conv_blocks(imgs).mean(dim=(2, 3))  # (N, C): GlobalAveragePooling2D
        x = self.leaky_relu(self.fc1(x))  # (N, fc_size)
        return torch.sigmoid(self.fc2(x))  # (N, 1), probability of "real"


# ----------------------------------------------------------------------------------------------
# Registry: how each architecture is built, fed and trained
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchSpec:
    """What the scripts need to know about an architecture, declared once.

    color: 'rgb' (the model sees RGB) or 'y' (the model sees BT.601 luma; Cb/Cr are upscaled bicubically).
    in_type / out_type: value ranges the model takes and gives (see utils.convert_image).
    pre_upsample: the input is bicubic-upscaled to the output size first (SRCNN).
    train: default training recipe; scripts' flags override every entry (empty: not trained by this suite).
    recipes: other named recipes (train_srresnet.py --recipe NAME), each complete in itself, flags override them too.
    min_size, multiple_of, square: what the network needs of its input's height and width (inference.Upscaler pads
      the input, by reflection then replication, and crops the output); every architecture of the suite takes any
      size, models of other projects run through spandrel may not (SwinIR: multiples of its window).
    precisions: the --precision values the network runs correctly in.
    cpu_bf16_pays: whether bf16 measured faster than fp32 for it on a CPU with native bf16 (what --precision auto
      needs before it picks bf16 there).
    """
    name: str
    cls: type
    paper: str
    scales: tuple
    color: str
    in_type: str
    out_type: str
    pre_upsample: bool = False
    train: dict = field(default_factory=dict)
    recipes: dict = field(default_factory=dict)
    min_size: int = 1
    multiple_of: int = 1
    square: bool = False
    precisions: tuple = ('fp32', 'bf16', 'fp16')
    cpu_bf16_pays: bool = True


def _recipe(**entries):
    """A training recipe: every key is a flag of train_srresnet.py (crop_size in HR px, or lr_crop_size in LR px)."""
    recipe = dict(lr_schedule='step', lr_milestones=(), lr_gamma=0.1, patches_per_image=1, downsample='matlab',
                  lr_from='patch', hflip=True, vflip=True, rot90=True)
    recipe.update(entries)
    return recipe


ARCHS = {
    # The tutorial's constants (COCO2014, one crop per image per epoch, PIL bicubic, no augmentation).
    'srresnet': ArchSpec(
        'srresnet', SRResNet, 'Ledig et al., Photo-Realistic Single Image SR Using a GAN, CVPR 2017',
        scales=(2, 4, 8), color='rgb', in_type='imagenet-norm', out_type='[-1, 1]',
        train=_recipe(loss='mse', lr=1e-4, crop_size=96, batch_size=400, epochs=130, downsample='pil', hflip=False,
                      vflip=False, rot90=False),
        # The primary model on a CPU: the 291 images of T91 + BSD200, L1, Adam with warm-up and cosine decay per step,
        # LR cut from each image's, an EMA with warm-up (benchmarks/bench_cpu_quality.py --archs srresnet).
        recipes={'cpu-291': _recipe(loss='l1', lr=1e-3, lr_schedule='warmup-cosine', warmup_steps=500, crop_size=96,
                                    batch_size=16, patches_per_image=64, epochs=12, lr_from='image', ema_decay=0.999,
                                    ema_warmup=True)}),
    # Tuned for T91 on a 2-core CPU (benchmarks/bench_cpu_quality.py); how: docs/recipes-history.md.
    'srcnn': ArchSpec(
        'srcnn', SRCNN, 'Dong et al., Image Super-Resolution Using Deep Convolutional Networks, TPAMI 2016',
        scales=(2, 3, 4, 8), color='y', in_type='[0, 1]', out_type='[0, 1]', pre_upsample=True,
        train=_recipe(loss='mse', lr=1e-3, lr_schedule='cosine', lr_crop_size=11, batch_size=16,
                      patches_per_image=256, epochs=60)),
    # Tuned for T91 on a 2-core CPU (benchmarks/bench_cpu_quality.py); how: docs/recipes-history.md.
    'espcn': ArchSpec(
        'espcn', ESPCN, 'Shi et al., Real-Time Single Image and Video SR Using an Efficient Sub-Pixel CNN, '
        'CVPR 2016', scales=(2, 3, 4, 8), color='y', in_type='[0, 1]', out_type='[0, 1]',
        train=_recipe(loss='mse', lr=2e-3, lr_schedule='cosine', lr_crop_size=17, batch_size=32,
                      patches_per_image=256, epochs=200, lr_from='image'),
        # bf16 took as long as fp32 (Set5 0.11 vs 0.12 s, Set14 0.49 vs 0.48 s: benchmarks/bench_precision.py on
        # a CPU with AMX), for 52 dB instead of exact: auto keeps fp32.
        cpu_bf16_pays=False),
    # EDSR-PyTorch's recipe: DIV2K (800 images x 20 patches = 1000 iterations of 16 per epoch), 48-px LR
    # patches, L1, Adam 1e-4 halved every 200 epochs.
    'edsr': ArchSpec(
        'edsr', EDSR, 'Lim et al., Enhanced Deep Residual Networks for Single Image SR, CVPRW 2017',
        scales=(2, 3, 4, 8), color='rgb', in_type='[0, 255]', out_type='[0, 255]',
        train=_recipe(loss='l1', lr=1e-4, lr_milestones=(200,), lr_gamma=0.5, lr_crop_size=48, batch_size=16,
                      patches_per_image=20, epochs=300)),
    # RCAN's recipe: as EDSR's, 1000 epochs.
    'rcan': ArchSpec(
        'rcan', RCAN, 'Zhang et al., Image SR Using Very Deep Residual Channel Attention Networks, ECCV 2018',
        scales=(2, 3, 4, 8), color='rgb', in_type='[0, 255]', out_type='[0, 255]',
        train=_recipe(loss='l1', lr=1e-4, lr_milestones=(200,), lr_gamma=0.5, lr_crop_size=48, batch_size=16,
                      patches_per_image=20, epochs=1000)),
    # BasicSR's options/train/SRResNet_SRGAN/train_MSRResNet_x4.yml: DIV2K, 32-px LR patches (gt_size 128), batch
    # 16, L1, Adam 2e-4, 1M iterations (here 1000 epochs of 800 images x 20 patches / 16), flips and rotations.
    # BasicSR decays with four cosine cycles of 250k iterations to 1e-7 and Adam betas (0.9, 0.99) and keeps an EMA
    # of the weights; here one cosine decay to lr/100 over the run, torch's default betas, an EMA only with
    # --ema-decay 0.999.
    'msrresnet': ArchSpec(
        'msrresnet', MSRResNet, 'Ledig et al. CVPR 2017, modified in BasicSR (no BatchNorm, as ESRGAN: Wang et al., '
        'ECCVW 2018)', scales=(2, 3, 4), color='rgb', in_type='[0, 1]', out_type='[0, 1]',
        train=_recipe(loss='l1', lr=2e-4, lr_schedule='cosine', lr_crop_size=32, batch_size=16,
                      patches_per_image=20, epochs=1000)),
    # Real-ESRNet's options (Real-ESRGAN's train_realesrnet_x4plus.yml, the L1 stage before the GAN): 256-px HR
    # patches (64 px LR), batch 12 (per GPU), L1, Adam 2e-4 held constant (its one milestone is the last iteration),
    # flips and rotations; trained there on synthetic degradations of DF2K + OST for 1M iterations (here 1000
    # epochs of 20 patches per image).
    'srvgg_compact': ArchSpec(
        'srvgg_compact', SRVGGNetCompact, 'Wang et al., Real-ESRGAN: Training Real-World Blind SR with Pure '
        'Synthetic Data, ICCVW 2021 (SRVGGNetCompact)', scales=(2, 3, 4), color='rgb', in_type='[0, 1]',
        out_type='[0, 1]',
        train=_recipe(loss='l1', lr=2e-4, lr_crop_size=64, batch_size=12, patches_per_image=20, epochs=1000)),
    # The Keras SRGAN's generator (srgan-keras): trained only as a GAN, from scratch (train_srgan.py --variant
    # keras), so no train_srresnet.py recipe.
    'srgan_keras': ArchSpec(
        'srgan_keras', KerasSRGANGenerator, 'Ledig et al. CVPR 2017, as the Keras SRGAN '
        '(bubbliiiing/srgan-keras) builds it', scales=(2, 4, 8), color='rgb', in_type='[-1, 1]', out_type='[-1, 1]'),
}

# train_srgan.py --variant with a generator of its own -> the ARCHS name of that generator (its checkpoints record it as
# 'variant').
SRGAN_VARIANT_ARCHS = {'keras': 'srgan_keras'}
# The variants whose generator is the tutorial's Generator (an SRResNet under 'net.'), each with its output label.
SRGAN_SRRESNET_VARIANTS = {'tutorial': 'srgan', 'realesrgan': 'srgan_real'}


def arch_spec(arch, config=None):
    """The ArchSpec of ``arch`` for a model built from ``config``: as ARCHS[arch], except that EDSR and RCAN built
    with rgb_range 1 (EDSR-PyTorch's --rgb_range 1) take and give RGB in [0, 1] instead of [0, 255]."""
    spec = ARCHS[arch]
    rgb_range = (config or {}).get('rgb_range')
    if rgb_range is None or arch not in ('edsr', 'rcan') or rgb_range == 255:
        return spec
    if rgb_range != 1:
        raise ValueError(f"{arch} takes RGB in [0, 255] or [0, 1] (rgb_range 255 or 1), not rgb_range {rgb_range}")
    return dataclasses.replace(spec, in_type='[0, 1]', out_type='[0, 1]')


def check_scale(arch, scale):
    """Raise ValueError naming the allowed scales when ``arch`` cannot upscale by ``scale``."""
    spec = ARCHS[arch]
    if scale not in spec.scales:
        allowed = ', '.join(map(str, spec.scales))
        raise ValueError(f"{arch} supports scales {allowed}, not {scale}")


def model_config(arch, scale, **overrides):
    """The full constructor configuration of ``arch`` at ``scale``: its defaults updated with ``overrides``.

    Tuples become lists so the configuration is plain data for checkpoints.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    params = inspect.signature(ARCHS[arch].cls).parameters
    config = {k: p.default for k, p in params.items()}
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"{arch} has no option {', '.join(unknown)}; its options are {', '.join(config)}")
    config.update(overrides)
    config['scaling_factor'] = int(scale)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def recipe_names(arch):
    """The named recipes of ``arch`` (train_srresnet.py --recipe), besides its default one."""
    return tuple(ARCHS[arch].recipes)


def train_defaults(arch, scale, recipe=None):
    """The architecture's training recipe at ``scale`` (crop_size resolved from an LR patch size if needed):
    its default one, or the named ``recipe`` (ValueError naming the choices when it has none of that name)."""
    spec = ARCHS[arch]
    if recipe is not None and recipe not in spec.recipes:
        choices = ', '.join(spec.recipes) or 'none'
        raise ValueError(f"{arch} has no recipe {recipe!r} (its named recipes: {choices})")
    recipe = dict(spec.train if recipe is None else spec.recipes[recipe])
    if 'lr_crop_size' in recipe:
        recipe['crop_size'] = recipe.pop('lr_crop_size') * int(scale)
    return recipe


def build_model(arch, config):
    """Instantiate ``arch`` from its recorded keyword configuration (must include ``scaling_factor``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    check_scale(arch, int(config['scaling_factor']))
    return ARCHS[arch].cls(**config)


def count_parameters(model):
    """Number of parameters (trainable or not), as the papers count them."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Model surgery: the same function, rearranged (training rewrites, inference fusing), and configs read off weights
# ----------------------------------------------------------------------------------------------


def apply_training_rewrites(model, tail_before_shuffle, fast_prelu, fast_tanh=False):
    """Switch the training rewrites on ``model``: the tail before the shuffle on every SRResNet inside it (an SRGAN
    Generator's .net too), the fast backward on every PReLU and the fast path of every Tanh. Same function (up to
    float rounding) and state_dict, a faster step."""
    for m in model.modules():
        if isinstance(m, SRResNet):
            m.use_tail_before_shuffle(tail_before_shuffle)
    use_fast_prelu(model, fast_prelu)
    use_fast_tanh(model, fast_tanh)


def subpixel_conv(conv, r):
    """A frozen nn.Conv2d on the grid before PixelShuffle(r) equal to ``conv`` applied after it (built by
    conv_before_shuffle): ``conv(pixel_shuffle(z, r)) == pixel_shuffle(subpixel_conv(conv, r)(z), r)`` up to float
    rounding. Returns None when conv does not qualify (before_shuffle_qualifies)."""
    if not before_shuffle_qualifies(conv):
        return None
    with torch.no_grad():
        index, padding = before_shuffle_index(conv, r)
        weight, bias = conv_before_shuffle(conv, r, index)
        new = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[-1], padding=padding, bias=bias is not None,
                        device=weight.device, dtype=weight.dtype)
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def fuse_for_inference(model):
    """A copy of ``model`` for inference with the same outputs up to float rounding: BatchNorm (eval statistics)
    folded into the convolution before it, and the final convolution after the last pixel shuffle moved before
    it (conv_before_shuffle) for SRResNet/SRGAN, EDSR and RCAN (MSRResNet has neither: its copy is the same
    network). Other projects' networks get only the BatchNorm folding. The given model is not changed."""
    model = copy.deepcopy(model).eval()
    # only where the Sequential really runs its children in order (a subclass may override forward)
    plain = [m for m in model.modules() if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward]
    for seq in plain:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), nn.Identity()
    if isinstance(model, SRResNet):
        model.use_tail_before_shuffle()
    elif isinstance(model, (EDSR, RCAN)):  # tail = (Upsampler, conv): the conv moves before the last shuffle
        upsampler, last = model.tail[0], model.tail[1]
        r = upsampler[-1].upscale_factor
        tail_conv = subpixel_conv(last, r)
        if tail_conv is not None:
            model.tail = nn.Sequential(*list(upsampler)[:-1], tail_conv, nn.PixelShuffle(r))
    return model


def infer_srresnet_config(state_dict, prefix=''):
    """SRResNet constructor arguments recovered from a state_dict's shapes (for the tutorial's own checkpoints,
    which record none). ValueError when the weights are not an SRResNet's."""
    try:
        w1 = state_dict[prefix + 'conv_block1.conv_block.0.weight']  # (n_channels, 3, k, k)
        w2 = state_dict[prefix + 'conv_block2.conv_block.0.weight']  # (n_channels, n_channels, k, k)
    except KeyError:
        raise ValueError("the checkpoint's weights are not an SRResNet's (no conv_block1/conv_block2)") from None

    def count(block):  # distinct indices i in '<prefix><block>.<i>.*'
        return len({k[len(prefix):].split('.')[1] for k in state_dict if k.startswith(prefix + block + '.')})
    n_blocks, n_sub = count('residual_blocks'), count('subpixel_convolutional_blocks')
    return {'large_kernel_size': int(w1.shape[-1]), 'small_kernel_size': int(w2.shape[-1]),
            'n_channels': int(w1.shape[0]), 'n_blocks': n_blocks, 'scaling_factor': 2 ** n_sub}


def sequence_length(state_dict, prefix):
    """1 + the largest i with a key '<prefix>.<i>.…' in state_dict (0 when there is none)."""
    heads = [k[len(prefix) + 1:].split('.', 1)[0] for k in state_dict if k.startswith(prefix + '.')]
    indices = [int(h) for h in heads if h.isdigit()]
    return max(indices) + 1 if indices else 0


def _shape(state_dict, key):
    try:
        return tuple(state_dict[key].shape)
    except KeyError:
        raise ValueError(f"no {key} in the weights") from None


def _check_rgb_3x3(state_dict, first, last):
    """ValueError unless the first conv takes 3 channels and the last gives 3, both 3x3 (what the suite builds)."""
    w_first, w_last = _shape(state_dict, first), _shape(state_dict, last)
    if w_first[1] != 3 or w_last[0] != 3:
        raise ValueError(f"{w_first[1]} input and {w_last[0]} output channels: the suite's models are RGB (3 and 3)")
    if w_first[-1] != 3 or w_last[-1] != 3:
        raise ValueError(f"{first} is {w_first[-1]}x{w_first[-1]}: the suite's EDSR, RCAN and MSRResNet use 3x3 "
                         "convolutions")


def upsampler_scale(state_dict, prefix, n_feats):
    """The scale of an EDSR-style pixel-shuffle upsampler stored under ``prefix`` (convs at .0, .2, .4, each to
    r^2 * n_feats channels followed by a shuffle by r): x2, x4, x8 (one to three x2 steps) or x3 (one x3 step)."""
    scale, i = 1, 0
    while f'{prefix}.{i}.weight' in state_dict:
        out_c, in_c = _shape(state_dict, f'{prefix}.{i}.weight')[:2]
        r = math.isqrt(out_c // n_feats)
        if in_c != n_feats or r * r * n_feats != out_c:
            raise ValueError(f"{prefix}.{i}.weight has {out_c} x {in_c} channels, not (r^2 x {n_feats}) x {n_feats}")
        scale *= r
        i += 2
    steps = i // 2
    if not ((scale == 3 and steps == 1) or (scale in (2, 4, 8) and 2 ** steps == scale)):
        raise ValueError(f"the upsampler under {prefix!r} ({steps} step(s), x{scale}) is not EDSR's x2/x3/x4/x8")
    return scale


def infer_edsr_config(state_dict):
    """EDSR's scaling_factor, n_resblocks and n_feats read off a state_dict in EDSR-PyTorch's key names (this
    suite's): body.0..body.{N-1} are ResBlocks, body.N the closing conv. res_scale and rgb_range are not in the
    shapes (rgb_range can be read off the mean shift: mean_shift_range)."""
    _check_rgb_3x3(state_dict, 'head.0.weight', 'tail.1.weight')
    n_feats = _shape(state_dict, 'head.0.weight')[0]
    n_resblocks = sequence_length(state_dict, 'body') - 1
    if n_resblocks < 0 or f'body.{n_resblocks}.weight' not in state_dict:
        raise ValueError("EDSR's body is residual blocks followed by one conv; these weights have no closing conv")
    return {'scaling_factor': upsampler_scale(state_dict, 'tail.0', n_feats), 'n_resblocks': n_resblocks,
            'n_feats': n_feats}


def infer_rcan_config(state_dict):
    """RCAN's scaling_factor, n_resgroups, n_resblocks, n_feats and reduction read off a state_dict in EDSR-PyTorch's
    (and the official release's) key names. Any reduction r with n_feats // r equal to the squeezed width builds
    the same layers: 16 when it fits (every release), else the smallest such r."""
    _check_rgb_3x3(state_dict, 'head.0.weight', 'tail.1.weight')
    n_feats = _shape(state_dict, 'head.0.weight')[0]
    n_resgroups = sequence_length(state_dict, 'body') - 1
    n_resblocks = sequence_length(state_dict, 'body.0.body') - 1
    for g in range(n_resgroups):
        if sequence_length(state_dict, f'body.{g}.body') - 1 != n_resblocks:
            raise ValueError(f"residual group {g} has {sequence_length(state_dict, f'body.{g}.body') - 1} RCABs, "
                             f"group 0 has {n_resblocks}: RCAN's groups are all alike")
    squeezed = _shape(state_dict, 'body.0.body.0.body.3.conv_du.0.weight')[0]
    reduction = next((r for r in [16] + list(range(1, n_feats + 1)) if n_feats // r == squeezed), None)
    if reduction is None:
        raise ValueError(f"no channel-attention reduction maps {n_feats} channels to {squeezed}")
    return {'scaling_factor': upsampler_scale(state_dict, 'tail.0', n_feats), 'n_resgroups': n_resgroups,
            'n_resblocks': n_resblocks, 'n_feats': n_feats, 'reduction': reduction}


def mean_shift_range(state_dict):
    """(rgb_range, mean) read off EDSR-PyTorch's stored sub_mean (weight 1/std on the diagonal, bias -rgb_range *
    mean / std): rgb_range 255 or 1 (the DIV2K mean is ~0.44, so rgb_range * mean tells them apart), the mean as a
    tuple. None when the weights hold no sub_mean."""
    if 'sub_mean.weight' not in state_dict or 'sub_mean.bias' not in state_dict:
        return None
    diag = torch.diagonal(state_dict['sub_mean.weight'].detach().double().reshape(3, 3))
    scaled_mean = -state_dict['sub_mean.bias'].detach().double() / diag  # rgb_range * mean
    rgb_range = 255 if scaled_mean.abs().mean() > 16 else 1
    return rgb_range, tuple((scaled_mean / rgb_range).tolist())


def infer_msrresnet_config(state_dict):
    """MSRResNet's scaling_factor, n_channels and n_blocks read off a state_dict in BasicSR's key names (upconv2
    present: x4; else upconv1 gives 4 or 9 times the channels: x2 or x3)."""
    _check_rgb_3x3(state_dict, 'conv_first.weight', 'conv_last.weight')
    n_channels = _shape(state_dict, 'conv_first.weight')[0]
    up = _shape(state_dict, 'upconv1.weight')[0]
    if 'upconv2.weight' in state_dict:
        if up != 4 * n_channels:
            raise ValueError(f"upconv1 gives {up} channels with an upconv2 present: not a x4 MSRResNet")
        scale = 4
    else:
        scale = math.isqrt(up // n_channels)
        if scale not in (2, 3) or scale * scale * n_channels != up:
            raise ValueError(f"upconv1 gives {up} channels: not 4 or 9 x {n_channels} (MSRResNet x2 or x3)")
    return {'scaling_factor': scale, 'n_channels': n_channels, 'n_blocks': sequence_length(state_dict, 'body')}


def infer_srvgg_config(state_dict):
    """SRVGGNetCompact's scaling_factor, num_feat, num_conv and act_type read off a state_dict in Real-ESRGAN's key
    names: convolutions at the even indices of body (the first 3 -> num_feat, the last num_feat -> 3 s^2), PReLU
    weights (num_feat,) at the odd ones. Without PReLU weights act_type is taken as 'relu' ('leakyrelu' keeps no
    weights either: give it yourself for such weights)."""
    n = sequence_length(state_dict, 'body')
    if n < 3 or n % 2 == 0:
        raise ValueError(f"SRVGGNetCompact's body is an odd number (>= 3) of layers, these weights have {n}")
    first, last = _shape(state_dict, 'body.0.weight'), _shape(state_dict, f'body.{n - 1}.weight')
    num_feat = first[0]
    if first[1:] != (3, 3, 3) or last[1:] != (num_feat, 3, 3):
        raise ValueError(f"body.0 is {first} and body.{n - 1} is {last}: not SRVGGNetCompact's 3x3 RGB convolutions")
    for i in range(2, n - 1, 2):
        if _shape(state_dict, f'body.{i}.weight') != (num_feat, num_feat, 3, 3):
            raise ValueError(f"body.{i}.weight is {_shape(state_dict, f'body.{i}.weight')}, not ({num_feat}, "
                             f"{num_feat}, 3, 3)")
    prelu = 'body.1.weight' in state_dict
    if prelu and any(_shape(state_dict, f'body.{i}.weight') != (num_feat,) for i in range(1, n - 1, 2)):
        raise ValueError(f"SRVGGNetCompact's PReLUs have {num_feat} weights each; these weights differ")
    scale = math.isqrt(last[0] // 3)
    if scale * scale * 3 != last[0] or scale not in ARCHS['srvgg_compact'].scales:
        raise ValueError(f"the last convolution gives {last[0]} channels: not 3 x s^2 for s in 2, 3, 4")
    return {'scaling_factor': scale, 'num_feat': num_feat, 'num_conv': (n - 3) // 2,
            'act_type': 'prelu' if prelu else 'relu'}
