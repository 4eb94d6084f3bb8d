"""The parts both trainers (train_srresnet.py, train_srgan.py) are built from; their epoch loops stay in the scripts.

    settings = resolve_settings(parser)           # the script's flags, resolved once into a frozen utils.Settings
    with training.TrainContext(settings.device, max_steps=settings.max_steps) as ctx:  # joins torchrun's group
        speed = training.speed_of(settings, ctx.device)  # a Speed value
        loader, sampler = training.make_train_loader(dataset, batch_size, ctx.dist, workers, seed)
        saver = training.CheckpointSaver(path, ctx.dist, keep_best=True)
        for epoch in range(start_epoch, epochs + 1):
            ...                                   # each optimizer step ends with ctx.end_step(losses, epoch, step)
            saver.save(state, improved)

Here: the process group (DDP under torchrun, DataParallel for --ngpu), speed settings, the training dataset and
loader, Ctrl-C / SIGTERM / --max-steps handling, TensorBoard logging, the per-step bookkeeping (one host sync per
step), the EMA of the weights (--ema-decay), checkpoint saving (latest and best) and resuming, the run's per-epoch
history and its curves (<run>_curves.png), and the flags both trainers share.
Imports utils, models, datasets, degradations, checkpoints, inference and reports.
"""
import argparse
import contextlib
import datetime
import functools
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import datasets
import degradations
import inference
import models
import reports
from checkpoints import save_checkpoint, strip_prefixes
from utils import (Interrupted, RunLock, UserError, atomic_write, check_output_folder, check_precision, convert_image,
                   imresize, list_image_files, load_image, modcrop, native_bf16, non_negative_float, parse_number,
                   pick_device, pil_to_tensor, plain_args, positive_int, psnr, rgb_to_y_uint8, set_rng_state,
                   silence_closed_stdout, unwrap_model, worker_death)

TUTORIAL_WORKERS = 4  # the tutorial's DataLoader worker count

# ----------------------------------------------------------------------------------------------
# Processes: torchrun's DDP, the tutorial's DataParallel, or one process
# ----------------------------------------------------------------------------------------------


class Dist:
    """Process-group facts for this process: rank, world size, local rank, device; is_main for rank 0."""

    def __init__(self, rank=0, world_size=1, local_rank=0, device=torch.device('cpu')):
        self.rank, self.world_size, self.local_rank, self.device = rank, world_size, local_rank, device

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1 or torch.distributed.is_initialized()

    def all_mean(self, value):
        """Mean of a float across ranks (the value itself when not distributed)."""
        if not self.enabled:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.item() / self.world_size

    def barrier(self):
        if self.enabled:
            torch.distributed.barrier()


def init_distributed(device_name, ngpu=1, timeout_s=600):
    """Join the torchrun process group when launched by torchrun (RANK/WORLD_SIZE set), else a single process.

    nccl on CUDA (one GPU per process, cuda:LOCAL_RANK), gloo on CPU. --ngpu > 1 with torchrun is refused.
    """
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ:
        return Dist(device=pick_device(device_name))
    if ngpu > 1:
        raise UserError("--ngpu (DataParallel) and torchrun (DDP) cannot be combined: drop --ngpu under torchrun")
    rank, world = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    device = pick_device(device_name)
    if device.type == 'cuda':
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank, world, local_rank, device)


def close_distributed():
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap_model(model, dist, ngpu=1, sync_bn=False):
    """DDP under torchrun (SyncBatchNorm with sync_bn on CUDA), DataParallel for --ngpu N on CUDA, else as is."""
    if dist.enabled:
        if sync_bn and dist.device.type == 'cuda':
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [dist.device.index] if dist.device.type == 'cuda' else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if ngpu > 1 and dist.device.type == 'cuda' and torch.cuda.device_count() > 1:
        return torch.nn.DataParallel(model, device_ids=list(range(min(ngpu, torch.cuda.device_count()))))
    return model


def per_rank_batch_size(batch_size, dist):
    """--batch-size is global: split evenly across processes (UserError if it does not divide)."""
    if batch_size % dist.world_size:
        raise UserError(f"--batch-size {batch_size} (global) does not divide across {dist.world_size} processes")
    return batch_size // dist.world_size


# ----------------------------------------------------------------------------------------------
# Speed settings, resolved once into a value
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Speed:
    """The speed settings of a run, resolved for its device (resolve_speed).

    precision: 'fp32', 'bf16' or 'fp16', the autocast of the forward passes (--amp; 'off' is fp32); fp16 comes
    with a GradScaler. The rest are the flags of the same names, with 'auto' decided.
    """
    faithful: bool
    precision: str
    channels_last: bool
    tail_before_shuffle: bool
    fast_prelu: bool
    compile: bool
    fused_adam: bool
    fast_tanh: bool

    @property
    def amp(self):
        """The --amp value this precision stands for (off, bf16, fp16)."""
        return 'off' if self.precision == 'fp32' else self.precision

    def flags(self):
        """The resolved settings under their flag names, as checkpoints record them in 'args'."""
        return {'faithful': self.faithful, 'amp': self.amp, 'channels_last': self.channels_last,
                'tail_before_shuffle': self.tail_before_shuffle, 'fast_prelu': self.fast_prelu,
                'compile': self.compile, 'fused_adam': self.fused_adam, 'fast_tanh': self.fast_tanh}


def resolve_speed(device, *, faithful=False, amp='auto', channels_last=None, tail_before_shuffle=None,
                  fast_prelu=None, compile=False, fused_adam=None, fast_tanh=None):
    """The Speed of a run from its flags: 'auto' and None decided for ``device``; --faithful is the tutorial's fp32
    NCHW eager loop and refuses the speed flags. --amp auto picks bf16 where the hardware runs it natively (CUDA
    GPUs that support it, CPUs with AMX or AVX512-BF16), else fp32. fused_adam (None: on for CPU and CUDA) is
    torch's fused Adam kernel, the same update in one pass over all parameters. fast_tanh (None: on) is
    models.Tanh's fast CPU path, tanh within 2e-7."""
    if faithful:
        if (amp not in ('auto', 'off') or channels_last or compile or tail_before_shuffle or fast_prelu
                or fused_adam or fast_tanh):
            raise UserError("--faithful runs the tutorial's fp32 NCHW eager loop: drop --amp/--channels-last/--compile/"
                            "--tail-before-shuffle/--fast-prelu/--fused-adam/--fast-tanh")
        return Speed(True, 'fp32', False, False, False, False, False, False)
    if amp == 'auto':
        precision = 'bf16' if native_bf16(device) else 'fp32'
    else:
        precision = check_precision('fp32' if amp == 'off' else amp, device, flag='--amp')
    return Speed(False, precision, device.type in ('cuda', 'cpu') if channels_last is None else channels_last,
                 True if tail_before_shuffle is None else tail_before_shuffle,
                 True if fast_prelu is None else fast_prelu, bool(compile),
                 device.type in ('cuda', 'cpu') if fused_adam is None else fused_adam,
                 True if fast_tanh is None else fast_tanh)


def make_adam(params, lr, speed, **options):
    """torch.optim.Adam over the trainable ``params``, with torch's fused kernel when ``speed.fused_adam`` (one step
    over ESPCN's 22k parameters: 0.11 ms instead of 0.61, benchmarks/bench_optimizer.py on one CPU thread)."""
    if speed.fused_adam:
        options['fused'] = True
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=lr, **options)


def apply_speed(model, speed):
    """The model as the speed settings run it: channels_last memory format, and the training rewrites (tail before
    shuffle, fast PReLU backward, fast tanh) switched on or off. Returns the model (converted in place)."""
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    models.apply_training_rewrites(model, speed.tail_before_shuffle, speed.fast_prelu, speed.fast_tanh)
    return model


