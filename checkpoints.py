"""Checkpoints: the suite's file format (plain data and state_dicts, written atomically, read with weights_only or as
safetensors), and every kind of checkpoint the suite reads turned into one ModelDescription: this suite's files, the
tutorial's, EDSR-PyTorch's, the official RCAN release's, BasicSR's, and whatever spandrel recognises.

    import checkpoints
    model = checkpoints.load_sr_model('results/espcn_x3_t91.pth', 'cpu')   # a ModelDescription
    model.network, model.spec, model.scale, model.label, model.notes     # what the scripts use
    ckpt = checkpoints.load_checkpoint('results/checkpoint_srresnet.pth')  # the raw dict (training's resume)

Imports utils and models only.
"""
import json
import os
import re
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

import models
from utils import UserError, atomic_write

# ----------------------------------------------------------------------------------------------
# The file format: state_dicts and plain data only, written atomically, loaded safely
# ----------------------------------------------------------------------------------------------

FORMAT_VERSION = 1

USER_CHECKPOINT = os.path.join('results', 'checkpoint_srresnet.pth')  # what train_srresnet.py writes by default
SHIPPED_MODEL = 'srresnet_x4_291.pth'  # the primary model: the tutorial's SRResNet x4, trained on T91 + BSD200
# The shipped x4 models by the inputs they are for (test.py --model, the web page's hints): file, what it suits.
SHIPPED_MODELS = {
    'clean': (SHIPPED_MODEL, "clean images (renders, screenshots, PNGs, photos downscaled without loss): trained on "
                             "bicubic-downscaled images"),
    'photo': ('srresnet_x4_real.pth', "photos as people have them (phone JPEGs, scans, noise, blur): the same "
                                      "SRResNet fine-tuned on Real-ESRGAN's degradations"),
}


