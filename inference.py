"""Inference: checkpoints into ready models (this suite's, the tutorial's, EDSR-PyTorch's, the official RCAN
release's, BasicSR's, and whatever spandrel recognises), the one way each model is fed, Upscaler (tiling, memory
plan, self-ensemble, precision), the papers' evaluation protocol used by eval.py and by validation during training,
and the network with its conventions in one graph (export.py).

    import inference
    loaded = inference.load_sr_model('results/espcn_x3_t91.pth', 'cpu')
    upscaler = inference.Upscaler(loaded.model, loaded.spec, loaded.config['scaling_factor'], 'cpu')
    sr_rgb, sr_y = upscaler.upscale(lr)          # lr (N, 3, h, w) RGB in [0, 1]

Imports utils and models only.
"""
import math
import os
import warnings
from typing import NamedTuple

import av
import av.logging
import numpy as np
import torch
from PIL import Image

import models
from utils import (FORMAT_VERSION, IMAGE_EXTENSIONS, UserError, atomic_path, auto_precision, autocast,
                   check_precision, convert_image, gray_uint8, imresize, imresize_up, load_checkpoint, modcrop,
                   parse_memory, psnr, rgb_to_y, rgb_to_y_uint8, rgb_to_ycbcr, save_checkpoint, strip_prefixes, timer,
                   to_uint8, ycbcr_to_rgb)

# ----------------------------------------------------------------------------------------------
# How each architecture is fed: RGB in [0, 1] in, RGB in [0, 1] out (models.ArchSpec says the rest)
# ----------------------------------------------------------------------------------------------


def model_input(spec, lr, scale, resize=imresize):
    """What the network takes, from lr (N, 3, h, w) RGB in [0, 1]: RGB in spec.in_type for RGB models; for
    Y-channel models the BT.601 luma (N, 1, h, w) in [0, 1], bicubic-upscaled to (N, 1, s*h, s*w) when
    spec.pre_upsample (SRCNN). ``resize``: the MATLAB bicubic used (utils.imresize_up inside an ONNX graph)."""
    if spec.color == 'rgb':
        return convert_image(lr, '[0, 1]', spec.in_type)
    y = rgb_to_y(lr)  # (N, 1, h, w)
    return resize(y, scale) if spec.pre_upsample else y


def model_target(spec, hr):
    """The training target in the network's output space, from hr (N, 3, H, W) RGB in [0, 1]: RGB in
    spec.out_type, or the luma (N, 1, H, W) in [0, 1] for Y-channel models. The loss is computed there."""
    if spec.color == 'rgb':
        return convert_image(hr, '[0, 1]', spec.out_type)
    return rgb_to_y(hr)


def model_output(spec, out, lr, scale, resize=imresize):
    """The network's output as RGB: (sr_rgb (N, 3, s*h, s*w) float32 in [0, 1], unclamped; sr_y (N, s*h, s*w) the
    model's own luma for Y-channel models, else None). Y-channel models get Cb/Cr of lr (N, 3, h, w) by MATLAB
    bicubic (``resize``, as in model_input)."""
    if spec.color == 'rgb':
        return convert_image(out.float(), source=spec.out_type, target='[0, 1]'), None
    sr_y = out.float()  # (N, 1, s*h, s*w), in [0, 1]
    cbcr = resize(rgb_to_ycbcr(lr)[:, 1:], scale).float()  # (N, 2, s*h, s*w)
    return ycbcr_to_rgb(torch.cat([sr_y, cbcr], dim=1)), sr_y[:, 0]


# ----------------------------------------------------------------------------------------------
# Checkpoints into models: this suite's files, the tutorial's, other projects' published weights, spandrel's
# ----------------------------------------------------------------------------------------------

# What the official releases do where the weights do not say (--res-scale, --rgb-range override them).
EDSR_PAPER_SIZE = (32, 256)  # (n_resblocks, n_feats) of the paper's EDSR: trained with res_scale 0.1
RGB_RANGE = 255  # EDSR-PyTorch's, RCAN's and BasicSR's default value range (BasicSR's img_range)
# A BasicSR checkpoint ({'params': ..., 'params_ema': ...}) tests with the EMA weights; then other wrappers.
WRAPPER_KEYS = ('params_ema', 'params-ema', 'params', 'model_state_dict', 'state_dict', 'model', 'net')
EMA_WRAPPER_KEYS = ('params_ema', 'params-ema')
WEIGHT_CHOICES = ('ema', 'raw')  # --weights: a checkpoint's exponential moving average, or its trained weights


class CheckpointInfo(NamedTuple):
    """What a checkpoint holds, ready to build (describe_checkpoint).

    label: its name in file names and reports ('srgan' for an SRGAN generator, spandrel's architecture id such as
      'ESRGAN' for a spandrel file, else arch).
    arch: a name in models.ARCHS ('srresnet' for an SRGAN generator), or spandrel's architecture id.
    config: constructor keywords for models.build_model; for spandrel files {'architecture', 'scaling_factor',
      'tags'} (spandrel reads the rest off the weights again).
    state: the weights under the key names ``arch`` uses (converted from the publishing project's names).
    spec: models.ArchSpec, how to feed the network (inference.Upscaler).
    source: where the weights come from, in words.
    notes: what was read off the weights and what was assumed, one sentence each (the scripts print them).
    network: the module already built, for spandrel files (building it is how spandrel reads them), else None.
    selected: 'ema' or 'raw' when the file holds an exponential moving average of the weights (this suite's
      'model_ema' / 'generator_ema', BasicSR's 'params_ema') and which of them ``state`` is; None when it holds one
      set of weights only.
    """
    label: str
    arch: str
    config: dict
    state: dict
    spec: models.ArchSpec
    source: str
    notes: tuple = ()
    network: torch.nn.Module = None
    selected: str = None


class LoadedModel(NamedTuple):
    """A network rebuilt from a checkpoint: ``model`` (eval mode, on the device), ``arch`` (a models.ARCHS name,
    'srresnet' also for an SRGAN generator, or spandrel's architecture id), ``config`` (constructor keywords),
    ``label`` (what it is called in file names and reports: 'srgan' for an SRGAN generator, else arch), ``spec``
    (how to feed it: pass it to Upscaler), ``source``, ``notes`` and ``selected`` (as in CheckpointInfo)."""
    model: torch.nn.Module
    arch: str
    config: dict
    label: str
    spec: models.ArchSpec = None
    source: str = ''
    notes: tuple = ()
    selected: str = None


def add_assumption_args(parser):
    """--res-scale and --rgb-range: what published weights do not say about themselves (eval.py, test.py,
    export.py). Files of this suite record both; a flag that contradicts a file is refused."""
    g = parser.add_argument_group("published weights (only where the file does not say)")
    g.add_argument('--res-scale', type=float, metavar='R',
                   help="EDSR's residual scaling, not stored in EDSR-PyTorch's or BasicSR's files (default: as "
                        "the official releases: 0.1 for the paper's 32-block 256-feature EDSR, 1 otherwise)")
    g.add_argument('--rgb-range', type=int, choices=(1, 255),
                   help="value range EDSR/RCAN weights were trained in (RGB in [0, 255] or [0, 1]; BasicSR's "
                        "img_range) where the file does not say it (default: 255, the projects' default; "
                        "EDSR-PyTorch's files say it in their sub_mean)")
    return g


def add_weights_arg(parser):
    """--weights ema|raw (eval.py, test.py, export.py): which weights of a checkpoint that holds both."""
    parser.add_argument('--weights', choices=WEIGHT_CHOICES,
                        help="'ema': the exponential moving average of the weights that the trainer kept "
                             "(--ema-decay; BasicSR's params_ema), which it validates and ships; 'raw': the trained "
                             "weights themselves. Default: ema when the checkpoint has them, else its one set")


def _select_weights(ckpt, key, weights, path):
    """(state_dict, selected, notes) of ckpt[key] or of its moving average ckpt[key + '_ema'] (this suite's
    trainers with --ema-decay), after the file's own notes: ``weights`` 'ema', 'raw', or None for the average when
    there is one. UserError for 'ema' on a checkpoint without one."""
    ema_key, notes = f'{key}_ema', list(ckpt.get('notes') or ())
    if not isinstance(ckpt.get(ema_key), dict):
        if weights == 'ema':
            raise UserError(f"--weights ema: {path} holds no EMA weights (no {ema_key!r}: trained without "
                            f"--ema-decay); drop the flag or pass --weights raw")
        return ckpt[key], None, notes
    decay = ckpt.get('ema_decay')
    average = f"{ema_key!r}" + (f", decay {decay:g}" if isinstance(decay, (int, float)) else '')
    if weights == 'raw':
        return ckpt[key], 'raw', notes + [f"raw weights ({key!r}), not the file's EMA weights ({average})"]
    return ckpt[ema_key], 'ema', notes + [f"EMA weights ({average}), not the raw ones ({key!r})"]