def make_scaler(device, speed):
    """A GradScaler, active only for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=speed.precision == 'fp16')


# ----------------------------------------------------------------------------------------------
# The per-step learning-rate schedule (--lr-schedule warmup-cosine)
# ----------------------------------------------------------------------------------------------


def warmup_cosine_lr(base_lr, step, total_steps, warmup_steps, final_ratio=0.01):
    """The learning rate of optimizer step ``step`` (0-based) under --lr-schedule warmup-cosine: a linear warm-up
    from base_lr / warmup_steps to base_lr over the first ``warmup_steps`` steps, then a half cosine down to
    base_lr * final_ratio at step total_steps - 1 (and there after it). A pure function of the step, so a resumed run
    (which restores the step count) continues the same curve."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
    return base_lr * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def step_schedule(schedule, base_lr, total_steps, warmup_steps):
    """The learning rate of each optimizer step (a function of the global step) for a per-step ``schedule``
    ('warmup-cosine'); None for the epoch schedules ('step', 'cosine'), which a torch scheduler steps per epoch."""
    if schedule != 'warmup-cosine':
        return None
    return functools.partial(warmup_cosine_lr, base_lr, total_steps=total_steps, warmup_steps=warmup_steps)


def set_lr(optimizer, lr):
    """Every parameter group of ``optimizer`` at learning rate ``lr``."""
    for group in optimizer.param_groups:
        group['lr'] = lr


# ----------------------------------------------------------------------------------------------
# Data: the training dataset, the loader, batches on the device, validation images
# ----------------------------------------------------------------------------------------------


def build_train_dataset(settings, log=print):
    """The training dataset of a run's settings (the data flags of add_training_args, with scale, crop_size and the
    recipe resolved). --faithful: the tutorial's SRDataset (PIL decode and bicubic per patch; lr_from is then
    'patch', see resolve_lr_from); else the cached PatchDataset, whose LR is made per patch on the device (lr_from
    'patch'), cut from each image's LR, made once ('image'), degraded from each HR crop (--degradation
    realesrgan / light) or cut from the LR images given (--paired).

    Returns (dataset, collate_fn)."""
    s = settings
    if s.lr_from not in ('patch', 'image'):
        raise ValueError(f"lr_from is 'patch' or 'image', not {s.lr_from!r}")
    if s.faithful:
        return datasets.SRDataset(s.data_folder, 'train', s.crop_size, s.scale, '[0, 1]', '[0, 1]',
                                  downsample=s.downsample, seed=s.seed, max_bad_fraction=s.max_bad_fraction,
                                  repeat=s.patches_per_image), None
    degradation = degradation_of(s.degradation, s.degradation_opt)
    made_from_image = s.lr_from == 'image' and degradation is None and not s.paired
    dataset = datasets.PatchDataset(
        s.data_folder, s.crop_size, s.scale, seed=s.seed, patches_per_image=s.patches_per_image,
        crops_per_visit=s.crops_per_visit, hflip=bool(s.hflip), vflip=bool(s.vflip), rot90=bool(s.rot90),
        cache_bytes=None if s.cache_gb is None else int(s.cache_gb * 2 ** 30), max_bad_fraction=s.max_bad_fraction,
        workers=TUTORIAL_WORKERS if s.workers is None else s.workers,
        lr_method=s.downsample if made_from_image else None, paired=s.paired, degradation=degradation, log=log)
    return dataset, datasets.collate_patches


def degradation_of(preset, overrides):
    """The degradations.DegradationSettings of --degradation PRESET and its --degradation-opt KEY=VALUE list, or
    None for 'bicubic' (LR by --downsample); UserError naming the flag for an option it does not have."""
    if preset in (None, 'bicubic'):
        if overrides:
            raise UserError(f"--degradation-opt {overrides[0]}: changes a range of --degradation realesrgan or "
                            f"light; give one of them")
        return None
    try:
        return degradations.with_overrides(degradations.preset(preset), overrides or [])
    except ValueError as e:
        raise UserError(f"--degradation-opt: {e}") from None


def lr_source_text(settings):
    """How a run's LR patches are made, in words for its first line."""
    s = settings
    if s.paired:
        return "LR cropped from the LR images given (--paired)"
    if s.degradation not in (None, 'bicubic'):
        given = {}  # each key once, its last value: what with_overrides applies
        for item in s.degradation_opt or []:
            key, _, value = item.partition('=')
            given[key.strip()] = value.strip()
        changed = ''.join(f", {key}={value}" for key, value in given.items())
        return f"LR by Real-ESRGAN's degradations of each HR crop ({s.degradation}{changed})"
    return f"LR from each {s.lr_from} ({s.downsample})"


def resolve_lr_source(faithful, lr_from, degradation, degradation_opt, paired):
    """(lr_from, degradation) of a run as both trainers resolve them before the recipe fills what is unset:
    resolve_lr_from's --lr-from, --degradation with 'bicubic' for unset, its --degradation-opt checked now (an
    unknown key fails before any work)."""
    lr_from = resolve_lr_from(faithful, lr_from, degradation, paired)
    degradation = degradation or 'bicubic'
    degradation_of(degradation, degradation_opt)
    return lr_from, degradation


def resolve_lr_from(faithful, lr_from, degradation, paired):
    """--lr-from as the trainers resolve it, before the recipe fills what is unset (None stays None), from the run's
    --faithful, --lr-from, --degradation and --paired: under --faithful 'patch' (the tutorial's pipeline downscales
    each patch, whatever the recipe); with a --degradation preset 'patch' (each HR crop is degraded into its LR);
    with --paired 'image' (LR crops cut from the LR images given). Contradictions are refused in one line."""
    degraded = degradation not in (None, 'bicubic')
    if degraded and paired:
        raise UserError(f"--paired trains on the LR images given, --degradation {degradation} makes them from the HR: "
                        f"give one of them")
    if faithful and (degraded or paired):
        raise UserError(f"--faithful: the tutorial's pipeline makes each LR patch with bicubic: drop it to train with "
                        f"{'--paired' if paired else '--degradation ' + degradation}")
    if faithful:
        if lr_from == 'image':
            raise UserError("--lr-from image: the tutorial's pipeline (--faithful) downscales each patch: drop one of "
                            "them")
        return 'patch'
    if degraded:
        if lr_from == 'image':
            raise UserError(f"--lr-from image: --degradation {degradation} degrades each HR crop into its LR: drop "
                            f"--lr-from")
        return 'patch'
    if paired:
        if lr_from == 'patch':
            raise UserError("--lr-from patch: --paired cuts each LR crop from the LR image given: drop --lr-from")
        return 'image'
    return lr_from