def shipped_checkpoint(name=SHIPPED_MODEL):
    """The path of a checkpoint shipped in the repository's results/ folder, wherever a script runs from."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', name)


def shipped_model(kind):
    """The path of the shipped x4 model for ``kind`` ('clean' or 'photo', SHIPPED_MODELS); UserError when missing."""
    name, _ = SHIPPED_MODELS[kind]
    path = shipped_checkpoint(name)
    if not os.path.isfile(path):
        raise UserError(f"--model {kind}: the shipped results/{name} is missing (a clone without it?): pass "
                        f"--checkpoint FILE")
    return path


def shipped_hint(path):
    """What a shipped model suits, in words (SHIPPED_MODELS), or None for any other file."""
    for kind, (name, suits) in SHIPPED_MODELS.items():
        if os.path.basename(path) == name:
            return f"'{kind}' model, for {suits}"
    return None


def default_checkpoint(log=print):
    """The checkpoint a script uses when not given one: the user's own trained SRResNet, results/checkpoint_srresnet.pth
    (where train_srresnet.py writes it, from the working directory) when it exists, else the shipped SRResNet x4.
    ``log`` gets one line saying which; a UserError when neither exists."""
    if os.path.isfile(USER_CHECKPOINT):
        log(f"checkpoint: {USER_CHECKPOINT} (your own SRResNet; --checkpoint picks another)")
        return USER_CHECKPOINT
    shipped = shipped_checkpoint()
    if os.path.isfile(shipped):
        shown = os.path.relpath(shipped)
        shown = shipped if shown.startswith('..') else shown
        log(f"checkpoint: {shown} (the shipped SRResNet x4: there is no {USER_CHECKPOINT} of your own; "
            f"--checkpoint picks another)")
        return shipped
    raise UserError(f"no checkpoint: {USER_CHECKPOINT} (train_srresnet.py writes it) and the shipped "
                    f"results/{SHIPPED_MODEL} are both missing; pass --checkpoint FILE")


WRAPPER_PREFIXES = ('module.', '_orig_mod.')


def strip_prefixes(state_dict):
    """Remove DataParallel/DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes from state_dict keys."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def save_checkpoint(state, path):
    """torch.save ``state`` (state_dicts and plain data only) atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


LEGACY_HELP = ("if it is the tutorial's old format (whole pickled models) and you trust its source, convert it "
               "once with: python eval.py --convert-legacy {path} NEW.pth")


# The modules whose classes the tutorial pickled whole into its checkpoints (its models.py, torch's modules and
# optimizers): only a file refused for one of these is its old format, and only that one is told of the converter.
LEGACY_GLOBALS = ('models.', 'torch.', '__main__.SRResNet', '__main__.Generator', '__main__.Discriminator')


# The suite's checkpoints as safetensors (export.py --format safetensors): the network's weights, and as metadata
# (strings): format 'sr-suite', format_version, arch, weights ('model', or 'generator' for an SRGAN generator whose
# keys start with 'net.'), config (JSON: the constructor configuration), scaling_factor, and where present source
# (where the weights came from), notes (JSON list: what was read off or assumed) and label (the model's name in
# output file names when not its architecture's, as srresnet_real), plus free-form descriptions
# (input, output) that are not read back. safetensors holds tensors and strings only: nothing in it can run code.
SAFETENSORS_FORMAT = 'sr-suite'


def is_safetensors_file(path):
    """True when the file starts as safetensors do: an 8-byte little-endian header length, then a JSON object."""
    with open(path, 'rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{' and 0 < int.from_bytes(head[:8], 'little') < 100 * 2 ** 20


def save_safetensors_checkpoint(ckpt, path, descriptions=None):
    """Write the network of a checkpoint of this suite (``format_version``, ``arch``, ``model`` and ``model_config``
    or ``generator`` and ``generator_config``, optional ``source`` and ``notes``) as a safetensors file, atomically;
    ``descriptions``: extra metadata strings for people and other tools (not read back)."""
    weights = 'generator' if 'generator' in ckpt else 'model'
    config = ckpt[weights + '_config']
    metadata = {'format': SAFETENSORS_FORMAT, 'format_version': str(ckpt.get('format_version', FORMAT_VERSION)),
                'arch': str(ckpt['arch']), 'weights': weights, 'config': json.dumps(config),
                'scaling_factor': str(config['scaling_factor'])}
    if ckpt.get('source'):
        metadata['source'] = str(ckpt['source'])
    if ckpt.get('notes'):
        metadata['notes'] = json.dumps(list(ckpt['notes']))
    if ckpt.get('label'):
        metadata['label'] = str(ckpt['label'])
    metadata.update({k: str(v) for k, v in (descriptions or {}).items()})
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt[weights].items()}  # clone: no shared storage
    atomic_write(path, lambda f: f.write(safetensors_bytes(tensors, metadata)))


def _load_safetensors(path, map_location):
    """A safetensors file as a checkpoint: this suite's (see SAFETENSORS_FORMAT) rebuilt into the dict a .pth file
    holds; anyone else's returned as its bare state_dict (tensors)."""
    device = map_location if isinstance(map_location, (str, torch.device)) else 'cpu'
    try:
        with safe_open(path, framework='pt', device=str(device)) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120]})") from None
    if metadata.get('format') != SAFETENSORS_FORMAT:
        return tensors
    try:
        weights = metadata['weights']
        ckpt = {'format_version': int(metadata['format_version']), 'arch': metadata['arch'], weights: tensors,
                weights + '_config': json.loads(metadata['config'])}
        if 'source' in metadata:
            ckpt['source'] = metadata['source']
        if 'notes' in metadata:
            ckpt['notes'] = json.loads(metadata['notes'])
        if 'label' in metadata:
            ckpt['label'] = metadata['label']
    except (KeyError, ValueError) as e:
        raise UserError(f"{path}: the safetensors metadata of this suite is incomplete or malformed ({e})") from None
    if weights not in ('model', 'generator'):
        raise UserError(f"{path}: the safetensors metadata names {weights!r} weights, not 'model' or 'generator'")
    return ckpt


