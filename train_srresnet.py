"""Train SRResNet with the tutorial's recipe, or any pixel-loss model of the suite (--arch).

    python create_data_lists.py --train-folders data/COCO2014/train2014 data/COCO2014/val2014 \
        --test-folders data/Set5 data/Set14 data/BSD100
    python train_srresnet.py                          # tutorial: SRResNet x4, Adam 1e-4, MSE, batch 400, 130 epochs
    python train_srresnet.py --batch-size 64 --epochs 10 --device cuda
    python train_srresnet.py --resume                 # continue results/checkpoint_srresnet.pth
    python train_srresnet.py --recipe cpu-291 --val-folder data/Set5   # SRResNet x4 on T91 + BSD200 in 2.5 h on a CPU
    python train_srresnet.py --arch espcn --scale 3 --val-folder data/Set5 --keep-best
    python train_srresnet.py --arch edsr --scale 2 --ema-decay 0.999   # also keep an EMA of the weights (model_ema)
    python train_srresnet.py --arch msrresnet --init-from msrresnet_x4.safetensors   # new run from those weights
    python train_srresnet.py --ngpu 2                 # the tutorial's DataParallel, one process
    torchrun --nproc-per-node 4 train_srresnet.py --batch-size 400      # DDP: --batch-size is the global batch
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        train_srresnet.py --batch-size 400

Writes results/checkpoint_<arch>.pth every epoch (atomically), TensorBoard logs under runs/, and at the end (or
when stopped) results/<arch>_curves.png: the loss and validation PSNR per epoch against steps and wall time.
Ctrl-C or SIGTERM finishes the current step, saves, and prints the command that resumes.
"""
import ast
import os
import time
import warnings
from typing import NamedTuple

import torch
from torch import nn

import checkpoints
import inference
import models
import training
from checkpoints import FORMAT_VERSION, load_checkpoint, strip_prefixes
from utils import (AverageMeter, Settings, UserError, autocast, get_rng_state, given_flags, keep_freed_memory,
                   make_parser, odd_positive_int, positive_int, run_cli, seed_everything, set_determinism, unwrap_model)

# What a resumed run takes from its checkpoint unless given again (see training.recorded_settings).
RESUMED_FLAGS = training.RESUMED_FLAGS + ('recipe', 'loss', 'lr_schedule', 'lr_milestones', 'lr_gamma', 'warmup_steps',
                                          'large_kernel_size', 'small_kernel_size', 'n_channels', 'n_blocks',
                                          'model_opt', 'init_from')


def build_parser():
    parser = make_parser(__doc__, training=True)
    training.add_training_args(parser, archs=sorted(a for a, spec in models.ARCHS.items() if spec.train))
    parser.add_argument_group('training').add_argument(
        '--recipe', choices=sorted({name for spec in models.ARCHS.values() for name in spec.recipes}),
        help="a named recipe of the arch instead of its default one (the tutorial's, for srresnet): 'cpu-291' is "
             "SRResNet x4 on the 291 images of T91 + BSD200 on a CPU (L1, Adam 1e-3 with warm-up and cosine decay, "
             "batch 16, EMA); every flag given overrides it (see README, Training)")
    g = parser.add_argument_group('model (SRResNet flags as in the tutorial; --model-opt for any arch)')
    g.add_argument('--large-kernel-size', type=odd_positive_int, default=9, help='srresnet: first/last conv kernel')
    g.add_argument('--small-kernel-size', type=odd_positive_int, default=3, help='srresnet: inner conv kernel')
    g.add_argument('--n-channels', type=positive_int, default=64, help='srresnet: inner channels')
    g.add_argument('--n-blocks', type=positive_int, default=16, help='srresnet: residual blocks')
    g.add_argument('--model-opt', action='append', default=[], metavar='KEY=VALUE',
                   help='constructor option of the chosen arch, e.g. n_feats=32, channels=[512,256,64]')
    g.add_argument('--loss', choices=('mse', 'l1'), help='pixel loss; default: the arch recipe (srresnet mse)')
    g.add_argument('--lr-schedule', choices=('step', 'cosine', 'warmup-cosine'),
                   help="'step': lr *= --lr-gamma at each --lr-milestones epoch; 'cosine': cosine decay to lr/100 "
                        "over --epochs; 'warmup-cosine': per step, linear warm-up over --warmup-steps, then cosine "
                        "decay to lr/100 at the last step; default: the arch recipe (srresnet: step without "
                        "milestones = constant)")
    g.add_argument('--warmup-steps', type=positive_int,
                   help='optimizer steps of linear warm-up of --lr-schedule warmup-cosine (default: the recipe)')
    g.add_argument('--lr-milestones', type=int, nargs='*', help='epochs at which lr *= --lr-gamma')
    g.add_argument('--lr-gamma', type=float, help='learning-rate decay factor at each milestone')
    g.add_argument('--init-from', metavar='FILE',
                   help="start a new run from these weights (any file eval.py reads: a checkpoint, export.py's "
                        "safetensors, published weights); weights only, of the same --arch and configuration")
    return parser