def available_cores():
    """The CPU cores this process may run on (its affinity where the OS says, else the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def loader_workers(workers, device, dataset):
    """--workers, or its default when None: 0 on a CPU when the patches come from the RAM cache without
    degradations (cropping is cheap, and worker processes would take cores from the model: ESPCN on T91 trained 1.4x
    faster with 0 than with 4 on 2 cores), else the tutorial's 4, at most one per available core (degrading a patch
    costs milliseconds of a core, which workers overlap with the step; more workers than cores only compete, and
    PyTorch warns)."""
    if workers is not None:
        return workers
    cheap = getattr(dataset, 'buffer', None) is not None and getattr(dataset, 'degradation', None) is None
    return 0 if device.type == 'cpu' and cheap else min(TUTORIAL_WORKERS, available_cores())


def ignore_stop_signals(worker_id):
    """DataLoader ``worker_init_fn``: a worker ignores Ctrl-C and SIGTERM. A terminal's Ctrl-C reaches the whole
    process group, and so does the SIGTERM of a job scheduler (Slurm's scancel, a timeout on the group); a worker
    that died of it would take the run down (the loader raises as soon as it sees a worker killed) while the main
    process, which turns either into a save after its current step, is finishing that step. The main process stops
    its workers itself, and a worker left alone exits when it sees its parent gone."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def make_train_loader(dataset, batch_size, dist, workers, seed, pin_memory=False, collate_fn=None):
    """DataLoader over an EpochSampler: the global batch (in patches) is split across ranks; datasets whose items
    hold several crops (PatchDataset) are batched by visits; ``workers`` None picks loader_workers' default.
    Returns (loader, sampler)."""
    workers = loader_workers(workers, dist.device, dataset)
    per_rank = per_rank_batch_size(batch_size, dist)
    crops = getattr(dataset, 'crops_per_visit', 1)
    if per_rank % crops and getattr(dataset, 'auto_crops', False):
        crops = math.gcd(per_rank, crops)
        dataset.set_crops_per_visit(crops)
    if per_rank % crops:
        raise UserError(f"--batch-size {batch_size} ({per_rank} per process) is not a multiple of "
                        f"--crops-per-visit {crops}")
    sampler = datasets.EpochSampler(len(dataset), seed=seed, shuffle=True, rank=dist.rank,
                                    world_size=dist.world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=per_rank // crops, sampler=sampler,
                                         num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                                         collate_fn=collate_fn, worker_init_fn=ignore_stop_signals)
    return loader, sampler


def stop_workers(loader):
    """Shut ``loader``'s persistent workers down now rather than when the loader is collected. Call it when the
    epochs are over, before drawing the curves: matplotlib drawing while the workers idle left them deaf to the
    shutdown that followed (they ignore SIGTERM, ignore_stop_signals), and the process hung at exit joining them.
    DataLoader has no public close; dropping the iterator it keeps for persistent workers is what runs their
    shutdown, so this does that, explicitly."""
    iterator, loader._iterator = getattr(loader, '_iterator', None), None
    if iterator is not None and hasattr(iterator, '_shutdown_workers'):
        iterator._shutdown_workers()


def batch_to_device(batch, device, scale, downsample):
    """A loader batch -> (lr, hr) float RGB in [0, 1] on ``device``: SRDataset pairs are moved as they are;
    PatchDataset uint8 batches are moved (4x fewer bytes than float), and HR-only ones downscaled there, batched."""
    if isinstance(batch, (list, tuple)):
        lr, hr = (t.to(device, non_blocking=True) for t in batch)  # (N, 3, H / s, W / s), (N, 3, H, W)
        if hr.dtype != torch.uint8:  # SRDataset: float already
            return lr, hr
    else:
        hr = batch.to(device, non_blocking=True)  # (N, 3, H, W) uint8
        lr = datasets.make_lr(hr, scale, downsample)  # (N, 3, H / s, W / s) uint8
    return lr.float().div_(255.), hr.float().div_(255.)


def load_val_images(folder):
    """(3, H, W) uint8 tensors of every image in ``folder`` (for validation PSNR)."""
    paths = list_image_files(folder)
    if not paths:
        raise UserError(f"--val-folder {folder}: no images found")
    return [pil_to_tensor(load_image(p)) for p in paths]


def validate(model, spec, scale, device, hr_images):
    """Validation PSNR: the standard protocol (Y, border = scale) averaged over ``hr_images``, model in eval mode;
    ``spec``: its models.ArchSpec (models.arch_spec of the run's architecture and configuration)."""
    return inference.validate_psnr(inference.Upscaler(model.eval(), spec, scale, device), hr_images, scale)


def validate_run(model, ema, spec, scale, device, hr_images, wrap=lambda m: m):
    """(PSNR of the weights the run is judged by, PSNR of the raw weights or None): with an EMA both are measured
    (the judged ones are the EMA's; the curves draw both), without one the model once. ``wrap``: what turns a
    network into the module validation runs (train_srgan.py's sr_network)."""
    judged = validate(wrap(shipped_model(model, ema)), spec, scale, device, hr_images)
    raw = None if ema is None else validate(wrap(shipped_model(model, None)), spec, scale, device, hr_images)
    return judged, raw


def bicubic_psnr(hr_images, scale):
    """The papers' bicubic baseline on the validation images, as validation measures them (eval.py --arch bicubic:
    Y of the mod-cropped HR, MATLAB bicubic down and up in float64, rounded once; border = scale): the reference
    line of the training curves."""
    values = []
    for hr in hr_images:
        hr_y = rgb_to_y_uint8(modcrop(hr, scale))  # (H', W') float64, integer values
        sr_y = torch.floor(imresize(imresize(hr_y, 1. / scale), scale).clamp(0, 255) + 0.5)
        values.append(psnr(sr_y, hr_y, border=scale))
    return sum(values) / len(values)


def validation_due(epoch, val_every, epochs):
    """Validate every --val-every epochs and after the last one."""
    return epoch % val_every == 0 or epoch == epochs


# ----------------------------------------------------------------------------------------------
# The run: process group, stop request, logging, per-step bookkeeping
# ----------------------------------------------------------------------------------------------


class StopRequest:
    """Turns Ctrl-C / SIGTERM into a flag the training loop checks after each step, once ``armed`` (after the first
    step of the run). Before that there is nothing to save: either interrupts at once (KeyboardInterrupt), as does a
    second Ctrl-C."""

    def __init__(self):
        self.requested = self.armed = False
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass

    def _handle(self, signum, frame):
        if not self.armed or (self.requested and signum == signal.SIGINT):
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name} received: finishing this step, then saving", file=sys.stderr)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# Flags of a run's command line that the command resuming it must not repeat: --max-steps N would stop it again at
# once (N steps are counted from the start of the run), --restart would set the checkpoint aside, --init-from is a
# new run's; each is the flag and the number of values it takes.
NOT_RESUMED = {'--max-steps': 1, '--restart': 0, '--init-from': 1}


def resume_command(argv=None):
    """The command line that resumes this run: its argv (default sys.argv) without NOT_RESUMED's flags, with
    --resume added when missing."""
    argv, out = list(sys.argv if argv is None else argv), []
    while argv:
        arg = argv.pop(0)
        flag = arg.split('=', 1)[0]
        if flag in NOT_RESUMED:
            if '=' not in arg:
                del argv[:NOT_RESUMED[flag]]
            continue
        out.append(arg)
    if '--resume' not in out and not any(a.startswith('--resume=') for a in out):
        out.append('--resume')
    launcher = 'torchrun ...' if 'RANK' in os.environ else 'python'
    return f"{launcher} {shlex.join(out)}"


def best_path_of(path):
    """The --keep-best file of the run writing ``path``: <path stem>_best.pth."""
    return os.path.splitext(path)[0] + '_best.pth'


def set_aside_name(path, stamp):
    """``path`` with ``stamp`` before its extension, and a counter when that name is taken: the name --restart
    keeps an old checkpoint under (checkpoint_srresnet.pth -> checkpoint_srresnet.20260101-120000.pth)."""
    stem, ext = os.path.splitext(path)
    name, n = f"{stem}.{stamp}{ext}", 1
    while os.path.lexists(name):
        n += 1
        name = f"{stem}.{stamp}-{n}{ext}"
    return name