def load_checkpoint(path, map_location='cpu'):
    """Load a checkpoint with ``weights_only=True``: tensors and plain data only, nothing is executed. A safetensors
    file (recognised by its content) is read with safetensors: this suite's come back as the dict a .pth holds.

    A file that needs arbitrary unpickling (pickled modules, or a payload that would run code) is refused
    with UserError; so are missing files and files that are not checkpoints.
    """
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path}: no such file" + (" (it is a directory)" if os.path.isdir(path) else ""))
    if is_safetensors_file(path):
        ckpt = _load_safetensors(path, map_location)
        return _check_format_version(ckpt, path)
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty (0 bytes), not a checkpoint: an interrupted copy or download? Copy it "
                        f"again")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        text = str(e)
        refused = re.search(r'GLOBAL ([\w.]+)', text)
        if refused and refused.group(1).startswith(LEGACY_GLOBALS):
            raise UserError(f"refusing to load {path}: it needs arbitrary unpickling, which can run code; "
                            + LEGACY_HELP.format(path=path)) from None
        if refused:
            raise UserError(f"refusing to load {path}: it needs arbitrary unpickling, which can run code (it names "
                            f"{refused.group(1)}, not a class of the tutorial's checkpoints); not a checkpoint to "
                            f"trust") from None
        first_line = (text.strip().splitlines() or [''])[0][:120]
        if 'weights_only' in text:  # torch's advice to unpickle does not apply to a damaged file
            found = re.search(r'Unsupported operand \d+|[^\n]*(?:load key|truncated|EOF)[^\n]*', text)
            first_line = found.group(0).strip()[:120] if found else ''
        raise UserError(f"{path} is not a readable checkpoint: corrupt, or not a checkpoint ({type(e).__name__}"
                        + (f": {first_line})" if first_line else ")")) from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} is not a checkpoint of this suite (it holds a {type(ckpt).__name__})")
    return _check_checkpoint_fields(_check_format_version(ckpt, path), path)


# Fields of this suite's checkpoints (and the tutorial's) and what each must hold: load_checkpoint refuses a file
# where one holds anything else, so no reader (test.py, eval.py, export.py, --resume) meets it half-way through.
STATE_DICT_FIELDS = ('model', 'generator', 'discriminator')


DICT_FIELDS = ('optimizer', 'optimizer_g', 'optimizer_d', 'scheduler', 'scaler', 'rng', 'args', 'model_config',
               'generator_config', 'discriminator_config')


INT_FIELDS = ('epoch', 'resume_step', 'step')


def _check_checkpoint_fields(ckpt, path):
    """UserError naming the first field of ``ckpt`` that does not hold what this suite writes there (a bare
    state_dict, all tensors, has none of these fields)."""
    if all(torch.is_tensor(v) for v in ckpt.values()):
        return ckpt
    for key in STATE_DICT_FIELDS:
        value = ckpt.get(key)
        if key in ckpt and not (isinstance(value, dict) and all(isinstance(k, str) and torch.is_tensor(v)
                                                                for k, v in value.items())):
            raise UserError(f"{path} is corrupt or not a checkpoint of this suite: its {key!r} is a "
                            f"{type(value).__name__}, not a state_dict of tensors")
    for key in DICT_FIELDS:
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            raise UserError(f"{path} is corrupt or not a checkpoint of this suite: its {key!r} is a "
                            f"{type(ckpt[key]).__name__}, not a dict")
    for key in INT_FIELDS:
        if key in ckpt and (isinstance(ckpt[key], bool) or not isinstance(ckpt[key], int) or ckpt[key] < 0):
            raise UserError(f"{path} is corrupt or not a checkpoint of this suite: its {key!r} is {ckpt[key]!r}, "
                            f"not a count")
    return ckpt


def _check_format_version(ckpt, path):
    version = ckpt.get('format_version', 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise UserError(f"{path} is corrupt or not a checkpoint of this suite: its format_version is {version!r}, "
                        f"not a version number")
    if version > FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format version {version}; this suite reads up to "
                        f"{FORMAT_VERSION}: update the suite")
    return ckpt


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