def _srresnet_config(state, prefix, path):
    """models.infer_srresnet_config as a UserError naming the file."""
    try:
        return models.infer_srresnet_config(state, prefix)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def _first_keys(state, n=4):
    keys = list(state)
    return ', '.join(keys[:n]) + (', ...' if len(keys) > n else '')


def _unwrap(ckpt, path, weights=None):
    """(bare state_dict, note or None, selected): the weights inside a publishing project's wrapper (BasicSR's
    params_ema before params unless ``weights`` is 'raw', then state_dict, model, net...; a dict with one entry),
    without 'module.' / '_orig_mod.' / 'netG.' prefixes; ``selected`` as in CheckpointInfo. UserError when there
    are no weights, or no EMA weights for ``weights`` 'ema'."""
    state, note, selected = ckpt, None, None
    present = [k for k in WRAPPER_KEYS if isinstance(ckpt.get(k), dict)]
    averages = [k for k in present if k in EMA_WRAPPER_KEYS]
    if weights == 'ema' and not averages:
        raise UserError(f"--weights ema: {path} holds no EMA weights (no {' / '.join(EMA_WRAPPER_KEYS)}); drop "
                        f"the flag or pass --weights raw")
    usable = [k for k in present if not (weights == 'raw' and k in EMA_WRAPPER_KEYS)]
    if weights == 'raw' and averages and not usable:
        raise UserError(f"--weights raw: {path} holds only EMA weights ({', '.join(averages)}); drop the flag")
    if usable:
        key = usable[0]
        others = [k for k in present if k != key]
        note = f"weights from {key!r}" + (f" (also in the file: {', '.join(others)})" if others else '')
        state = ckpt[key]
        selected = 'ema' if key in EMA_WRAPPER_KEYS else 'raw' if averages else None
    elif len(ckpt) == 1 and isinstance(next(iter(ckpt.values())), dict):
        state = next(iter(ckpt.values()))
    if not state or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path} holds no model weights: not an SR checkpoint (top-level keys: "
                        f"{_first_keys(ckpt, 6)})")
    state = strip_prefixes(state)
    if all(k.startswith('netG.') for k in state):
        state = {k[len('netG.'):]: v for k, v in state.items()}
    return state, note, selected


def _layout(state):
    """Which published layout a bare state_dict is in, from its key names (see describe_checkpoint), or None."""
    has = state.__contains__
    if has('head.0.weight') and has('tail.1.weight'):
        if has('body.0.body.0.body.3.conv_du.0.weight'):
            return 'rcan'
        if has('body.0.body.0.weight') and has('body.0.body.2.weight'):
            return 'edsr'
    if has('conv_first.weight') and has('conv_last.weight'):
        if has('body.0.residual_group.0.rcab.0.weight'):
            return 'basicsr-rcan'
        if has('body.0.conv1.weight') and has('conv_after_body.weight') and has('upsample.0.weight'):
            return 'basicsr-edsr'
        if has('body.0.conv1.weight') and has('upconv1.weight') and has('conv_hr.weight'):
            return 'msrresnet'
    if has('conv_block1.conv_block.0.weight'):
        return 'srresnet'
    if has('net.conv_block1.conv_block.0.weight'):
        return 'srgan'
    return None


def _tutorial_srresnet(weights):
    """True for the tutorial's {'model': SRResNet state_dict} (no arch recorded; maybe 'module.'-prefixed)."""
    return isinstance(weights, dict) and _layout(strip_prefixes(weights)) == 'srresnet'


def _mean_shift_params(rgb_range, sign, dtype):
    """MeanShift's (weight, bias) for the DIV2K mean at ``rgb_range`` (sign -1: sub_mean, +1: add_mean)."""
    return (torch.eye(3, dtype=dtype).view(3, 3, 1, 1),
            sign * rgb_range * torch.tensor(models.DIV2K_RGB_MEAN, dtype=dtype))


def _with_mean_shifts(state, rgb_range):
    """state plus sub_mean / add_mean for the DIV2K mean at rgb_range (BasicSR keeps them out of the weights)."""
    out = dict(state)
    dtype = state['head.0.weight'].dtype if state['head.0.weight'].is_floating_point() else torch.float32
    for name, sign in (('sub_mean', -1), ('add_mean', 1)):
        out[f'{name}.weight'], out[f'{name}.bias'] = _mean_shift_params(rgb_range, sign, dtype)
    return out


def _value_range(state, assume, notes, path):
    """(state with mean shifts, rgb_range) for EDSR-PyTorch-named EDSR / RCAN weights: rgb_range read off the
    stored sub_mean, whose tensors are used as they are (RCAN's and early EDSR-PyTorch's code did not freeze them);
    without one, the DIV2K mean at --rgb-range (default 255) is assumed."""
    read = models.mean_shift_range(state)
    if read is None:
        rgb_range = assume.pop('rgb_range', RGB_RANGE)
        notes.append(f"no sub_mean/add_mean in the weights: the DIV2K mean and rgb_range {rgb_range} assumed "
                     f"(EDSR-PyTorch's defaults; --rgb-range to change)")
        return _with_mean_shifts(state, rgb_range), rgb_range
    if 'add_mean.weight' not in state or 'add_mean.bias' not in state:
        raise UserError(f"{path}: the weights have a sub_mean but no add_mean")
    rgb_range, mean = read
    notes.append(f"rgb_range {rgb_range} read off sub_mean (mean {', '.join(f'{m:.4f}' for m in mean)}); "
                 f"the stored mean shifts are used as they are")
    return state, rgb_range


def _edsr_res_scale(n_resblocks, n_feats, assume, notes, who):
    """res_scale for EDSR weights that do not record it: --res-scale, else the official releases' rule."""
    if 'res_scale' in assume:
        res_scale = float(assume.pop('res_scale'))
        notes.append(f"res_scale {res_scale:g} (--res-scale)")
        return res_scale
    res_scale = 0.1 if (n_resblocks, n_feats) == EDSR_PAPER_SIZE else 1.0
    notes.append(f"res_scale {res_scale:g} assumed: it is not stored in {who}'s weights; the official EDSR "
                 f"({EDSR_PAPER_SIZE[0]} blocks, {EDSR_PAPER_SIZE[1]} features) was trained with 0.1, the baseline "
                 f"and other sizes with 1 (--res-scale to change)")
    return res_scale


def _rename(state, mapping, path, who):
    """state under new key names: mapping (old prefix -> new prefix) must account for every key."""
    out = {}
    for key, value in state.items():
        for old, new in mapping:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            raise UserError(f"{path}: {who} weights with an unexpected key {key!r}")
    return out


def _basicsr_to_edsr_names(n_blocks, n_groups=None):
    """(old prefix, new prefix) pairs from BasicSR's EDSR / RCAN names to EDSR-PyTorch's (this suite's), as
    BasicSR's own scripts/model_conversion/convert_models.py pairs them."""
    n_body = n_blocks if n_groups is None else n_groups
    pairs = [('conv_first.', 'head.0.'), ('conv_after_body.', f'body.{n_body}.'), ('upsample.', 'tail.0.'),
             ('conv_last.', 'tail.1.')]
    if n_groups is None:  # EDSR: body.i.conv1/conv2 -> body.i.body.0/2
        pairs += [(f'body.{i}.conv{c}.', f'body.{i}.body.{2 * c - 2}.') for i in range(n_blocks) for c in (1, 2)]
        return pairs
    for g in range(n_groups):  # RCAN: residual_group.b.rcab.{0,2,3.attention.1,3.attention.3}, group conv
        pairs.append((f'body.{g}.conv.', f'body.{g}.body.{n_blocks}.'))
        for b in range(n_blocks):
            src, dst = f'body.{g}.residual_group.{b}.rcab.', f'body.{g}.body.{b}.body.'
            pairs += [(src + '0.', dst + '0.'), (src + '2.', dst + '2.'),
                      (src + '3.attention.1.', dst + '3.conv_du.0.'), (src + '3.attention.3.', dst + '3.conv_du.2.')]
    return pairs