def claim_run_files(path, resume, restart, log=print):
    """Make ``path`` (a run's checkpoint) and its --keep-best file this run's to write, before any work.

    A run that continues ``path`` (--resume naming it) writes them; otherwise files already there belong to an
    earlier run: refused with one line naming --resume and --restart, or with ``restart`` renamed aside (each with
    a timestamp, said in a printed line) so that nothing is lost. --restart together with --resume of ``path``
    itself is refused (one continues the file, the other starts over)."""
    continues = bool(resume) and os.path.exists(resume) and os.path.exists(path) and os.path.samefile(resume, path)
    if continues and restart:
        raise UserError(f"--resume continues {path} and --restart starts over: give one of them")
    existing = [p for p in (path, best_path_of(path)) if os.path.lexists(p)]
    if continues or not existing:
        return
    if not restart:
        raise UserError(f"{path} exists (an earlier run): pass --resume to continue it, or --restart to start over "
                        f"(the old file is then kept as {os.path.basename(set_aside_name(path, 'DATE-TIME'))})")
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for old in existing:
        aside = set_aside_name(old, stamp)
        try:
            os.rename(old, aside)
        except OSError as e:
            raise UserError(f"--restart: cannot rename {old} to {aside} ({e.strerror or e}); nothing was "
                            f"changed") from None
        log(f"--restart: the earlier {old} is kept as {aside}")


def to_display(img, kind):
    """(N, C, H, W) in ``kind`` -> [0, 1] for image grids (Y images stay single-channel)."""
    if img.shape[1] == 1:
        return img.float().clamp(0, 1)
    return convert_image(img.float(), kind, '[0, 1]').clamp(0, 1)