class ModelDescription(NamedTuple):
    """A network read from a checkpoint of any kind the suite reads, with everything the rest of the suite needs to know
    about it: the one thing describe_checkpoint and load_sr_model return, and what Upscaler (its spec), validation,
    eval.py, export.py, test.py and app.py take.

    network: the module with its weights loaded (strictly), in eval mode, on the device it was loaded for (the CPU
      unless load_sr_model was told another); a spandrel network as SpandrelNetwork. None only in what
      describe_checkpoint returns for a models.ARCHS architecture, before build_network.
    spec: models.ArchSpec, how to feed the network (value ranges, RGB or Y channel, size requirements, precisions):
      models.arch_spec of arch and config (EDSR/RCAN with rgb_range 1 take [0, 1]), spandrel_spec for spandrel's.
    scale: the upscaling factor (config['scaling_factor']).
    label: its name in file names and reports ('srgan' for an SRGAN generator, spandrel's architecture id such as
      'ESRGAN' for a spandrel file, else arch).
    arch: a name in models.ARCHS ('srresnet' for an SRGAN generator), or spandrel's architecture id.
    config: constructor keywords for models.build_model; for spandrel files {'architecture', 'scaling_factor',
      'tags'} (spandrel reads the rest off the weights again).
    state: the weights as read, under the key names ``arch`` uses (converted from the publishing project's names):
      what export.py writes, --init-from and SRGAN's warm start load. On the CPU it shares the network's tensors
      wherever their dtype is the same (no second copy).
    source: where the weights come from, in words.
    notes: what was read off the weights and what was assumed, one sentence each (the scripts print them).
    selected: 'ema' or 'raw' when the file holds an exponential moving average of the weights (this suite's
      'model_ema' / 'generator_ema', BasicSR's 'params_ema') and which of them the network has; None when it holds
      one set of weights only.
    path: the file it was read from (what errors name).
    """
    network: torch.nn.Module
    spec: models.ArchSpec
    scale: int
    label: str
    arch: str
    config: dict
    state: dict
    source: str
    notes: tuple = ()
    selected: str = None
    path: str = None

    @property
    def is_spandrel(self):
        """True for a network spandrel built (recorded as arch 'spandrel' by suite_checkpoint)."""
        return isinstance(self.network, SpandrelNetwork)

    def to(self, device):
        """The same description with its network on ``device`` (eval mode)."""
        return self._replace(network=self.network.to(device).eval())


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
    without 'module.' / '_orig_mod.' / 'netG.' prefixes; ``selected`` as in ModelDescription. UserError when there
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
    """ModelDescription of weights only spandrel can build (ESRGAN, Real-ESRGAN Compact, SwinIR, HAT, ...), its
    network built; ``recorded``: the architecture id a converted file records (checked)."""
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
    return ModelDescription(SpandrelNetwork(descriptor), spandrel_spec(descriptor), int(descriptor.scale), arch, arch,
                            config, dict(state), f"spandrel {spandrel.__version__}: {descriptor.architecture.name}",
                            tuple(notes), path=path)


def _suite_info(label, arch, config, state, source, notes, path):
    """ModelDescription of a models.ARCHS network, not built yet (network None: build_network builds it)."""
    try:
        spec = models.arch_spec(arch, config)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    return ModelDescription(None, spec, int(config['scaling_factor']), label, arch, dict(config), state, source,
                            tuple(notes), path=path)


def _srgan_variant_info(ckpt, path, weights=None):
    """ModelDescription of the generator of an SRGAN run of another variant than the tutorial's (train_srgan.py
    --variant, recorded as 'variant'): a models.ARCHS architecture of its own, its weights under its own keys (or
    their moving average, chosen by ``weights`` as for every checkpoint: _select_weights)."""
    variant = ckpt['variant']
    arch = models.SRGAN_VARIANT_ARCHS.get(variant)
    if arch is None:
        raise UserError(f"{path}: unknown SRGAN variant {variant!r} (this version knows "
                        f"{', '.join([*models.SRGAN_SRRESNET_VARIANTS, *models.SRGAN_VARIANT_ARCHS])})")
    if not ckpt.get('generator_config'):
        raise UserError(f"{path}: an SRGAN checkpoint of variant {variant!r} without its generator_config")
    source = ckpt.get('source') or f"this suite (SRGAN generator, variant {variant})"
    generator, selected, notes = _select_weights(ckpt, 'generator', weights, path)
    return _suite_info(arch, arch, ckpt['generator_config'], strip_prefixes(generator), source, notes,
                       path)._replace(selected=selected)