def _published(state, layout, path, assume, notes):
    """(arch, config, state in the suite's names, source) for a bare state_dict in a published layout."""
    try:
        if layout == 'edsr':  # EDSR-PyTorch's EDSR / EDSR-baseline (the official .pt files)
            shape = models.infer_edsr_config(state)
            state, rgb_range = _value_range(state, assume, notes, path)
            res_scale = _edsr_res_scale(shape['n_resblocks'], shape['n_feats'], assume, notes, 'EDSR-PyTorch')
            return 'edsr', dict(shape, res_scale=res_scale, rgb_range=rgb_range), state, 'EDSR-PyTorch EDSR'
        if layout == 'rcan':  # the official RCAN release (RCAN_BIX*.pt) and EDSR-PyTorch's rcan.py: the same names
            shape = models.infer_rcan_config(state)
            state, rgb_range = _value_range(state, assume, notes, path)
            return 'rcan', dict(shape, rgb_range=rgb_range), state, 'RCAN (official release / EDSR-PyTorch)'
        if layout == 'basicsr-edsr':
            n_blocks = models.sequence_length(state, 'body')
            state = _rename(state, _basicsr_to_edsr_names(n_blocks), path, 'BasicSR EDSR')
            shape = models.infer_edsr_config(state)
            rgb_range = _basicsr_range(assume, notes)
            res_scale = _edsr_res_scale(shape['n_resblocks'], shape['n_feats'], assume, notes, 'BasicSR')
            return ('edsr', dict(shape, res_scale=res_scale, rgb_range=rgb_range), _with_mean_shifts(state, rgb_range),
                    'BasicSR EDSR')
        if layout == 'basicsr-rcan':
            n_groups = models.sequence_length(state, 'body')
            n_blocks = models.sequence_length(state, 'body.0.residual_group')
            state = _rename(state, _basicsr_to_edsr_names(n_blocks, n_groups), path, 'BasicSR RCAN')
            shape = models.infer_rcan_config(state)
            rgb_range = _basicsr_range(assume, notes)
            state = _fold_rcab_res_scale(state, shape, assume.pop('res_scale', 1.0), notes)
            return 'rcan', dict(shape, rgb_range=rgb_range), _with_mean_shifts(state, rgb_range), 'BasicSR RCAN'
        if layout == 'msrresnet':  # BasicSR's MSRResNet: this suite's own names
            shape = models.infer_msrresnet_config(state)
            notes.append("LeakyReLU 0.1, bilinear skip; RGB in [0, 1] in and out, as BasicSR feeds it")
            return 'msrresnet', shape, state, 'BasicSR MSRResNet'
        if layout == 'srresnet':
            return 'srresnet', _srresnet_config(state, '', path), state, "the tutorial's SRResNet"
    except ValueError as e:
        raise UserError(f"{path}: weights in {layout} key names, but {e}") from None
    raise AssertionError(layout)


def _basicsr_range(assume, notes):
    """BasicSR's img_range (not stored: a plain attribute): --rgb-range, else BasicSR's default 255."""
    rgb_range = assume.pop('rgb_range', RGB_RANGE)
    notes.append(f"BasicSR stores neither img_range nor the mean: img_range {rgb_range} (--rgb-range to change) and "
                 f"the DIV2K mean assumed, BasicSR's defaults, and folded into sub_mean/add_mean")
    return rgb_range


def _fold_rcab_res_scale(state, shape, res_scale, notes):
    """BasicSR's RCAB scales its residual by res_scale (official configs: 1); this suite's RCAB has none, so a
    res_scale r != 1 goes into the weights: the second conv times r, and the first 1x1 conv of the channel
    attention divided by r, which sees r times its input's mean (exact: CA(r h) = r CA(h) then)."""
    r = float(res_scale)
    if r <= 0:
        raise UserError(f"--res-scale {r:g}: must be positive")
    if r != 1:
        state = dict(state)
        for g in range(shape['n_resgroups']):
            for b in range(shape['n_resblocks']):
                p = f'body.{g}.body.{b}.body.'
                state[p + '2.weight'], state[p + '2.bias'] = state[p + '2.weight'] * r, state[p + '2.bias'] * r
                state[p + '3.conv_du.0.weight'] = state[p + '3.conv_du.0.weight'] / r
    notes.append(f"res_scale {r:g} (not stored: BasicSR's official RCAN configs use 1; --res-scale to change)"
                 + (", folded into the weights" if r != 1 else ''))
    return state


def _import_spandrel():
    """spandrel (optional: only files no other rule recognises need it), or None when it is not installed."""
    try:
        import spandrel
    except ImportError:
        return None
    return spandrel


class SpandrelNetwork(torch.nn.Module):
    """A network spandrel loaded, called as spandrel calls it (a few architectures return a tuple: spandrel keeps
    their call in the descriptor's private _call_fn), on a copy of its input (spandrel's RCAN, for one, scales its
    input in place). Takes and gives RGB in [0, 1]."""

    def __init__(self, descriptor):
        super().__init__()
        self.net = descriptor.model
        self.call = getattr(descriptor, '_call_fn', None) or _call_module

    def forward(self, x):
        return self.call(self.net, x.clone())  # (N, 3, s*h, s*w)


def _call_module(module, x):
    return module(x)


def spandrel_spec(descriptor):
    """A models.ArchSpec for a network spandrel loaded: RGB in [0, 1] in and out, its one scale, its size
    requirements (Upscaler pads to them) and the precisions spandrel says it supports."""
    req = descriptor.size_requirements
    precisions = ('fp32',) + ('bf16',) * bool(descriptor.supports_bfloat16) + ('fp16',) * bool(
        descriptor.supports_half)
    return models.ArchSpec(descriptor.architecture.id, type(descriptor.model),
                           f"{descriptor.architecture.name} (run by spandrel)", scales=(descriptor.scale,),
                           color='rgb', in_type='[0, 1]', out_type='[0, 1]', min_size=max(1, req.minimum),
                           multiple_of=req.multiple_of, square=req.square, precisions=precisions)