def batches(loader):
    """The loader's batches. A worker process that dies (the system kills it, most often for memory) ends the run
    in one line naming the fix (utils.worker_death), instead of PyTorch's traceback; the checkpoint saved last stays
    as it was. The loader's iterator is let go first, so its dead worker leaves PyTorch's SIGCHLD watch at once
    (kept alive by the traceback, it would raise again at the next child process's exit)."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (RuntimeError, EOFError, ConnectionError) as e:
            died = worker_death(e, in_loader=loader.num_workers > 0)
            if died is None:
                raise
        else:
            yield batch
            continue
        del iterator
        raise died  # outside the except clause: no context holding the iterator's frames


class TrainContext:
    """One training process of a run, used as a context manager.

    On enter it joins torchrun's process group when there is one (``dist``, ``device``) and turns Ctrl-C / SIGTERM
    into a stop request; on exit it closes the TensorBoard writer, restores the signal handlers and leaves the
    process group. In between: open_writer (rank 0 logs), end_step after every optimizer step (the step counter,
    non-finite losses, the stop decision shared by all ranks), log_epoch, and printing on rank 0 (log).
    """

    def __init__(self, device='auto', *, ngpu=1, dist_timeout=600, max_steps=None, checkpoint=None, resume=None,
                 restart=False, progress_every=60.):
        self.device_name, self.ngpu, self.dist_timeout, self.max_steps = device, ngpu, dist_timeout, max_steps
        self.checkpoint, self.resume, self.restart = checkpoint, resume, restart
        self.progress_every, self.bar = progress_every, None  # progress_line; the epoch's (total, start, steps)
        self.dist = self.device = self.stop = self.writer = self.lock = None
        self.tag, self.global_step, self.epoch_steps = '', 0, 0
        self.history, self.seconds_before, self.started = [], 0., time.perf_counter()  # record_epoch, elapsed

    @classmethod
    def of(cls, settings):
        """The context of a trainer's resolved settings (its device, --ngpu, --dist-timeout, --max-steps, checkpoint
        path, --resume, --restart and --progress-every)."""
        return cls(settings.device, ngpu=settings.ngpu, dist_timeout=settings.dist_timeout,
                   max_steps=settings.max_steps, checkpoint=settings.checkpoint_path, resume=settings.resume,
                   restart=settings.restart, progress_every=settings.progress_every)

    def __enter__(self):
        """Join the process group; on rank 0 lock the run's checkpoint for the whole run (a second trainer on it
        refuses, naming this one) and claim its files (claim_run_files); then handle Ctrl-C / SIGTERM."""
        tqdm.monitor_interval = 0  # no tqdm monitor thread: nothing but the main thread is left to stop at exit
        self.started = time.perf_counter()
        self.stop = StopRequest()  # from here on, Ctrl-C is this run's (before the first step: interrupts at once)
        try:
            self.dist = init_distributed(self.device_name, self.ngpu, self.dist_timeout)
            self.device = self.dist.device
            if self.checkpoint is not None and self.dist.is_main:
                check_output_folder(os.path.dirname(self.checkpoint) or '.', '--results-dir')
                self.lock = RunLock(self.checkpoint).acquire()
                claim_run_files(self.checkpoint, self.resume, self.restart, log=self.log)
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop.restore()
        self._close_writer()
        close_distributed()
        if self.lock is not None:
            self.lock.release()
        if exc_type is KeyboardInterrupt:  # Ctrl-C / SIGTERM before the first step ended, or a second Ctrl-C
            where = f"{self.checkpoint} is as it was" if self.checkpoint else "nothing was saved"
            raise Interrupted(("interrupted again: stopped without saving; " if self.stop.armed else
                               "interrupted during start-up, before the first training step ended: nothing was "
                               "saved; ") + where) from None
        return False

    def _close_writer(self):
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception as e:  # its last events could not be written: the run itself is saved
                print(f"warning: TensorBoard logs under {writer.log_dir} may be incomplete: {e}", file=sys.stderr)

    def _write_logs(self, write):
        """Call ``write(writer)`` (rank 0, writer open); a failing log write (disk full...) stops TensorBoard
        logging with one warning line, and training goes on: the logs are not worth a run."""
        if self.writer is None:
            return
        try:
            write(self.writer)
        except Exception as e:
            print(f"warning: TensorBoard logging stopped, cannot write {self.writer.log_dir} "
                  f"({getattr(e, 'strerror', None) or e}); training goes on", file=sys.stderr)
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except Exception:
                pass

    def log(self, *text, **kwargs):
        """print on rank 0 only. When stdout's reader went away (a closed pipe: `| head` done, the benchmark that
        started the run killed), the run stops as on SIGTERM, finishing its step and saving, its output from then
        on going nowhere."""
        if not self.dist.is_main:
            return
        try:
            print(*text, **kwargs)
        except BrokenPipeError:
            if not silence_closed_stdout():
                raise
            self.stop.requested = True
            with contextlib.suppress(OSError):
                print("the reader of the output went away (a closed pipe): finishing this step, then saving",
                      file=sys.stderr)

    def open_writer(self, log_dir, tag):
        """The TensorBoard writer, on rank 0 only (elsewhere ``writer`` stays None); ``tag`` prefixes every tag."""
        self.tag = tag
        if self.dist.is_main:
            try:
                self.writer = SummaryWriter(log_dir=log_dir)
            except Exception as e:  # OSError (a file in the way, no space, no permission) or tensorboard's own
                raise UserError(f"cannot write TensorBoard logs to {log_dir} ({getattr(e, 'strerror', None) or e}):"
                                f" give another --runs-dir") from None

    def progress(self, loader, desc):
        """A tqdm bar over the loader on rank 0 when stderr is a terminal; plain iteration otherwise (then end_step
        prints progress_line every --progress-every seconds)."""
        self.bar = (len(loader), time.perf_counter(), self.epoch_steps, time.perf_counter())
        return tqdm(batches(loader), total=len(loader), desc=desc, disable=None if self.dist.is_main else True,
                    dynamic_ncols=True, leave=False)

    def end_step(self, losses, epoch, step):
        """Bookkeeping after an optimizer step. losses: {name: 0-d tensor}. Returns ({name: float}, stop).

        One host sync for everything: the losses and this rank's stop request travel in one tensor (summed across
        ranks under torchrun, so every rank sees the mean losses and stops at the same step). A NaN / inf loss on
        any rank stops the run with a UserError naming the step, before anything is saved. The stop is Ctrl-C /
        SIGTERM on any rank, or --max-steps reached. Also logs the per-step losses to TensorBoard ('<tag>/loss_step',
        '<tag>/<name>_loss_step').
        """
        self.global_step += 1
        self.epoch_steps += 1
        self.stop.armed = True  # a step is done: from now on Ctrl-C / SIGTERM finish the step and save
        wants_stop = self.stop.requested or (self.max_steps is not None and self.global_step >= self.max_steps)
        names = list(losses)
        packed = torch.stack([losses[k].detach().float() for k in names] +
                             [torch.tensor(float(wants_stop), device=self.device)])
        if self.dist.enabled:
            torch.distributed.all_reduce(packed)
            packed[:-1] /= self.dist.world_size
        *values, stop = packed.tolist()  # the one host sync of the step
        for name, value in zip(names, values):
            if not math.isfinite(value):
                saved = self.checkpoint is not None and os.path.exists(self.checkpoint)
                kept = f"so {self.checkpoint} still holds the last good state" if saved else \
                    "and this run had saved nothing yet"
                raise UserError(f"{name} loss became {value} at epoch {epoch}, step {step}; stopped without saving, "
                                f"{kept} (try a lower --lr or --amp off)")
        values = dict(zip(names, values))

        def write(writer):
            for name, value in values.items():
                label = name if name.endswith('loss') else f"{name}_loss"
                writer.add_scalar(f"{self.tag}/{label}_step", value, self.global_step)
        self._write_logs(write)
        self.progress_line(epoch, step, values)
        return values, stop > 0

    def progress_line(self, epoch, step, values):
        """Without a terminal (a log file, a scheduler's output: no tqdm bar), rank 0 prints one line every
        ``progress_every`` seconds (0: never) so a long epoch shows it is alive: the step, steps/s, the losses and
        the epoch's ETA."""
        if not self.progress_every or self.bar is None or not self.dist.is_main or sys.stderr.isatty():
            return
        total, start, steps_before, last = self.bar
        now = time.perf_counter()
        if now - last < self.progress_every:
            return
        self.bar = (total, start, steps_before, now)
        done = self.epoch_steps - steps_before
        rate = done / max(now - start, 1e-9)
        losses = ', '.join(f"{k} {v:.5g}" for k, v in values.items())
        eta = (total - step - 1) / max(rate, 1e-9) / 60
        self.log(f"progress: epoch {epoch}, step {step + 1}/{total}: {rate:.3g} steps/s, {losses}, "
                 f"epoch ETA {eta:.1f} min", flush=True)

    def log_images(self, tag, epoch, lr, sr, hr, lr_kind, out_kind):
        """TensorBoard grids of the first 4 LR / SR / HR images of a batch, each mapped to [0, 1] (rank 0)."""
        if self.writer is None:
            return

        def write(writer):
            for name, img, kind in (('1_lr', lr, lr_kind), ('2_sr', sr, out_kind), ('3_hr', hr, out_kind)):
                # TensorBoard tiles the batch itself (4 images: one row), so torchvision is not imported for it
                writer.add_images(f"{self.tag}/{tag}/{name}", to_display(img[:4].detach().cpu(), kind), epoch,
                                  dataformats='NCHW')
        self._write_logs(write)

    def log_epoch(self, epoch, epochs, losses, val_psnr=None, best_psnr=None, ema=False):
        """The epoch's line on rank 0 (mean losses, validation PSNR) and its TensorBoard scalars. ``ema``: the
        validation judged the EMA weights (line 'val PSNR (EMA)', scalar '<tag>/val_psnr_ema'). An epoch without a
        step in this process (resumed after its last step) has no losses to report."""
        if not self.epoch_steps:
            losses = {}
        self.epoch_steps = 0
        line = f"epoch {epoch}/{epochs}: " + (', '.join(f"{k} {v:.5g}" for k, v in losses.items()) or
                                               "its steps were done before the resume")
        if val_psnr is not None:
            line += f", val PSNR{' (EMA)' if ema else ''} {val_psnr:.3f} dB (best {best_psnr:.3f})"

        def write(writer):
            if val_psnr is not None:
                writer.add_scalar(f"{self.tag}/val_psnr{'_ema' if ema else ''}", val_psnr, epoch)
            for k, v in losses.items():
                writer.add_scalar(f"{self.tag}/{k}", v, epoch)
        self._write_logs(write)
        self.log(line, flush=True)


    # -- the run's history: one entry per epoch, kept in the checkpoint, drawn as <run>_curves.png --------------

    def elapsed(self):
        """Seconds of this run so far: this process's, plus those of the runs it resumed (checkpoint train_seconds)."""
        return self.seconds_before + time.perf_counter() - self.started

    def record_epoch(self, epoch, losses, val_psnr=None, ema=False, bicubic_psnr=None, raw_psnr=None):
        """Add epoch ``epoch`` to the history (call before saving the epoch's checkpoint): {'epoch', 'step' (optimizer
        steps so far), 'seconds' (elapsed), 'losses' (the epoch's mean losses; {} when its steps were done before a
        resume)}, and when validated 'val_psnr' (or 'val_psnr_ema' when it judged the EMA weights, with 'val_psnr'
        then the raw weights' ``raw_psnr``) and 'bicubic_psnr' (bicubic_psnr of the same images)."""
        entry = {'epoch': int(epoch), 'step': int(self.global_step), 'seconds': round(self.elapsed(), 3),
                 'losses': {k: float(v) for k, v in losses.items()} if self.epoch_steps else {}}
        if val_psnr is not None:
            entry['val_psnr_ema' if ema else 'val_psnr'] = float(val_psnr)
            if ema and raw_psnr is not None:
                entry['val_psnr'] = float(raw_psnr)
            if bicubic_psnr is not None:
                entry['bicubic_psnr'] = float(bicubic_psnr)
        self.history.append(entry)

    def history_state(self):
        """The checkpoint entries of the history: 'history' (a list of record_epoch's dicts) and 'train_seconds'."""
        return {'history': [dict(e) for e in self.history], 'train_seconds': round(self.elapsed(), 3)}

    def restore_history(self, ckpt):
        """On --resume: the history and the seconds of the runs before (checkpoints older than them have none)."""
        self.history = [dict(e) for e in ckpt.get('history') or []]
        self.seconds_before = float(ckpt.get('train_seconds') or 0.)

    def write_curves(self, title):
        """On rank 0: draw the history as <run>_curves.png next to the checkpoint (curves_path) and print its path.
        A run without a finished epoch has nothing to draw; a failure to draw or write is one warning line (the
        checkpoint holds the history)."""
        if not self.dist.is_main or self.checkpoint is None:
            return None
        if not self.history:
            self.log("curves: no finished epoch yet, nothing to draw")
            return None
        path = curves_path(self.checkpoint)
        try:
            png = reports.curves_png(self.history, title)
            atomic_write(path, lambda f: f.write(png))
        except Exception as e:  # the run is saved: its curves are not worth an error
            print(f"warning: cannot write the training curves {path}: {e}", file=sys.stderr)
            return None
        self.log(f"curves: {path}")
        return path


def curves_path(checkpoint):
    """Where a run's curves go: next to its checkpoint, named after it (results/checkpoint_srresnet.pth ->
    results/srresnet_curves.png)."""
    folder, name = os.path.split(checkpoint)
    stem = os.path.splitext(name)[0]
    stem = stem[len('checkpoint_'):] if stem.startswith('checkpoint_') and len(stem) > len('checkpoint_') else stem
    return os.path.join(folder, f"{stem}_curves.png")


def patches_per_second(n_patches, start):
    """Throughput for the progress bar (no GPU sync: the step's loss read already waited for the GPU)."""
    return f"{n_patches / max(time.perf_counter() - start, 1e-9):.0f}"


# ----------------------------------------------------------------------------------------------
# EMA of the weights (--ema-decay): what validation judges and what eval.py / test.py ship when it is on
# ----------------------------------------------------------------------------------------------


def ema_warmup_decay(decay, n_averaged):
    """The decay of the EMA update that folds in weight set ``n_averaged`` + 1 under --ema-warmup: min(decay,
    (1 + n) / (10 + n)) with n = ``n_averaged`` (the weight sets averaged so far, >= 1), TensorFlow's
    ExponentialMovingAverage num_updates rule: 0.18 at n = 1, 0.5 at n = 8, 0.9 at n = 80, 0.999 from n = 8990 on.
    Early weights, far from trained, leave the average within a few hundred steps instead of weighing on it for
    thousands, as they do under a fixed 0.999."""
    return min(decay, (1 + n_averaged) / (10 + n_averaged))


def ema_multi_avg_fn(decay, warmup=False):
    """torch's EMA update (get_ema_multi_avg_fn: ema = decay * ema + (1 - decay) * w, as one foreach lerp) for
    floating-point parameters and buffers, with ``warmup``: the decay of ema_warmup_decay at each update; integer
    buffers (BatchNorm's num_batches_tracked, SRResNet's tail index) are counts and indices, copied from the model
    instead of averaged and truncated."""
    lerp = get_ema_multi_avg_fn(decay)

    def update(ema_tensors, model_tensors, n_averaged):
        if not ema_tensors[0].is_floating_point():  # AveragedModel groups tensors by dtype: one kind per call
            for e, m in zip(ema_tensors, model_tensors, strict=True):
                e.copy_(m)
        elif warmup:
            get_ema_multi_avg_fn(ema_warmup_decay(decay, int(n_averaged)))(ema_tensors, model_tensors, n_averaged)
        else:
            lerp(ema_tensors, model_tensors, n_averaged)
    return update


def make_ema(model, decay, dist=None, warmup=False):
    """The EMA of ``model`` (the bare module, after its training rewrites and warm start / --init-from), started at
    its current weights: a torch AveragedModel over parameters and buffers (BatchNorm's running statistics
    averaged too), in no_grad; None when ``decay`` is None or 0 (off). ``warmup``: the decay grows towards
    ``decay`` as ema_warmup_decay says (--ema-warmup). Update it after every optimizer step with update_ema; its
    ``.module`` has the model's exact state_dict keys and layout (channels_last strides included).

    Under torchrun (``dist`` enabled) every rank's EMA starts at rank 0's weights, as DDP starts the model (the
    ranks initialise with different seeds): call it on every rank, before wrap_model."""
    if not decay:
        return None
    ema = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(decay, warmup), use_buffers=True)
    ema.module.requires_grad_(False)
    ema.decay, ema.warmup = float(decay), bool(warmup)
    ema.update_parameters(model)  # the first update copies: the EMA starts at the initial weights
    if dist is not None and dist.enabled:
        for tensor in ema.module.state_dict().values():
            torch.distributed.broadcast(tensor, 0)
    return ema