def _check_assumptions(found, assume, path):
    """A --res-scale / --rgb-range nobody used must agree with what the file says (or be meaningless for it)."""
    for key, value in assume.items():
        flag = '--' + key.replace('_', '-')
        if key not in found.config:
            raise UserError(f"{flag} does not apply to {path}: its {found.arch} has no {key}")
        if found.config[key] != value:
            raise UserError(f"{flag} {value:g}: {path} says {key} {found.config[key]:g} itself (the flag is for "
                            f"published weights that do not say)")


def describe_checkpoint(ckpt, path, *, res_scale=None, rgb_range=None, weights=None, expect_scale=None):
    """The ModelDescription of the SR network in a checkpoint of any supported kind (``ckpt``: what load_checkpoint
    read from ``path``, whose format version it checked), as read: the network of a models.ARCHS architecture is
    not built yet (None; build_network builds it, load_sr_model does all three steps), a spandrel network is (that
    is how spandrel reads its files).

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
    was used is ``selected`` and a note. ``expect_scale`` turns a scale mismatch into a UserError naming both
    scales.
    """
    if weights not in (None,) + WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES} or None, not {weights!r}")
    assume = {k: v for k, v in (('res_scale', res_scale), ('rgb_range', rgb_range)) if v is not None}
    found = _describe(ckpt, path, assume, weights)
    _check_assumptions(found, assume, path)
    if expect_scale is not None and int(expect_scale) != found.scale:
        raise UserError(f"{path} was trained for x{found.scale}, not x{expect_scale}: pass --scale {found.scale} "
                        f"or a x{expect_scale} checkpoint")
    return found


def _describe(ckpt, path, assume, weights):
    """describe_checkpoint's reading of ``ckpt``.
    ``assume``: the --res-scale / --rgb-range values, each removed once what the file does not say takes it."""
    notes = []
    variant = ckpt.get('variant', 'tutorial')
    if 'generator' in ckpt and variant not in models.SRGAN_SRRESNET_VARIANTS:
        found = _srgan_variant_info(ckpt, path, weights)
    elif 'generator' in ckpt:  # the tutorial's Generator (an SRResNet under 'net.'), whichever variant trained it
        generator, selected, ema_notes = _select_weights(ckpt, 'generator', weights, path)
        state = strip_prefixes(generator)
        config = ckpt.get('generator_config') or _srresnet_config(state, 'net.', path)
        state = {k[len('net.'):]: v for k, v in state.items() if k.startswith('net.')}
        source = ckpt.get('source') or ('this suite (SRGAN generator)' if 'generator_config' in ckpt
                                        else "the tutorial's SRGAN generator")
        if variant != 'tutorial':
            source = f"{source}, variant {variant}"
        found = _suite_info(models.SRGAN_SRRESNET_VARIANTS[variant], 'srresnet', config, state, source, ema_notes,
                            path)._replace(selected=selected)
    elif ckpt.get('arch') == 'spandrel' and 'model' in ckpt:
        recorded = (ckpt.get('model_config') or {}).get('architecture')
        model, selected, ema_notes = _select_weights(ckpt, 'model', weights, path)
        found = _spandrel_info(model, path, [], recorded)._replace(selected=selected)
        if ema_notes:  # what was noted when the file was first read (its wrapper, say), not noted twice
            found = found._replace(notes=tuple(ema_notes))
    elif 'model' in ckpt and ('arch' in ckpt or 'model_config' in ckpt or _tutorial_srresnet(ckpt['model'])):
        model, selected, ema_notes = _select_weights(ckpt, 'model', weights, path)
        state = strip_prefixes(model)
        arch = ckpt.get('arch', 'srresnet')
        if arch not in models.ARCHS:
            raise UserError(f"{path}: unknown architecture {arch!r}")
        config = ckpt.get('model_config') or _srresnet_config(state, '', path)
        source = ckpt.get('source') or ('this suite' if 'arch' in ckpt else "the tutorial's SRResNet")
        label = ckpt.get('label') or arch  # a shipped model's own name in file names (srresnet_real)
        if not isinstance(label, str) or not label.replace('_', '').isalnum():
            raise UserError(f"{path}: its label {label!r} is not a name of letters, digits and '_'")
        found = _suite_info(label, arch, config, state, source, ema_notes, path)._replace(selected=selected)
    else:
        state, wrapper, selected = _unwrap(ckpt, path, weights)
        notes += [wrapper] if wrapper else []
        layout = _layout(state)
        if layout == 'srgan':  # a bare Generator state_dict (net.* keys)
            return _describe({'generator': state, 'source': "the tutorial's SRGAN generator", 'notes': notes}, path,
                             assume, None)._replace(selected=selected)
        if layout is None:
            found = _spandrel_info(state, path, notes)
        else:
            arch, config, state, source = _published(state, layout, path, assume, notes)
            found = _suite_info(arch, arch, models.model_config(arch, config.pop('scaling_factor'), **config), state,
                                source, notes, path)
        found = found._replace(selected=selected)
    return found