def parse_model_opts(opts, parser):
    """['k=v', ...] -> {k: literal v} (strings when v is not a Python literal)."""
    out = {}
    for opt in opts:
        key, sep, value = opt.partition('=')
        if not sep:
            parser.error(f"--model-opt {opt!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def resolve_settings(parser, argv=None):
    """The run's settings, made once from the flags (a frozen utils.Settings): a resumed run's recorded values where
    not given again, the architecture's recipe where unset, the model configuration, the checkpoint's path;
    impossible combinations rejected before any work."""
    flags = parser.parse_args(argv)
    if flags.init_from and flags.resume:
        parser.error("--init-from starts a new run from weights, --resume continues one: give only one")
    run = dict(vars(flags))  # the settings being decided (the parsed flags themselves stay as they are)
    if flags.resume:  # a resumed run continues with the settings of its checkpoint
        path = (os.path.join(flags.results_dir, f"checkpoint_{flags.arch}.pth") if flags.resume == 'auto'
                else flags.resume)
        ckpt, given = load_checkpoint(path), given_flags(parser, argv)
        training.check_training_state(ckpt, path, '--init-from')
        if 'arch' not in given and flags.resume != 'auto' and ckpt.get('arch') in models.ARCHS:
            run['arch'] = ckpt['arch']
        run.update(training.recorded_settings(ckpt, path, flags, given, RESUMED_FLAGS))
        run['log_name'] = training.log_name(run['runs_dir'], run['arch'], ckpt.get('args'), resumed=True)
        del ckpt
    else:
        run['log_name'] = training.log_name(run['runs_dir'], run['arch'])
    arch = run['arch']
    scale = run['scale'] = 4 if run['scale'] is None else run['scale']
    try:
        models.check_scale(arch, scale)
    except ValueError as e:
        parser.error(f"--scale: {e}")
    run['lr_from'], run['degradation'] = training.resolve_lr_source(run['faithful'], run['lr_from'], run['degradation'],
                                                                     run['degradation_opt'], run['paired'])
    try:
        recipe = models.train_defaults(arch, scale, run['recipe'])
    except ValueError as e:
        parser.error(f"--recipe: {e}")
    for key, value in recipe.items():
        if run.get(key) is None:
            run[key] = value
    run['ema_warmup'] = bool(run['ema_warmup'])
    if run['lr_schedule'] == 'warmup-cosine' and run['warmup_steps'] is None:
        parser.error("--lr-schedule warmup-cosine needs --warmup-steps (e.g. --warmup-steps 500)")
    if run['crop_size'] % scale:
        parser.error(f"--crop-size {run['crop_size']} is not divisible by --scale {scale}")
    if run['keep_best'] and not run['val_folder']:
        parser.error("--keep-best needs --val-folder (e.g. --val-folder data/Set5)")
    if not 0 <= run['max_bad_fraction'] < 1:
        parser.error("--max-bad-fraction must be in [0, 1)")
    overrides = parse_model_opts(run['model_opt'], parser)
    if arch == 'srresnet':
        overrides = dict(large_kernel_size=run['large_kernel_size'], small_kernel_size=run['small_kernel_size'],
                         n_channels=run['n_channels'], n_blocks=run['n_blocks'], **overrides)
    try:
        run['model_config'] = models.model_config(arch, scale, **overrides)
        models.build_model(arch, run['model_config'])  # fail now on impossible options, not after loading data
        models.arch_spec(arch, run['model_config'])
    except (ValueError, TypeError) as e:
        parser.error(f"--model-opt: {e}")
    run['checkpoint_path'] = os.path.join(run['results_dir'], f"checkpoint_{arch}.pth")
    if run['resume'] == 'auto':
        run['resume'] = run['checkpoint_path']
    return Settings(**run)


class Trainee(NamedTuple):
    """What the steps update: the network (the bare model until main wraps it for DDP / DataParallel /
    torch.compile), its optimizer, learning-rate schedule, loss and GradScaler, and the EMA of its weights (None
    without --ema-decay)."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    criterion: nn.Module
    scaler: torch.amp.GradScaler
    ema: object = None


def train_one_epoch(trainee, loader, ctx, speed, spec, settings, epoch, start_step, lr_at=None):
    """One pass over the loader (from ``start_step``), updating the trainee's EMA (if any) after each step; ``spec``:
    how the network is fed (models.arch_spec); ``lr_at``: the learning rate of each global step (a per-step
    schedule), or None (an epoch schedule sets it). Returns ({'loss': mean loss}, next step, stopped early?)."""
    model, optimizer, scaler = trainee.model, trainee.optimizer, trainee.scaler
    model.train()
    meter, device, scale = AverageMeter(), ctx.device, settings.scale
    start, n_patches, step = time.perf_counter(), 0, start_step
    bar = ctx.progress(loader, desc=f"epoch {epoch}")
    for step, batch in enumerate(bar, start=start_step):
        lr, hr = training.batch_to_device(batch, device, scale, settings.downsample)  # (N, 3, h, w), (N, 3, sh, sw)
        x = inference.model_input(spec, lr, scale)  # in the model's input space
        target = inference.model_target(spec, hr)  # in its output space
        if speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, speed.precision):
            sr = model(x)  # (N, C, s*h, s*w)
        loss = trainee.criterion(sr.float(), target)
        if lr_at is not None:
            training.set_lr(optimizer, lr_at(ctx.global_step))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        training.update_ema(trainee.ema, model)
        if step == start_step:
            ctx.log_images(f"epoch_{epoch}", epoch, x, sr, target, spec.in_type, spec.out_type)
        values, stop = ctx.end_step({'loss': loss}, epoch, step)
        meter.update(values['loss'], lr.size(0))
        n_patches += lr.size(0) * ctx.dist.world_size
        if hasattr(bar, 'set_postfix'):
            bar.set_postfix(loss=f"{meter.avg:.4g}", patches_s=training.patches_per_second(n_patches, start))
        loader.dataset.check_failures()
        if stop:
            return {'loss': meter.avg}, step + 1, True
    return {'loss': meter.avg}, step + 1, False


def recipe_line(settings):
    """What the run trains with, for its first line: the recipe's name and the settings it resolved to."""
    s = settings
    schedule = s.lr_schedule + (f" over {s.warmup_steps} warm-up steps" if s.lr_schedule == 'warmup-cosine' else '')
    ema = f"EMA {s.ema_decay}{' with warm-up' if s.ema_warmup else ''}" if s.ema_decay else 'no EMA'
    return (f"recipe {s.recipe or 'default'} ({s.arch} x{s.scale}): {s.loss} loss, lr {s.lr} {schedule}, batch "
            f"{s.batch_size}, {s.crop_size}-px HR crops, {s.patches_per_image} per image per epoch, {s.epochs} "
            f"epochs, {training.lr_source_text(s)}, {ema}")


def checkpoint_state(trainee, global_step, settings, speed, epoch, resume_step, best_psnr):
    """Everything needed to resume exactly, as state_dicts and plain data (with --ema-decay: model_ema, the EMA
    weights under the same keys as model, ema_decay and ema_n_averaged)."""
    return {
        'format_version': FORMAT_VERSION, 'arch': settings.arch, 'model_config': settings.model_config,
        'epoch': epoch, 'resume_step': resume_step, 'step': global_step,
        'model': strip_prefixes(unwrap_model(trainee.model).state_dict()), 'optimizer': trainee.optimizer.state_dict(),
        'scheduler': trainee.scheduler.state_dict(), 'scaler': trainee.scaler.state_dict(), 'rng': get_rng_state(),
        'args': training.run_record(settings, speed), 'best_psnr': best_psnr,
        **training.ema_state(trainee.ema, 'model_ema'),
    }


def build_training(settings, speed, device):
    """The Trainee of the run's settings (on ``device``): model, optimizer, schedule, loss and GradScaler; no EMA yet
    (it starts at the initial weights, after --init-from: training.make_ema)."""
    model = training.apply_speed(models.build_model(settings.arch, settings.model_config).to(device), speed)
    optimizer = training.make_adam(model.parameters(), settings.lr, speed)
    if settings.lr_schedule == 'cosine':
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs,
                                                               eta_min=settings.lr / 100)
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(settings.lr_milestones),
                                                         gamma=settings.lr_gamma)
    criterion = nn.MSELoss() if settings.loss == 'mse' else nn.L1Loss()
    return Trainee(model, optimizer, scheduler, criterion, training.make_scaler(device, speed))