def update_ema(ema, model):
    """After an optimizer step: fold the weights of ``model`` (any wrapper: DDP, DataParallel, torch.compile) into
    ``ema`` (no-op when None). The parameters are the same on every rank after a step, so is their EMA; BatchNorm's
    running statistics are each rank's own between DDP's broadcasts, and rank 0's EMA of them is the one saved."""
    if ema is not None:
        ema.update_parameters(unwrap_model(model))


def shipped_model(model, ema):
    """What validation and --keep-best judge: the EMA weights when there is an EMA, else the bare training model."""
    return unwrap_model(model) if ema is None else ema.module


def ema_state(ema, key):
    """The checkpoint entries of an EMA: ``key`` (model_ema / generator_ema: the same keys and layout as the
    model's own entry), ema_decay (float), ema_warmup (bool) and ema_n_averaged (weight sets averaged so far:
    1 + steps). {} when off."""
    if ema is None:
        return {}
    return {key: strip_prefixes(ema.module.state_dict()), 'ema_decay': ema.decay, 'ema_warmup': ema.warmup,
            'ema_n_averaged': int(ema.n_averaged)}


def load_ema(ema, ckpt, key, path):
    """On --resume: restore ``ema`` (make_ema of this run's --ema-decay, or None) from the checkpoint exactly.
    The run must keep the checkpoint's --ema-decay and --ema-warmup: another value, EMA switched on or off, is refused
    in one line."""
    recorded = ckpt.get('ema_decay') or None
    wanted = None if ema is None else ema.decay
    if recorded is not None and wanted is not None and bool(ckpt.get('ema_warmup', False)) != ema.warmup:
        was = '--ema-warmup' if ckpt.get('ema_warmup') else '--no-ema-warmup'
        raise UserError(f"{path} was trained with {was}: resume it with {was} (the other would not continue the "
                        f"same run)")
    if recorded != wanted:
        if recorded is None:
            raise UserError(f"{path} has no EMA weights: resume it without --ema-decay (an EMA cannot join a run "
                            f"halfway; train_srresnet.py --init-from FILE --ema-decay {wanted} starts a new run)")
        raise UserError(f"{path} was trained with --ema-decay {recorded}: resume it with --ema-decay {recorded} "
                        f"(another decay, or none, would not continue the same run)")
    if ema is None:
        return
    if key not in ckpt or 'ema_n_averaged' not in ckpt:
        raise UserError(f"{path} records ema_decay but lacks {key}/ema_n_averaged: not a complete checkpoint")
    ema.module.load_state_dict(strip_prefixes(ckpt[key]))
    ema.n_averaged.fill_(int(ckpt['ema_n_averaged']))


# ----------------------------------------------------------------------------------------------
# Checkpoints: saving (latest + best) and resuming
# ----------------------------------------------------------------------------------------------


class CheckpointSaver:
    """The files of a run: ``path`` (the latest state, written every epoch and when the run stops) and, with
    keep_best, ``<path stem>_best.pth`` (the state with the best validation PSNR). Rank 0 writes, atomically
    (checkpoints.save_checkpoint); the other ranks wait at the end of each epoch."""

    def __init__(self, path, dist, keep_best=False):
        self.path, self.dist, self.keep_best = path, dist, keep_best
        self.best_path = best_path_of(path)

    def save(self, state, improved=False):
        """End of an epoch: the latest state, and the best one when ``improved``; then all ranks meet."""
        if self.dist.is_main:
            save_checkpoint(state, self.path)
            if self.keep_best and improved:
                save_checkpoint(state, self.best_path)
        self.dist.barrier()

    def save_stopped(self, state, epoch, step):
        """A stop inside epoch ``epoch`` after ``step`` of its steps: the position, and how to resume."""
        if self.dist.is_main:
            save_checkpoint(state, self.path)
            print(f"stopped at epoch {epoch}, step {step}; saved {self.path}. Resume with:\n  {resume_command()}")


def better(val_psnr, best_psnr):
    """(new best PSNR, improved?) after a validation (val_psnr None: no validation this epoch)."""
    if val_psnr is None:
        return best_psnr, False
    return max(val_psnr, best_psnr if best_psnr is not None else val_psnr), best_psnr is None or val_psnr > best_psnr