def build_network(model):
    """The ModelDescription ``model`` (describe_checkpoint's) with its network: a models.ARCHS network is built, its
    weights loaded strictly, in eval mode, on the CPU (its state then shares the network's tensors wherever their
    dtype and shape are the same: no second copy); one already built is kept. The random initial weights it draws
    come from a forked RNG: loading a checkpoint leaves the caller's random stream (a training run's) as it was."""
    if model.network is not None:
        return model
    try:
        with torch.random.fork_rng(devices=[]):
            network = models.build_model(model.arch, model.config)
        network.load_state_dict(model.state)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"{model.path}: weights do not match a {model.arch} with {model.config} "
                        f"({str(e).splitlines()[0][:160]})") from None
    own = network.state_dict()
    state = {k: own[k] if (own[k].dtype, own[k].shape) == (v.dtype, v.shape) else v for k, v in model.state.items()}
    return model._replace(network=network.eval(), state=state)


def load_sr_model(path, device='cpu', expect_scale=None, *, res_scale=None, rgb_range=None, weights=None):
    """The one loader the scripts use: the ModelDescription of the checkpoint file at ``path`` (read with
    load_checkpoint: weights_only, or safetensors; any kind describe_checkpoint accepts), its network on ``device``.

    ``expect_scale`` turns a scale mismatch into a UserError naming both scales; ``res_scale`` and ``rgb_range``
    set what published weights do not say; ``weights`` picks the EMA ('ema', the default when the file has them)
    or the raw weights ('raw'); see describe_checkpoint.
    """
    return build_network(describe_checkpoint(load_checkpoint(path), path, res_scale=res_scale, rgb_range=rgb_range,
                                             weights=weights, expect_scale=expect_scale)).to(device)


def suite_checkpoint(model):
    """A ModelDescription as a checkpoint of this suite (plain data and a state_dict: save_checkpoint or
    save_safetensors_checkpoint write it; describe_checkpoint reads it back to the same network). A spandrel
    network is recorded as arch 'spandrel' with its canonical weights: spandrel still builds it when it is read."""
    if model.label == 'srgan':
        weights = {'generator': {'net.' + k: v for k, v in model.state.items()}, 'generator_config': model.config}
    else:
        weights = {'model': model.state, 'model_config': model.config}
    arch = model.label if model.label == 'srgan' else 'spandrel' if model.is_spandrel else model.arch
    named = {} if model.is_spandrel or model.label in ('srgan', model.arch) else {'label': model.label}
    return {'format_version': FORMAT_VERSION, 'arch': arch, **weights, 'source': model.source,
            'notes': list(model.notes), **named}


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