def _spandrel_info(state, path, notes, recorded=None):
    """CheckpointInfo of weights only spandrel can build (ESRGAN, Real-ESRGAN Compact, SwinIR, HAT, ...);
    ``recorded``: the architecture id a converted file records (checked)."""
    spandrel = _import_spandrel()
    seen = f"{len(state)} tensor(s): {_first_keys(state)}"
    if spandrel is None:
        raise UserError(f"{path}: weights of an architecture this suite does not build itself ({seen}); spandrel "
                        f"runs many more (ESRGAN, Real-ESRGAN, SwinIR, HAT, ...): pip install spandrel")
    try:
        descriptor = spandrel.ModelLoader(device='cpu').load_from_state_dict(dict(state))
    except spandrel.UnsupportedModelError:
        raise UserError(f"{path}: unrecognised weights ({seen}): not this suite's, the tutorial's, EDSR-PyTorch's, "
                        f"RCAN's or BasicSR's EDSR/RCAN/MSRResNet layout, nor an architecture spandrel "
                        f"{spandrel.__version__} knows") from None
    except Exception as e:  # detected, but the weights do not fit what spandrel built
        raise UserError(f"{path}: spandrel {spandrel.__version__} could not load these weights "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None
    arch = descriptor.architecture.id
    if recorded is not None and recorded != arch:
        raise UserError(f"{path} records a spandrel {recorded}, but spandrel reads its weights as {arch}")
    purpose = getattr(descriptor, 'purpose', None)
    if purpose != 'SR':
        raise UserError(f"{path}: spandrel's {arch} is a {purpose} model, not single-image super-resolution")
    if (descriptor.input_channels, descriptor.output_channels) != (3, 3):
        raise UserError(f"{path}: spandrel's {arch} takes {descriptor.input_channels} and gives "
                        f"{descriptor.output_channels} channels; only RGB models (3 and 3) run here")
    descriptor.eval()
    req = descriptor.size_requirements
    notes.append(f"spandrel {spandrel.__version__}: {descriptor.architecture.name} x{descriptor.scale}"
                 + (f" ({', '.join(descriptor.tags)})" if descriptor.tags else '') + "; RGB in [0, 1] in and out")
    if req.minimum > 2 or req.multiple_of > 1 or req.square:  # Upscaler takes 2 px and more anyway
        notes.append(f"inputs are padded (reflected) to {arch}'s size requirements: at least {req.minimum} px, "
                     f"a multiple of {req.multiple_of}" + (", square" if req.square else ''))
    if descriptor.tiling.name != 'SUPPORTED':
        notes.append(f"spandrel says tiling is {descriptor.tiling.name.lower()} for {arch}: tiles (--max-memory, "
                     f"--tile) may leave seams")
    config = {'architecture': arch, 'scaling_factor': int(descriptor.scale), 'tags': list(descriptor.tags)}
    return CheckpointInfo(arch, arch, config, dict(state), spandrel_spec(descriptor),
                          f"spandrel {spandrel.__version__}: {descriptor.architecture.name}", tuple(notes),
                          SpandrelNetwork(descriptor))


def _suite_info(label, arch, config, state, source, notes, path):
    try:
        spec = models.arch_spec(arch, config)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    return CheckpointInfo(label, arch, dict(config), state, spec, source, tuple(notes))


def _srgan_variant_info(ckpt, path, weights=None):
    """CheckpointInfo of the generator of an SRGAN run of another variant than the tutorial's (train_srgan.py
    --variant, recorded as 'variant'): a models.ARCHS architecture of its own, its weights under its own keys (or
    their moving average, chosen by ``weights`` as for every checkpoint: _select_weights)."""
    variant = ckpt['variant']
    arch = models.SRGAN_VARIANT_ARCHS.get(variant)
    if arch is None:
        raise UserError(f"{path}: unknown SRGAN variant {variant!r} (this version knows "
                        f"{', '.join(['tutorial', *models.SRGAN_VARIANT_ARCHS])})")
    if not ckpt.get('generator_config'):
        raise UserError(f"{path}: an SRGAN checkpoint of variant {variant!r} without its generator_config")
    source = ckpt.get('source') or f"this suite (SRGAN generator, variant {variant})"
    generator, selected, notes = _select_weights(ckpt, 'generator', weights, path)
    return _suite_info(arch, arch, ckpt['generator_config'], strip_prefixes(generator), source, notes,
                       path)._replace(selected=selected)


def _check_assumptions(info, assume, path):
    """A --res-scale / --rgb-range nobody used must agree with what the file says (or be meaningless for it)."""
    for key, value in assume.items():
        flag = '--' + key.replace('_', '-')
        if key not in info.config:
            raise UserError(f"{flag} does not apply to {path}: its {info.arch} has no {key}")
        if info.config[key] != value:
            raise UserError(f"{flag} {value:g}: {path} says {key} {info.config[key]:g} itself (the flag is for "
                            f"published weights that do not say)")


def describe_checkpoint(ckpt, path, *, res_scale=None, rgb_range=None, weights=None):
    """CheckpointInfo of the SR network in a checkpoint of any supported kind (``ckpt``: what utils.load_checkpoint
    read from ``path``, whose format version it checked).

    - this suite's checkpoints (any architecture; SRGAN gives its generator, label 'srgan', with the generator's
      SRResNet weights, or for another recorded 'variant' its own architecture: 'keras' gives 'srgan_keras'), also
      as safetensors, and the tutorial's own SRResNet/SRGAN checkpoints, whose configuration is read off the
      weights;
    - bare state_dicts and BasicSR checkpoints ({'params', 'params_ema'}: EMA preferred), in the layouts of
      EDSR-PyTorch's EDSR / EDSR-baseline, the official RCAN release (the suite's own key names), BasicSR's EDSR,
      RCAN (renamed to the suite's) and MSRResNet (the suite's 'msrresnet'): configuration read off the shapes;
      what the weights do not say (EDSR's res_scale, BasicSR's img_range) follows the official releases unless
      ``res_scale`` / ``rgb_range`` say otherwise, and is stated in ``notes``;
    - anything else spandrel (optional) recognises, as a spandrel network.
    Anything else is a UserError of one line saying what was seen.
    ``weights``: 'ema' or 'raw' for a file that holds an exponential moving average of the weights too (this
    suite's 'model_ema' / 'generator_ema', BasicSR's 'params_ema'), None for the average when there is one; which
    was used is ``selected`` and a note.
    """
    if weights not in (None,) + WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES} or None, not {weights!r}")
    assume = {k: v for k, v in (('res_scale', res_scale), ('rgb_range', rgb_range)) if v is not None}
    notes = []
    if 'generator' in ckpt and ckpt.get('variant', 'tutorial') != 'tutorial':
        info = _srgan_variant_info(ckpt, path, weights)
    elif 'generator' in ckpt:
        generator, selected, ema_notes = _select_weights(ckpt, 'generator', weights, path)
        state = strip_prefixes(generator)
        config = ckpt.get('generator_config') or _srresnet_config(state, 'net.', path)
        state = {k[len('net.'):]: v for k, v in state.items() if k.startswith('net.')}
        source = ckpt.get('source') or ('this suite (SRGAN generator)' if 'generator_config' in ckpt
                                        else "the tutorial's SRGAN generator")
        info = _suite_info('srgan', 'srresnet', config, state, source, ema_notes, path)._replace(selected=selected)
    elif ckpt.get('arch') == 'spandrel' and 'model' in ckpt:
        recorded = (ckpt.get('model_config') or {}).get('architecture')
        model, selected, ema_notes = _select_weights(ckpt, 'model', weights, path)
        info = _spandrel_info(model, path, [], recorded)._replace(selected=selected)
        if ema_notes:  # what was noted when the file was first read (its wrapper, say), not noted twice
            info = info._replace(notes=tuple(ema_notes))
    elif 'model' in ckpt and ('arch' in ckpt or 'model_config' in ckpt or _tutorial_srresnet(ckpt['model'])):
        model, selected, ema_notes = _select_weights(ckpt, 'model', weights, path)
        state = strip_prefixes(model)
        arch = ckpt.get('arch', 'srresnet')
        if arch not in models.ARCHS:
            raise UserError(f"{path}: unknown architecture {arch!r}")
        config = ckpt.get('model_config') or _srresnet_config(state, '', path)
        source = ckpt.get('source') or ('this suite' if 'arch' in ckpt else "the tutorial's SRResNet")
        info = _suite_info(arch, arch, config, state, source, ema_notes, path)._replace(selected=selected)
    else:
        state, wrapper, selected = _unwrap(ckpt, path, weights)
        notes += [wrapper] if wrapper else []
        layout = _layout(state)
        if layout == 'srgan':  # a bare Generator state_dict (net.* keys)
            return describe_checkpoint({'generator': state, 'source': "the tutorial's SRGAN generator",
                                        'notes': notes}, path, res_scale=res_scale,
                                       rgb_range=rgb_range)._replace(selected=selected)
        if layout is None:
            info = _spandrel_info(state, path, notes)
        else:
            arch, config, state, source = _published(state, layout, path, assume, notes)
            info = _suite_info(arch, arch, models.model_config(arch, config.pop('scaling_factor'), **config), state,
                               source, notes, path)
        info = info._replace(selected=selected)
    _check_assumptions(info, assume, path)
    return info


def read_checkpoint(path, *, res_scale=None, rgb_range=None, weights=None):
    """describe_checkpoint of the file at ``path`` (read with utils.load_checkpoint: weights_only or safetensors)."""
    return describe_checkpoint(load_checkpoint(path), path, res_scale=res_scale, rgb_range=rgb_range,
                               weights=weights)


def build_network(info, path):
    """The network of a CheckpointInfo with its weights loaded (strictly), in eval mode, on the CPU."""
    if info.network is not None:
        return info.network.eval()
    try:
        model = models.build_model(info.arch, info.config)
        model.load_state_dict(info.state)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"{path}: weights do not match a {info.arch} with {info.config} "
                        f"({str(e).splitlines()[0][:160]})") from None
    return model.eval()


def load_sr_model(path, device='cpu', expect_scale=None, *, res_scale=None, rgb_range=None, weights=None):
    """Rebuild the SR network recorded in a checkpoint file (any kind describe_checkpoint accepts): a LoadedModel
    (model in eval mode on ``device``).

    ``expect_scale`` turns a scale mismatch into a UserError naming both scales; ``res_scale`` and ``rgb_range``
    set what published weights do not say; ``weights`` picks the EMA ('ema', the default when the file has them)
    or the raw weights ('raw'); see describe_checkpoint.
    """
    info = read_checkpoint(path, res_scale=res_scale, rgb_range=rgb_range, weights=weights)
    scale = int(info.config['scaling_factor'])
    if expect_scale is not None and int(expect_scale) != scale:
        raise UserError(f"{path} was trained for x{scale}, not x{expect_scale}: pass --scale {scale} "
                        f"or a x{expect_scale} checkpoint")
    model = build_network(info, path)
    return LoadedModel(model.to(device).eval(), info.arch, info.config, info.label, info.spec, info.source,
                       info.notes, info.selected)


def suite_checkpoint(info):
    """A CheckpointInfo as a checkpoint of this suite (plain data and a state_dict: utils.save_checkpoint or
    utils.save_safetensors_checkpoint write it; describe_checkpoint reads it back to the same network). A spandrel
    network is recorded as arch 'spandrel' with its canonical weights: spandrel still builds it when it is read."""
    if info.label == 'srgan':
        weights = {'generator': {'net.' + k: v for k, v in info.state.items()}, 'generator_config': info.config}
    else:
        weights = {'model': info.state, 'model_config': info.config}
    arch = info.label if info.label == 'srgan' else 'spandrel' if info.network is not None else info.arch
    return {'format_version': FORMAT_VERSION, 'arch': arch, **weights, 'source': info.source,
            'notes': list(info.notes)}


def convert_legacy_checkpoint(src, dst):
    """Convert a tutorial checkpoint holding whole pickled models into this suite's format.

    This UNPICKLES ``src`` without restrictions, which can execute code: run it only on files you trust.
    """
    ckpt = torch.load(src, map_location='cpu', weights_only=False)
    out = {'format_version': FORMAT_VERSION, 'epoch': int(ckpt.get('epoch', 0))}
    for key in ('model', 'generator', 'discriminator'):
        obj = ckpt.get(key)
        if obj is not None:
            out[key] = strip_prefixes(obj.state_dict() if hasattr(obj, 'state_dict') and not isinstance(obj, dict)
                                      else obj)
    for key in ('optimizer', 'optimizer_g', 'optimizer_d'):
        obj = ckpt.get(key)
        if obj is not None:
            out[key] = obj.state_dict() if hasattr(obj, 'state_dict') else obj
    if 'model' not in out and 'generator' not in out:
        raise UserError(f"{src} holds neither 'model' nor 'generator': not a tutorial checkpoint")
    if 'generator' in out:
        out['arch'] = 'srgan'
        out['generator_config'] = _srresnet_config(out['generator'], 'net.', src)
    else:
        out['arch'] = 'srresnet'
        out['model_config'] = _srresnet_config(out['model'], '', src)
    save_checkpoint(out, dst)
    return out