def log_name(runs_dir, tag, recorded_args=None, resumed=False):
    """The run's TensorBoard folder under --runs-dir: a resumed run keeps the one its checkpoint recorded (runs
    made before the name was recorded logged to ``tag`` itself); a new run gets its own, '<tag>_<date>-<time>'
    (a number appended when that is taken), so two runs never write their curves into one folder, where
    TensorBoard would draw them over each other."""
    if resumed:
        return (recorded_args or {}).get('log_name', tag)
    name = base = f"{tag}_{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while os.path.lexists(os.path.join(runs_dir, name)):
        n += 1
        name = f"{base}_{n}"
    return name


def run_record(settings, speed):
    """The run's settings as plain data for the checkpoint's 'args', with the speed settings as resolved."""
    return {**plain_args(settings), **speed.flags()}


def check_resume_compatible(ckpt_arch, ckpt_config, arch, config, path):
    """Refuse a checkpoint of another architecture, scale or configuration, naming what differs."""
    if ckpt_arch != arch:
        raise UserError(f"{path} is a {ckpt_arch} checkpoint, not {arch}: pass --arch {ckpt_arch} or another file")
    got = ckpt_config or {}
    diffs = [f"{k}: checkpoint {got.get(k)!r} vs now {v!r}" for k, v in config.items() if k in got and got[k] != v]
    if diffs:
        raise UserError(f"{path} was made with another model configuration ({'; '.join(diffs)}): "
                        f"pass the same flags as when it was created")


# What a resumed run takes from its checkpoint (the flags it was made with, recorded in 'args') unless given again:
# the data pipeline and recipe of both trainers (exact resume needs them), validation, logging, the bad-image policy,
# deterministic algorithms, and the settings held by the optimizer and scheduler states, which a resumed run cannot
# change: given again with another value, those are refused (Adam's param_groups, restored from the checkpoint, keep
# its fused or plain kernel).
RESUMED_FLAGS = ('faithful', 'scale', 'crop_size', 'batch_size', 'epochs', 'lr', 'downsample', 'lr_from',
                 'degradation', 'degradation_opt', 'paired', 'patches_per_image', 'crops_per_visit', 'hflip', 'vflip',
                 'rot90', 'seed', 'fused_adam', 'ema_decay', 'ema_warmup', 'data_folder', 'val_folder', 'val_every',
                 'keep_best', 'runs_dir', 'progress_every', 'max_bad_fraction', 'deterministic')
OPTIMIZER_FLAGS = ('lr', 'lr_schedule', 'lr_milestones', 'lr_gamma', 'fused_adam')
# What checkpoints made before a flag existed did, for a flag whose default has changed since or which changes the
# data: the plain Adam, LR made per patch by bicubic from HR images.
RECORDED_BEFORE = {'fused_adam': False, 'lr_from': 'patch', 'degradation': 'bicubic', 'degradation_opt': [],
                   'paired': False}


def flag_name(dest):
    return '--' + dest.replace('_', '-')


def typed_flag(dest, value):
    """The flag a user types for ``value``: '--no-fused-adam' for a False boolean, else '--fused-adam', '--lr'."""
    return flag_name('no_' + dest if value is False else dest)


def flag_text(dest, value):
    """The flag with its value as typed: '--fused-adam' / '--no-fused-adam' for booleans, else '--lr 0.001'."""
    return typed_flag(dest, value) if isinstance(value, bool) else f"{flag_name(dest)} {value}"


def recorded_settings(ckpt, path, flags, given, keys):
    """What a resumed run takes from its checkpoint's run, {dest name: value}: each of ``keys`` not in ``given``
    (the flags on the command line, utils.given_flags) with the value the checkpoint's 'args' recorded, so the new
    checkpoint records what the run really does. A flag of OPTIMIZER_FLAGS given with another value than recorded
    (``flags``: the values parsed now) is refused (the optimizer state holds the recorded one, and the checkpoint
    would record a change that never happened). Checkpoints older than a flag of RECORDED_BEFORE count as having
    recorded its value there."""
    recorded = ckpt.get('args') or {}
    if recorded:
        recorded = {**RECORDED_BEFORE, **recorded}
    if 'faithful' in given and recorded.get('faithful') is False:
        raise UserError(f"--faithful: {path} was trained with the suite's pipeline, not the tutorial's, and --resume "
                        f"continues that run as it was: drop --faithful (or start a new run from its weights with "
                        f"--init-from)")
    for key in OPTIMIZER_FLAGS:
        if key in given and key in recorded and recorded[key] != getattr(flags, key):
            value = getattr(flags, key)
            raise UserError(f"{flag_text(key, value)}: {path} was trained with {flag_text(key, recorded[key])}, which "
                            f"its optimizer state holds, and --resume continues that run as it was: drop "
                            f"{typed_flag(key, value)} (or start a new run from its weights with --init-from)")
    return {key: recorded[key] for key in keys if key not in given and key in recorded}


def check_training_state(ckpt, path, start_new):
    """--resume needs a run's training state: an optimizer entry ('optimizer' of train_srresnet.py, 'optimizer_g' of
    train_srgan.py; a run of the other trainer is refused later, naming it). A file of weights only (a shipped,
    exported, converted or published model) is refused in one line naming ``start_new``, the flag that starts a new
    run from its weights, before anything else is read from it."""
    if not {'optimizer', 'optimizer_g'} & set(ckpt):
        raise UserError(f"--resume {path}: it holds weights only (a shipped, exported or converted model), not a "
                        f"training run to continue: {start_new} {path} starts a new run from its weights")


def restore_training_state(ckpt, path, scaler, ctx):
    """Restore the GradScaler, the RNG states (single process) and the step counter from a checkpoint.

    Returns (start_epoch, start_step, best_psnr); the caller restores models, optimizers and schedulers, and says
    resumed_line once its data is ready."""
    if ckpt.get('scaler'):
        scaler.load_state_dict(ckpt['scaler'])
    if ckpt.get('rng') and ctx.dist.world_size == 1:
        set_rng_state(ckpt['rng'])
    ctx.global_step = ckpt.get('step', 0)
    ctx.restore_history(ckpt)
    start_epoch, start_step = ckpt['epoch'] + 1, ckpt.get('resume_step', 0)
    return start_epoch, start_step, ckpt.get('best_psnr')


def nothing_left(path, start_epoch, epochs, log):
    """True, having said so in one line, when the run resumed from ``path`` has already done all ``epochs`` (its
    next epoch, ``start_epoch``, is past them): the trainer then stops, exit code 0, writing nothing, rather than
    claiming a resume of an epoch it will not train."""
    if start_epoch <= epochs:
        return False
    done = start_epoch - 1
    log(f"nothing to train: {path} has done {done} epoch{'s' * (done != 1)} of the {epochs} asked; --epochs N "
        f"with N > {done} continues it")
    return True


def resumed_line(path, start_epoch, start_step):
    """What a resumed run says once everything it needs is ready (validation images, data, loader): printed earlier,
    a run that then fails would have claimed a resume that never happened."""
    return f"resumed {path}: epoch {start_epoch}" + (f", step {start_step}" if start_step else '')


# ----------------------------------------------------------------------------------------------
# Flags both trainers share
# ----------------------------------------------------------------------------------------------