def load_init(path, settings, model, log):
    """--init-from: load the weights of ``path`` into ``model``; refuses another architecture or configuration."""
    init = checkpoints.load_sr_model(path)
    if init.arch not in models.ARCHS:
        raise UserError(f"--init-from {path} holds a {init.source} network, which this suite does not train")
    without_init = [{k: v for k, v in c.items() if k != 'init'} for c in (init.config, settings.model_config)]
    training.check_resume_compatible(init.arch, without_init[0], settings.arch, without_init[1], path)  # init: new
    model.load_state_dict(init.state)
    log(f"initial weights from {path} ({init.source}; weights only: a new run)")


def load_resume(path, ctx, settings, trainee):
    """Continue from a checkpoint of the same architecture and configuration (checked before any data is read),
    and the same --ema-decay (the trainee's EMA is restored too). Returns (start_epoch, start_step, best_psnr)."""
    ckpt = load_checkpoint(path, map_location=ctx.device)
    training.check_resume_compatible(ckpt.get('arch', 'srresnet'), ckpt.get('model_config'), settings.arch,
                                     settings.model_config, path)
    trainee.model.load_state_dict(strip_prefixes(ckpt['model']))
    training.load_ema(trainee.ema, ckpt, 'model_ema', path)
    trainee.optimizer.load_state_dict(ckpt['optimizer'])
    if ckpt.get('scheduler'):
        trainee.scheduler.load_state_dict(ckpt['scheduler'])
    return training.restore_training_state(ckpt, path, trainee.scaler, ctx)