# ----------------------------------------------------------------------------------------------
# Upscaler: any architecture on RGB images, whole or in tiles, within a memory budget
# ----------------------------------------------------------------------------------------------


def auto_memory_budget(device):
    """The working-memory budget test.py uses for --max-memory auto: on CUDA half of the free device memory,
    elsewhere a quarter of the available RAM, at most 1 GiB (CPU speed hardly depends on the tile size)."""
    device = torch.device(device)
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    available = None
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
        except (AttributeError, ValueError, OSError):
            available = 4 * 2 ** 30
    return int(min(2 ** 30, available // 4))


def tile_starts(length, tile, overlap):
    """Start offsets of windows ``tile`` px long covering [0, length), spread evenly so that neighbours share at
    least ``overlap`` px (one window at 0 when length <= tile). Needs tile > overlap >= 0."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def fit_tile(length, tile, overlap):
    """The window size actually used along an axis: the smallest one that covers ``length`` with as many windows
    as ``tile`` needs, so the recomputed overlap is as small as possible (512 px, tile 256, overlap 16: three
    windows of 182 px instead of three of 256)."""
    if length <= tile:
        return length
    n = math.ceil((length - overlap) / (tile - overlap))
    return min(tile, -(-(length + (n - 1) * overlap) // n))


def _blend_ramp(starts, i, size, length, scale, device):
    """Blending weights (size * scale,) along one axis for window i of size ``size`` LR px at starts[i].

    Where two windows share W LR px (W * scale output px), the outer quarter on each side is ignored (weight 0:
    those pixels saw zero padding instead of their neighbours) and the middle half is a linear cross-fade, so
    the two weights add up to 1. Image borders are not ramped.
    """
    n = size * scale
    pos = torch.arange(n, dtype=torch.float32, device=device) + 0.5  # output pixel centres from the window start
    weight = torch.ones(n, dtype=torch.float32, device=device)
    a = starts[i]
    if i > 0:  # overlap with the previous window: [a, previous end)
        shared = (starts[i - 1] + size - a) * scale
        if shared > 0:
            margin = shared // 4
            weight = torch.minimum(weight, ((pos - margin) / (shared - 2 * margin)).clamp(0, 1))
    if i + 1 < len(starts):  # overlap with the next window: [next start, a + size)
        shared = (a + size - starts[i + 1]) * scale
        if shared > 0:
            margin = shared // 4
            weight = torch.minimum(weight, ((n - pos - margin) / (shared - 2 * margin)).clamp(0, 1))
    return weight


def check_finite_output(out, name, model=None, precision='fp32'):
    """UserError when a network's output ``out`` holds NaN or infinity: the one rule for every pass (Upscaler, and
    eval.py's direct tutorial-protocol call). The message names ``name`` and the likely cause: non-finite weights
    in ``model`` (a diverged training), or an overflow in reduced precision."""
    if math.isfinite(torch.sum(out, dtype=torch.float32).item()):  # NaN and inf survive a sum; no mask is allocated
        return
    if model is not None and any(not bool(torch.isfinite(p).all()) for p in model.state_dict().values()
                                 if torch.is_tensor(p) and p.is_floating_point()):
        cause = "its weights hold NaN/inf values (a diverged training?): use an earlier checkpoint"
    elif precision != 'fp32':
        cause = f"an overflow in {precision}? try --precision fp32"
    else:
        cause = "the network overflowed in fp32 (its weights are finite)"
    raise UserError(f"{name} produced NaN/inf values: {cause}")


def pad_to_requirements(x, spec):
    """x (N, C, h, w) padded at the bottom and right to what spec's network needs (spec.min_size, multiple_of,
    square), by reflection and, where a side is too short to reflect, replication (as spandrel pads); x itself
    when it already fits."""
    h, w = x.shape[-2:]
    th, tw = max(h, spec.min_size), max(w, spec.min_size)
    th, tw = -(-th // spec.multiple_of) * spec.multiple_of, -(-tw // spec.multiple_of) * spec.multiple_of
    if spec.square:
        th = tw = max(th, tw)
    if (th, tw) == (h, w):
        return x
    rh, rw = min(th - h, h - 1), min(tw - w, w - 1)  # reflection repeats no edge pixel: at most side - 1
    x = torch.nn.functional.pad(x, (0, rw, 0, rh), mode='reflect')
    return torch.nn.functional.pad(x, (0, tw - w - rw, 0, th - h - rh), mode='replicate')


class Upscaler:
    """Runs any architecture of the suite (or a spandrel network) on RGB images, hiding its input/output conventions.

    ``arch``: a name in models.ARCHS, or the models.ArchSpec that describes the network (LoadedModel.spec: also
    for EDSR/RCAN in [0, 1] and spandrel networks). Inputs are padded to the spec's size requirements (reflected,
    then replicated where reflection runs out) and the outputs cropped back.

    ``upscale(lr)`` takes (N, 3, h, w) RGB in [0, 1] on any device and returns (sr_rgb, sr_y):
    sr_rgb (N, 3, s*h, s*w) in [0, 1] (float32, unclamped), and for Y-channel models the model's own luma
    (N, s*h, s*w) in [0, 1] (None for RGB models). Y-channel models upscale Cb/Cr with MATLAB bicubic.
    ``upscale_uint8(lr)`` returns the rounded RGB image (N, 3, s*h, s*w) uint8 on the CPU, built tile by tile
    without a full-size float copy. Both take ``progress=callable(done, total)``, called after every tile (a
    whole-image pass is one step), for progress bars.

    Options (keywords; the defaults run the whole image at once in fp32, exactly as before):
      tile: largest LR window side in px: the image is cut into equal windows (as few as this allows, shrunk by
        fit_tile) whose neighbours share at least ``tile_overlap`` LR px; each window's output is weighted by a
        ramp that ignores the outer quarter of each shared strip and cross-fades across the middle half (see
        _blend_ramp), then weights are normalised. The overlap should be about twice the distance at which the
        network stops seeing a pixel (16 suits SRResNet); with 0 the cuts show wherever the network has spatial
        context. Models with global pooling (RCAN's channel attention) see per-window statistics, so their tiled
        output is close to, not equal to, the whole-image one. Y-models tile the whole pipeline (Y through the
        model, Cb/Cr through bicubic); SRCNN's pre-upsampling happens per window, so it sees tile_overlap * scale
        px of upscaled context.
      max_memory: working-memory budget in bytes (or '2GB'): when tile is None and the estimate of a whole-image
        pass (memory_per_pixel() x pixels) exceeds it, the largest tile that fits is chosen. The result buffer
        itself comes on top (4 bytes x 3 x s^2 per LR px for upscale(), 1 byte for upscale_uint8()).
      precision: 'fp32', 'bf16' (CPU or CUDA) or 'fp16' (CUDA or MPS): autocast around the network only ('auto':
        utils.auto_precision's pick, with its reason in ``precision_reason``); the
        input and output conversions stay in fp32.
      self_ensemble: average the outputs of the 8 flips/rotations of the input (EDSR's x8 geometric ensemble).
      channels_last: run the network in channels_last memory format (converts ``model`` in place, or the copy
        made by fuse).
      fuse: run a copy made by models.fuse_for_inference (BatchNorm folded, the last conv on the sub-pixel grid): same
        results up to float rounding; with channels_last, SRResNet x4 runs ~1.9x faster on a CPU.
      name: what the model is called in errors (the checkpoint's path).

    Every pass of the network is checked: an output holding NaN or infinity (NaN weights from a diverged
    training, or an overflow in fp16/bf16) raises UserError naming ``name`` (check_finite_output), instead of
    becoming a black or saturated image.
    """

    def __init__(self, model, arch, scale, device, *, tile=None, tile_overlap=16, max_memory=None,
                 precision='fp32', self_ensemble=False, channels_last=False, fuse=False, name=None):
        spec = arch if isinstance(arch, models.ArchSpec) else models.ARCHS[arch]
        self.model, self.spec, self.scale, self.device = model, spec, int(scale), torch.device(device)
        self.name = name or 'the model'
        if tile is not None and int(tile) < max(self.min_input_size(), 1):
            raise UserError(f"tile {tile} is too small: at least {self.min_input_size()} px")
        if tile_overlap < 0 or (tile is not None and tile_overlap >= tile):
            raise UserError(f"tile overlap {tile_overlap} must be >= 0 and smaller than the tile ({tile})")
        self.tile, self.tile_overlap = (None if tile is None else int(tile)), int(tile_overlap)
        try:
            self.max_memory = parse_memory(max_memory)
        except ValueError as e:
            raise UserError(f"max memory: {e}") from None
        self.precision_reason = None
        if precision == 'auto':
            precision, self.precision_reason = auto_precision(self.device, self.spec.precisions,
                                                                 self.spec.cpu_bf16_pays)
        self.precision = check_precision(precision, self.device)
        if self.precision not in self.spec.precisions:
            raise UserError(f"--precision {self.precision}: {self.spec.name} runs in {', '.join(self.spec.precisions)} "
                            f"only")
        self.self_ensemble, self.channels_last, self.fuse = bool(self_ensemble), bool(channels_last), bool(fuse)
        if self.fuse:
            self.model = models.fuse_for_inference(self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._per_pixel = None

    def min_input_size(self):
        """Smallest LR side the model accepts (the Discriminator-free models accept 1 px; keep 2 for bicubic)."""
        return 2

    # -- the network and its conventions --------------------------------------------------------

    def _net(self, x):
        h, w = x.shape[-2:]
        x = pad_to_requirements(x, self.spec)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            out = self.model(x)
        k = out.shape[-2] // x.shape[-2]  # output px per input px: the scale (1 for SRCNN's pre-upscaled input)
        return out if out.shape[-2:] == (h * k, w * k) else out[..., :h * k, :w * k]

    def _body(self, x):
        """The network on x in its input space; with self_ensemble, the mean over the 8 dihedral transforms."""
        if not self.self_ensemble:
            return self._net(x)
        total = None
        for k in range(4):
            for flip in (False, True):
                t = torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))
                y = torch.rot90(self._net(t).float(), -k, dims=(-2, -1))
                y = y.flip(-1) if flip else y
                total = y.clone() if total is None else total.add_(y)
        return total.div_(8.)

    def _sr(self, lr):
        """One pass over lr (N, 3, h, w) in [0, 1]: (sr_rgb, sr_y or None), as documented for upscale()."""
        lr = lr.to(self.device, torch.float32)  # (N, 3, h, w), in [0, 1]
        out = self._body(model_input(self.spec, lr, self.scale))  # (N, C, s*h, s*w), in spec.out_type
        check_finite_output(out, self.name, self.model, self.precision)
        return model_output(self.spec, out, lr, self.scale)

    def _sr_stacked(self, lr):
        """(N, C, s*h, s*w) float32: RGB, plus the model's luma as a 4th channel for Y-models."""
        sr, sr_y = self._sr(lr)
        return sr if sr_y is None else torch.cat([sr, sr_y[:, None]], dim=1)

    # -- memory estimate and tiling ------------------------------------------------------------------

    def memory_per_pixel(self):
        """Estimated peak working memory (bytes) per LR pixel of a whole-image fp32 pass.

        Measured once: a 16x16 probe runs through the network with forward hooks on every module, which finds the
        largest tensor any module outputs per input pixel (B). While that layer runs, its input, its output and
        a skip tensor may be alive, so the network is charged 3 B per input pixel (SRResNet x4: 3 x 4 KiB, where
        its real peak, the second pixel-shuffle stage, is about 9 KiB). On top: the input conversions, 3 float32
        copies of the output (conversion, weighting, rounding), 2 more with self_ensemble, and for Y-models
        MATLAB bicubic's float64 work space (8 bytes x (6 taps + 2) per upscaled Cb/Cr/Y value).
        """
        if self._per_pixel is None:
            spec, s = self.spec, self.scale
            in_channels = 3 if spec.color == 'rgb' else 1
            sizes = []

            def hook(module, inputs, output):
                if torch.is_tensor(output):
                    sizes.append(output.numel() * 4)

            handles = [m.register_forward_hook(hook) for m in self.model.modules()]
            side = -(-max(16, spec.min_size) // spec.multiple_of) * spec.multiple_of  # a size the network takes
            try:
                with torch.no_grad():
                    self.model(torch.zeros(1, in_channels, side, side, device=self.device))
            finally:
                for h in handles:
                    h.remove()
            inputs_per_lr = s * s if spec.pre_upsample else 1  # model-input px per LR px
            network = 3 * max(sizes) / (side * side) * inputs_per_lr
            out_channels = 3 if spec.color == 'rgb' else 4
            output = 4 * out_channels * s * s * (3 + (2 if self.self_ensemble else 0))
            inputs = 4 * 3 * 3
            bicubic = 0 if spec.color == 'rgb' else 8 * (6 + 2) * s * s * (3 if spec.pre_upsample else 2)
            self._per_pixel = int(math.ceil(network + output + inputs + bicubic))
        return self._per_pixel

    def _tiling_cost(self, n, h, w, tile):
        """Estimated bytes for tiles of ``tile`` px: one window's pass plus the float32 band of output rows."""
        th, tw = fit_tile(h, tile, self.tile_overlap), fit_tile(w, tile, self.tile_overlap)
        s, c = self.scale, 3 if self.spec.color == 'rgb' else 4
        window = n * th * tw * (self.memory_per_pixel() + 4 * c * s * s)
        band = (2 * n * c + 1) * th * s * w * s * 4
        return window + band

    def plan_tile(self, n, h, w):
        """Tile side (LR px) for a batch of n h x w images, or None for a whole-image pass: ``tile`` when given;
        else None when there is no max_memory or the whole-image estimate fits it; else the largest tile (a
        multiple of 8) whose estimate fits, never below 2 * overlap + 16 (with a warning when even that does not)."""
        if self.tile is not None:
            return self.tile
        if self.max_memory is None or n * h * w * self.memory_per_pixel() <= self.max_memory:
            return None
        smallest = 2 * self.tile_overlap + 16
        best = None
        for t in range(max(h, w) // 8 * 8, smallest - 1, -8):
            if self._tiling_cost(n, h, w, t) <= self.max_memory:
                best = t
                break
        if best is None:
            best = smallest
            warnings.warn(f"max_memory {self.max_memory} bytes is too small for this model: using the smallest "
                          f"tile ({smallest} px), which needs about {self._tiling_cost(n, h, w, smallest)} bytes")
        return best

    def _tiled(self, lr, tile, sink, progress=None):
        """Run the model over overlapping windows of lr (N, 3, h, w) and blend them. Finished output rows go to
        ``sink(row0, rows)`` with rows (N, C, r, s*w) float32 (C = 3, or 4 with the Y-model's luma last); only one
        band of output rows (one window high) is held in float32 at a time. ``progress(done, total)`` is called
        after each window."""
        n, _, h, w = lr.shape
        s, c, overlap = self.scale, 3 if self.spec.color == 'rgb' else 4, self.tile_overlap
        th, tw = fit_tile(h, tile, overlap), fit_tile(w, tile, overlap)
        ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
        wx = [_blend_ramp(xs, j, tw, w, s, self.device) for j in range(len(xs))]
        band_top, band, weights, windows = 0, None, None, len(ys) * len(xs)
        for i, y0 in enumerate(ys):
            wy = _blend_ramp(ys, i, th, h, s, self.device)
            bottom = (y0 + th) * s
            new_band = torch.zeros(n, c, bottom - band_top, w * s, device=self.device)
            new_weights = torch.zeros(bottom - band_top, w * s, device=self.device)
            if band is not None:
                new_band[:, :, :band.shape[2]] = band
                new_weights[:weights.shape[0]] = weights
            band, weights = new_band, new_weights
            r0 = y0 * s - band_top
            for j, x0 in enumerate(xs):
                out = self._sr_stacked(lr[:, :, y0:y0 + th, x0:x0 + tw])  # (N, C, th*s, tw*s)
                wt = wy[:, None] * wx[j][None, :]
                band[:, :, r0:r0 + th * s, x0 * s:(x0 + tw) * s].addcmul_(out, wt)
                weights[r0:r0 + th * s, x0 * s:(x0 + tw) * s] += wt
                del out
                if progress is not None:
                    progress(i * len(xs) + j + 1, windows)
            done = ys[i + 1] * s if i + 1 < len(ys) else h * s  # rows above the next window row are final
            k = done - band_top
            sink(band_top, band[:, :, :k].div_(weights[:k]))
            band, weights, band_top = band[:, :, k:].clone(), weights[k:].clone(), done

    # -- public API --------------------------------------------------------------------------------

    @torch.no_grad()
    def upscale(self, lr, progress=None):
        """(sr_rgb, sr_y) of lr (N, 3, h, w) RGB in [0, 1], as the class documents. ``progress(done, total)`` is
        called after each tile (total = the number of tiles; a whole-image pass is one step)."""
        n, _, h, w = lr.shape
        tile = self.plan_tile(n, h, w)
        if tile is None:
            result = self._sr(lr)
            if progress is not None:
                progress(1, 1)
            return result
        s, c = self.scale, 3 if self.spec.color == 'rgb' else 4
        out = torch.empty(n, c, h * s, w * s, device=self.device)

        def sink(row, rows):
            out[:, :, row:row + rows.shape[2]] = rows

        self._tiled(lr, tile, sink, progress)
        return (out, None) if c == 3 else (out[:, :3], out[:, 3])

    @torch.no_grad()
    def upscale_uint8(self, lr, progress=None):
        """lr (N, 3, h, w) RGB in [0, 1] -> (N, 3, s*h, s*w) uint8 RGB on the CPU (clamped, rounded half up).
        ``progress(done, total)`` as for upscale()."""
        n, _, h, w = lr.shape
        s = self.scale
        out = torch.empty(n, 3, h * s, w * s, dtype=torch.uint8)

        def sink(row, rows):  # rows (N, C, r, s*w) float32 on the device: round in slices of 256 rows
            for r in range(0, rows.shape[2], 256):
                part = rows[:, :3, r:r + 256]
                out[:, :, row + r:row + r + part.shape[2]] = to_uint8(part).cpu()

        tile = self.plan_tile(n, h, w)
        if tile is None:
            sink(0, self._sr(lr)[0])
            if progress is not None:
                progress(1, 1)
        else:
            self._tiled(lr, tile, sink, progress)
        return out


# ----------------------------------------------------------------------------------------------
# The papers' protocol on one image (eval.py, and validation while training)
# ----------------------------------------------------------------------------------------------


def standard_protocol(upscaler, hr, scale, gray=False):
    """The papers' protocol on one image. hr: (3, H, W) uint8 RGB (a grey file as R = G = B).

    HR is mod-cropped (top-left); LR = MATLAB bicubic 1/scale, in uint8; SR = model(LR) rounded to uint8; both
    are reduced to rounded BT.601 luma (Y-channel models: their own Y output, rounded). Grey files (gray=True)
    are their own Y: HR's grey value, and SR's grey value (round(0.299 R + 0.587 G + 0.114 B)).
    Returns (sr_y, hr_y, sr_rgb_uint8): float64 (H', W') luma with integer values, and the SR image.
    """
    hr = modcrop(hr, scale)  # (3, H', W'), uint8
    lr = imresize(hr, 1. / scale)  # (3, H' / s, W' / s), uint8
    sr, sr_y = upscaler.upscale(lr.unsqueeze(0).float() / 255.)  # (1, 3, H', W') in [0, 1]
    sr_u8 = to_uint8(sr[0]).cpu()  # (3, H', W')
    if gray:
        return gray_uint8(sr_u8), gray_uint8(hr), sr_u8
    y = torch.floor(sr_y[0].double().clamp(0, 1).cpu() * 255. + 0.5) if sr_y is not None else rgb_to_y_uint8(sr_u8)
    return y, rgb_to_y_uint8(hr), sr_u8


def validate_psnr(upscaler, hr_images, scale):
    """Mean standard-protocol PSNR (Y, border = scale) over (3, H, W) uint8 images; model in eval mode."""
    values = []
    for hr in hr_images:
        sr_y, hr_y, _ = standard_protocol(upscaler, hr, scale)
        values.append(psnr(sr_y, hr_y, border=scale))
    return sum(values) / len(values)


# ----------------------------------------------------------------------------------------------
# One graph for deployment: the network with its conventions inside (export.py writes it as ONNX)
# ----------------------------------------------------------------------------------------------


class RGBNetwork(torch.nn.Module):
    """``network`` with the conventions Upscaler applies around it, in one module: (N, 3, h, w) RGB in [0, 1] ->
    (N, 3, s*h, s*w) RGB in [0, 1], clamped. Value-range conversions for RGB models; for Y-channel models the BT.601
    conversion, SRCNN's bicubic pre-upscaling and the bicubic Cb/Cr, with utils.imresize_up (MATLAB's bicubic as
    convolutions). Only ops that torch.onnx exports with dynamic height and width; on one whole image it computes
    what Upscaler computes, up to float rounding. Inputs of at least 2 px; no padding inside, so not for networks with
    other size requirements (spandrel's SwinIR, HAT...)."""

    def __init__(self, network, spec, scale):
        super().__init__()
        if spec.min_size > 2 or spec.multiple_of > 1 or spec.square:  # the graph takes 2 px and more
            raise ValueError(f"{spec.name} needs its input padded (to at least {spec.min_size} px, a multiple of "
                             f"{spec.multiple_of}{', square' if spec.square else ''}), which this graph does not do")
        self.network, self.spec, self.scale = network, spec, int(scale)

    def forward(self, lr):
        x = model_input(self.spec, lr, self.scale, resize=imresize_up)  # in the network's input space
        sr, _ = model_output(self.spec, self.network(x), lr, self.scale, resize=imresize_up)  # (N, 3, s*h, s*w)
        return sr.clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Videos: every frame through an Upscaler, the timing kept, the audio copied (PyAV)
# ----------------------------------------------------------------------------------------------

VIDEO_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.mkv', '.webm', '.avi', '.mpg', '.mpeg', '.ts', '.mts', '.m2ts',
                    '.flv', '.wmv', '.ogv', '.3gp')
# Output containers: these keep the input's; any other input is written as Matroska, which holds H.264 and nearly
# every audio codec (WebM cannot hold H.264, AVI and MPEG-TS hold its timing badly).
VIDEO_MUXERS = {'.mp4': 'mp4', '.m4v': 'ipod', '.mov': 'mov', '.mkv': 'matroska'}
MUXER_OPTIONS = {'mp4': {'movflags': '+faststart'}, 'ipod': {'movflags': '+faststart'},
                 'mov': {'movflags': '+faststart'}}  # the index first: plays while it downloads
# FFmpeg's demuxers and decoders say 'partial file', 'File ended prematurely', 'Invalid NAL unit size' at this
# level and still hand out what they could read: logged errors count as damage (with frame-count and duration
# checks behind them).
_FFMPEG_ERROR = av.logging.ERROR


def is_video_file(path):
    """True for a file test.py treats as a video: a video extension (VIDEO_EXTENSIONS, any letter case), or an
    extension of neither kind on a file that Pillow cannot open and PyAV opens as a moving-picture container."""
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTENSIONS:
        return True
    if ext in IMAGE_EXTENSIONS or not os.path.isfile(path):
        return False
    try:
        with Image.open(path):
            return False  # any image Pillow reads stays an image (GIF, PPM, ...), as before
    except Exception:  # Pillow raises many types for what it cannot read
        pass
    try:
        with av.open(path, metadata_errors='ignore') as container:
            name = container.format.name  # FFmpeg also 'plays' stills and text files (image2, *_pipe, tty)
            still = name in ('image2', 'tty') or name.endswith('_pipe')
            return not still and _main_video_stream(container) is not None
    except (av.error.FFmpegError, OSError, ValueError):
        return False


def video_output_path(src, output_dir, label):
    """Where test.py writes the upscaled video: <output_dir>/<stem>_<label><ext>, ext the input's when it is
    .mp4 .m4v .mov or .mkv, else .mkv (see VIDEO_MUXERS)."""
    stem, ext = os.path.splitext(os.path.basename(src))
    return os.path.join(output_dir, f"{stem}_{label}{ext.lower() if ext.lower() in VIDEO_MUXERS else '.mkv'}")


class VideoInfo(NamedTuple):
    """What probe_video reads from a file's header: frame size, frame rate (a Fraction), the number of frames the
    header states (None when it states none), the video's duration in seconds (None when unknown), the
    container's name and the codecs of the video and of its audio streams."""
    width: int
    height: int
    fps: object
    frames: object
    duration: object
    container: str
    codec: str
    audio: tuple

    @property
    def expected_frames(self):
        """The header's frame count, else duration x frame rate (an estimate, for progress bars), else None."""
        return self.frames or (round(self.duration * self.fps) if self.duration else None)


def _main_video_stream(container):
    """The first video stream that is not an attached picture (cover art), or None."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _stream_duration(stream):
    """The video stream's duration in seconds from the header: stream.duration (mp4), else Matroska's DURATION
    tag (which is the stream's end time); None when neither is there."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get('DURATION')
    if tag:
        try:
            hours, minutes, seconds = tag.split(':')
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            pass
    return None


def _video_info(container, stream):
    cc = stream.codec_context
    fps = stream.average_rate or stream.guessed_rate or stream.base_rate
    audio = tuple(a.codec_context.name for a in container.streams.audio)
    return VideoInfo(cc.width, cc.height, fps, stream.frames or None, _stream_duration(stream),
                     container.format.name, cc.name, audio)


def _why(error):
    return getattr(error, 'strerror', None) or str(error).splitlines()[0][:120] or type(error).__name__


def probe_video(path):
    """VideoInfo of a video file; UserError (one line) when it is missing, not a video PyAV can read, or has no
    video stream. Reads the header only."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with av.open(path, metadata_errors='ignore') as container:
            stream = _main_video_stream(container)
            if stream is None:
                raise UserError(f"{path}: no video stream in this file")
            info = _video_info(container, stream)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable video ({_why(e)})") from None
    if not (info.width and info.height and info.fps):
        raise UserError(f"{path}: the video stream has no frame size or frame rate")
    return info


class VideoResult(NamedTuple):
    """What upscale_video did: frames written, input and output sizes, seconds in all and in the model, audio
    packets copied, and warnings (one line each)."""
    frames: int
    in_size: tuple
    out_size: tuple
    seconds: float
    model_seconds: float
    audio_packets: int
    warnings: tuple


def _encoder():
    """'libx264' where PyAV's FFmpeg has it (its wheels do), else 'mpeg4' (FFmpeg's own MPEG-4 Part 2)."""
    try:
        av.codec.Codec('libx264', 'w')
        return 'libx264'
    except (av.error.FFmpegError, ValueError):
        return 'mpeg4'


def _check_ffmpeg_log(log, names, src):
    """UserError for an error that FFmpeg logged from the input's demuxer or decoder (damage it read past)."""
    for entry in log:
        level, name, message = entry[0], entry[1], entry[2]
        if level <= _FFMPEG_ERROR and name in names:
            raise UserError(f"{src}: corrupt or truncated video ({name}: {message.strip()})")


def _frame_tensor(frame):
    """Decoded frame -> (1, 3, h, w) float32 RGB in [0, 1], converted with the frame's own matrix and range."""
    rgb = frame.to_ndarray(format='rgb24', src_color_range=frame.color_range)  # (h, w, 3) uint8
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.)


def video_tags(path):
    """The container-level metadata tags of a video file ({} when it has none or cannot be read)."""
    try:
        with av.open(path, metadata_errors='ignore') as container:
            return dict(container.metadata or {})
    except (av.error.FFmpegError, OSError, ValueError):
        return {}


def upscale_video(upscaler, src, dst, *, crf=18, preset='medium', progress=None, tags=None):
    """Upscale every frame of the video ``src`` with ``upscaler`` (tiling and memory budget apply per frame) into
    ``dst``: H.264 (libx264, yuv420p, ``crf``, ``preset``; FFmpeg's mpeg4 where libx264 is missing), every frame at
    its own timestamp in the input's time base (constant and variable frame rates and start offsets survive), the
    audio streams copied packet for packet (no re-encoding); subtitle and data streams are dropped. The container
    follows dst's extension (VIDEO_MUXERS).

    yuv420p needs even sizes: an odd output side loses its last row or column (a warning says so). The colour
    matrix and range of the input are used to decode and to encode, and tagged on the output.
    ``progress(done, total)`` is called after every frame (total: VideoInfo.expected_frames, or None); ``tags``
    ({key: text}) are written as the output container's metadata.

    A damaged input (unreadable header, a decoding error, an error logged by FFmpeg's demuxer or decoder, a frame
    flagged corrupt, or clearly fewer frames or seconds than the header promises) raises UserError; dst is
    written atomically (utils.atomic_path), so any failure, Ctrl-C included, leaves no partial file and an
    existing dst as it was.
    """
    info = probe_video(src)
    ext = os.path.splitext(dst)[1].lower()
    if ext not in VIDEO_MUXERS:
        raise UserError(f"{dst}: write videos as {', '.join(VIDEO_MUXERS)}")
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise UserError(f"{dst}: the output would overwrite the input")
    s, encoder, warned = upscaler.scale, _encoder(), []
    width, height = info.width * s - info.width * s % 2, info.height * s - info.height * s % 2
    if (width, height) != (info.width * s, info.height * s):
        warned.append(f"{src}: output cropped to {width}x{height} px (x{s} is {info.width * s}x{info.height * s}; "
                      f"yuv420p needs even sizes)")
    if encoder != 'libx264':
        warned.append(f"libx264 is not in this FFmpeg build: encoding with {encoder} (larger files)")
    options = {'crf': str(crf), 'preset': preset} if encoder == 'libx264' else {'qscale': '2'}
    start, model_seconds, frames, audio_packets = timer(), 0., 0, 0
    level = av.logging.get_level()
    av.logging.set_level(_FFMPEG_ERROR)  # PyAV keeps FFmpeg silent by default: its error lines are evidence here
    try:
        with av.logging.Capture(local=False) as log, atomic_path(dst) as tmp, \
                av.open(src, metadata_errors='ignore') as inp, \
                av.open(tmp, 'w', format=VIDEO_MUXERS[ext], options=MUXER_OPTIONS.get(VIDEO_MUXERS[ext], {})) as out:
            out.metadata.update(tags or {})
            ivs = _main_video_stream(inp)
            ivs.thread_type = 'AUTO'
            names = {inp.format.name, ivs.codec_context.name}
            ovs = out.add_stream(encoder, rate=info.fps, options=options)
            ovs.width, ovs.height, ovs.pix_fmt = width, height, 'yuv420p'
            ovs.time_base = ovs.codec_context.time_base = ivs.time_base  # the input's pts values, as they are
            for attr in ('colorspace', 'color_range', 'color_primaries', 'color_trc'):
                setattr(ovs.codec_context, attr, getattr(ivs.codec_context, attr))
            audio = {}
            for ias in inp.streams.audio:
                if ias.codec_context.name not in out.supported_codecs:
                    raise UserError(f"{src}: its {ias.codec_context.name} audio cannot be copied into {ext}: "
                                    f"write .mkv")
                audio[ias] = out.add_stream_from_template(ias)
            dropped = len(inp.streams) - len(audio) - len(inp.streams.video)
            if dropped:
                warned.append(f"{src}: {dropped} subtitle, data or attachment stream(s) not copied")
            last_pts, last_time = None, None
            for packet in inp.demux(ivs, *audio):
                if packet.stream is not ivs:
                    if packet.dts is not None:  # the demuxer's final empty packets carry nothing
                        packet.stream = audio[packet.stream]
                        out.mux(packet)
                        audio_packets += 1
                    continue
                try:
                    decoded = packet.decode()
                except (av.error.FFmpegError, ValueError) as e:
                    raise UserError(f"{src}: corrupt video data near frame {frames} ({_why(e)})") from None
                for frame in decoded:
                    _check_ffmpeg_log(log, names, src)
                    if frame.is_corrupt:
                        raise UserError(f"{src}: corrupt video frame {frames} (at {frame.time} s)")
                    if (frame.width, frame.height) != (info.width, info.height):
                        raise UserError(f"{src}: the frame size changes from {info.width}x{info.height} to "
                                        f"{frame.width}x{frame.height} at frame {frames}; not supported")
                    t0 = timer()
                    sr = upscaler.upscale_uint8(_frame_tensor(frame))[0, :, :height, :width]  # (3, H, W) uint8
                    model_seconds += timer() - t0
                    rgb = np.ascontiguousarray(sr.permute(1, 2, 0).numpy())  # (H, W, 3)
                    encoded = av.VideoFrame.from_ndarray(rgb, format='rgb24').reformat(
                        format='yuv420p', dst_colorspace=frame.colorspace, dst_color_range=frame.color_range)
                    pts = frame.pts
                    if pts is None or (last_pts is not None and pts <= last_pts):  # no or repeated stamps (AVI)
                        pts = 0 if last_pts is None else last_pts + max(1, round(1 / (info.fps * ivs.time_base)))
                    encoded.pts, encoded.time_base = pts, ivs.time_base
                    out.mux(ovs.encode(encoded))
                    frames, last_pts, last_time = frames + 1, pts, float(pts * ivs.time_base)
                    if progress is not None:
                        progress(frames, info.expected_frames)
            out.mux(ovs.encode())  # the frames the encoder still holds
            _check_ffmpeg_log(log, names, src)
            _check_complete(src, info, frames, last_time)
    except (av.error.FFmpegError, OSError) as e:
        raise UserError(f"{src}: video failed ({_why(e)}); nothing written to {dst}") from None
    finally:
        av.logging.set_level(level)
    return VideoResult(frames, (info.width, info.height), (width, height), timer() - start, model_seconds,
                       audio_packets, tuple(warned))


def _check_complete(src, info, frames, last_time):
    """UserError when clearly less of the video was decoded than its header promises. Lenient: a frame or two
    (2%) short, or a stream end time (Matroska's DURATION tag) that includes a start offset, are not damage."""
    if frames == 0:
        raise UserError(f"{src}: no decodable video frame")
    if info.frames and info.frames - frames > max(2, info.frames // 50):
        raise UserError(f"{src}: truncated: {frames} of {info.frames} frames decoded")
    if info.duration and last_time is not None:
        covered = last_time + 1 / float(info.fps)  # the end of the last frame, measured from t = 0
        if covered < info.duration - max(2 / float(info.fps), 0.02 * info.duration):
            raise UserError(f"{src}: truncated: {covered:.2f} s of {info.duration:.2f} s decoded")