def add_training_args(parser, archs=None):
    """Flags shared by both trainers; defaults None mean 'the architecture's own recipe'.

    archs: choices for --arch (train_srresnet.py); None for a fixed architecture (train_srgan.py).
    """
    g = parser.add_argument_group('training')
    if archs:
        g.add_argument('--arch', default='srresnet', choices=archs, help='architecture to train')
    g.add_argument('--scale', type=int, help='upscaling factor (scaling_factor); default 4')
    g.add_argument('--crop-size', type=positive_int, help='HR patch size; default: the arch recipe (srresnet 96)')
    g.add_argument('--batch-size', type=positive_int, help='GLOBAL batch size (split across torchrun processes); '
                   'default: the arch recipe (srresnet 400, srgan 128)')
    g.add_argument('--epochs', type=positive_int, help='last epoch; default: the arch recipe (srresnet 130)')
    g.add_argument('--lr', type=non_negative_float, help='learning rate; default: the arch recipe (srresnet 1e-4)')
    g.add_argument('--downsample', choices=('pil', 'matlab'),
                   help="how LR patches are made: 'pil' bicubic (the tutorial) or 'matlab' imresize; "
                        "default: the arch recipe")
    g.add_argument('--lr-from', choices=('patch', 'image'),
                   help="'patch': each HR crop is downscaled (the tutorial); 'image': each whole training image is "
                        "downscaled once, as the test sets are, and aligned LR / HR crops are cut from the pair "
                        "(BasicSR's paired crops; not with --faithful); default: the arch recipe")
    g.add_argument('--degradation', choices=('bicubic',) + tuple(sorted(degradations.PRESETS)),
                   help="how the LR of a training patch is made: 'bicubic' (by --downsample, the tutorial), or "
                        "Real-ESRGAN's second-order degradations of each HR crop (blur, resize, noise, JPEG; "
                        "'realesrgan': the published ranges, 'light': milder; see docs/real-photos.md), for photos; "
                        "default: bicubic")
    g.add_argument('--degradation-opt', action='append', metavar='KEY=VALUE',
                   help='change one range of --degradation, e.g. second.jpeg_range=50,95 (repeatable)')
    g.add_argument('--paired', action='store_true',
                   help='train on the LR / HR pairs of DATA_FOLDER/train_pairs.json (written by create_data_lists.py '
                        'for paired training folders): aligned crops of the LR images given')
    g.add_argument('--patches-per-image', type=positive_int,
                   help='random crops taken from each image per epoch; default: the arch recipe (srresnet 1, as '
                        'the tutorial)')
    g.add_argument('--resume', nargs='?', const='auto', metavar='CHECKPOINT',
                   help='continue from CHECKPOINT (default when given without a value: the output checkpoint), '
                        'with the settings it was made with (flags given now that change none of them: speed, '
                        '--epochs, --max-steps ... apply)')
    g.add_argument('--restart', action='store_true',
                   help='start a new run even though RESULTS_DIR/checkpoint_<arch>.pth exists: the old file is kept '
                        'under a new name (checkpoint_<arch>.<date-time>.pth); without it such a run is refused')
    g.add_argument('--results-dir', default='results', help='where checkpoints go')
    g.add_argument('--runs-dir', default='runs', help='TensorBoard log folder')
    g.add_argument('--ngpu', type=positive_int, default=1, help='GPUs for the tutorial\'s DataParallel (CUDA only)')
    g.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm under torchrun on CUDA')
    g = parser.add_argument_group('speed (defaults: the fastest settings that keep accuracy)')
    g.add_argument('--faithful', action='store_true',
                   help="the tutorial's exact loop: fp32, NCHW, eager, one PIL decode + PIL bicubic per patch")
    g.add_argument('--amp', choices=('auto', 'off', 'bf16', 'fp16'), default='auto',
                   help='mixed precision; auto: bf16 on CUDA GPUs and CPUs with native bf16 (AMX/AVX512-BF16), '
                        'else off')
    g.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                   help='channels_last memory format (default: on, off with --faithful)')
    g.add_argument('--compile', action='store_true', help='torch.compile the model(s)')
    g.add_argument('--tail-before-shuffle', action=argparse.BooleanOptionalAction, default=None,
                   help="SRResNet/SRGAN: run the last 9x9 conv before the last pixel shuffle, the same function "
                        "(default: on, off with --faithful)")
    g.add_argument('--fast-prelu', action=argparse.BooleanOptionalAction, default=None,
                   help="PReLU's CPU backward as two vectorised passes, the same gradients up to summation order "
                        "(default: on, off with --faithful)")
    g.add_argument('--fused-adam', action=argparse.BooleanOptionalAction, default=None,
                   help="torch's fused Adam kernel, the same update up to rounding (default: on for CPU and CUDA, "
                        "off with --faithful)")
    g.add_argument('--fast-tanh', action=argparse.BooleanOptionalAction, default=None,
                   help="tanh on the CPU (fp32 and bf16) as 2 * sigmoid(2x) - 1 computed in fp32, within 2e-7 "
                        "and ~2.3x faster (ESPCN, SRResNet's output) (default: on, off with --faithful)")
    g.add_argument('--cache-gb', type=float,
                   help='decode the training images once into RAM when they fit in this many GiB '
                        '(default: a quarter of RAM); otherwise decode on each visit')
    g.add_argument('--crops-per-visit', type=positive_int,
                   help='random crops per image decode (default: 1 with the RAM cache, 4 when streaming)')
    g.add_argument('--hflip', action=argparse.BooleanOptionalAction, default=None,
                   help='random horizontal flips (default: the arch recipe)')
    g.add_argument('--vflip', action=argparse.BooleanOptionalAction, default=None,
                   help='random vertical flips (default: the arch recipe)')
    g.add_argument('--rot90', action=argparse.BooleanOptionalAction, default=None,
                   help='random 90-degree rotations (default: the arch recipe)')
    g.add_argument('--max-bad-fraction', type=float, default=0.05,
                   help='stop when more than this share of training image loads fail')
    g.add_argument('--val-folder', help='image folder (e.g. Set5) for validation PSNR, standard protocol')
    g.add_argument('--val-every', type=positive_int, default=1, help='validate every N epochs (with --val-folder)')
    g.add_argument('--keep-best', action='store_true',
                   help='also keep results/checkpoint_<arch>_best.pth, best by validation PSNR (needs --val-folder)')
    g.add_argument('--ema-decay', type=ema_decay, metavar='D',
                   help='keep an exponential moving average of the weights, ema = D * ema + (1 - D) * w after each '
                        'step (e.g. 0.999), saved next to them; validation and --keep-best judge it, eval.py and '
                        'test.py use it (default: off, as the tutorial, or the recipe\'s; 0 is off too)')
    g.add_argument('--ema-warmup', action=argparse.BooleanOptionalAction, default=None,
                   help='with --ema-decay D: the decay of update n is min(D, (1 + n) / (10 + n)), so the first '
                        'weights leave the average within a few hundred steps (default: off, or the recipe\'s)')
    g.add_argument('--dist-timeout', type=positive_int, default=600, help='seconds before a stuck collective fails')
    g.add_argument('--progress-every', type=non_negative_float, default=60., metavar='SECONDS',
                   help='without a terminal (output to a file or a job log): a progress line (step, steps/s, loss, '
                        'ETA) every SECONDS; 0: none')
    g.add_argument('--max-steps', type=positive_int,
                   help='stop after this many optimizer steps in total, save and exit 0 (as Ctrl-C does)')
    g.add_argument('--deterministic', action='store_true',
                   help='deterministic algorithms (bit-exact resume on CPU; slower on GPU)')
    return g


def ema_decay(text):
    """argparse type of --ema-decay: a float in [0, 1) (0 means off)."""
    value = parse_number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (e.g. 0.999; 0 is off), got {value}")
    return value


def speed_of(settings, device):
    """resolve_speed with the speed flags of add_training_args (a run's settings)."""
    s = settings
    return resolve_speed(device, faithful=s.faithful, amp=s.amp, channels_last=s.channels_last,
                         tail_before_shuffle=s.tail_before_shuffle, fast_prelu=s.fast_prelu, compile=s.compile,
                         fused_adam=s.fused_adam, fast_tanh=s.fast_tanh)