def step_epoch_schedule(scheduler):
    """The learning-rate schedule's step at the end of an epoch. A run resumed after the last step of an epoch takes
    it before any optimizer step of its own: PyTorch's warning about that order (its first rate skipped) does not
    apply to a schedule restored from the checkpoint, so a resume does not print it."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', r'Detected call of `lr_scheduler\.step\(\)` before', UserWarning)
        scheduler.step()


def main(argv=None):
    settings = resolve_settings(build_parser(), argv)
    with training.TrainContext.of(settings) as ctx:
        speed = training.speed_of(settings, ctx.device)
        if not speed.faithful:
            keep_freed_memory()
        seed_everything(settings.seed + ctx.dist.rank)
        set_determinism(settings.deterministic)
        trainee = build_training(settings, speed, ctx.device)
        start_epoch, start_step, best_psnr = 1, 0, None
        if settings.init_from and not settings.resume:  # resumed, it is only the record of where the run began
            load_init(settings.init_from, settings, trainee.model, ctx.log)
        ema = training.make_ema(trainee.model, settings.ema_decay, ctx.dist, settings.ema_warmup)  # resume restores it
        trainee = trainee._replace(ema=ema)
        if settings.resume:
            start_epoch, start_step, best_psnr = load_resume(settings.resume, ctx, settings, trainee)
            if training.nothing_left(settings.resume, start_epoch, settings.epochs, ctx.log):
                return 0
        val_images = training.load_val_images(settings.val_folder) if settings.val_folder else None
        bicubic = training.bicubic_psnr(val_images, settings.scale) if val_images else None  # the curves' reference
        dataset, collate = training.build_train_dataset(settings, log=ctx.log)
        ctx.open_writer(os.path.join(settings.runs_dir, settings.log_name), tag=settings.arch)
        net = training.wrap_model(trainee.model, ctx.dist, settings.ngpu, settings.sync_bn)
        if speed.compile:
            net = torch.compile(net)
        trainee = trainee._replace(model=net)  # the steps run the wrapped network
        loader, sampler = training.make_train_loader(dataset, settings.batch_size, ctx.dist, settings.workers,
                                                     settings.seed, pin_memory=ctx.device.type == 'cuda',
                                                     collate_fn=collate)
        saver = training.CheckpointSaver(settings.checkpoint_path, ctx.dist, keep_best=settings.keep_best)
        spec = models.arch_spec(settings.arch, settings.model_config)  # EDSR/RCAN with rgb_range 1 take [0, 1]
        lr_at = training.step_schedule(settings.lr_schedule, settings.lr, settings.epochs * len(loader),
                                       settings.warmup_steps)
        ctx.log(recipe_line(settings))
        if settings.resume:
            ctx.log(training.resumed_line(settings.resume, start_epoch, start_step))

        def state(epoch, resume_step):
            return {**checkpoint_state(trainee, ctx.global_step, settings, speed, epoch, resume_step, best_psnr),
                    **ctx.history_state()}

        for epoch in range(start_epoch, settings.epochs + 1):
            sampler.set_epoch(epoch, start_step * loader.batch_size)
            losses, next_step, stopped = train_one_epoch(trainee, loader, ctx, speed, spec, settings, epoch,
                                                         start_step, lr_at)
            start_step = 0
            if stopped:
                training.stop_workers(loader)
                ctx.write_curves(f"{settings.arch} x{settings.scale}")  # first: the resume line stays last
                saver.save_stopped(state(epoch - 1, next_step), epoch, next_step)
                return 0
            step_epoch_schedule(trainee.scheduler)
            val_psnr = raw_psnr = None
            if val_images is not None and ctx.dist.is_main and training.validation_due(epoch, settings.val_every,
                                                                                       settings.epochs):
                val_psnr, raw_psnr = training.validate_run(net, trainee.ema, spec, settings.scale, ctx.device,
                                                           val_images)
            best_psnr, improved = training.better(val_psnr, best_psnr)
            ctx.record_epoch(epoch, losses, val_psnr, trainee.ema is not None, bicubic, raw_psnr)
            saver.save(state(epoch, 0), improved)
            ctx.log_epoch(epoch, settings.epochs, losses, val_psnr, best_psnr, ema=trainee.ema is not None)
        training.stop_workers(loader)
        ctx.write_curves(f"{settings.arch} x{settings.scale}")
        ctx.log(f"done: {settings.checkpoint_path}")
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
