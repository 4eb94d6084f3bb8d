"""Train SRResNet with the tutorial's recipe, or any pixel-loss model of the suite (--arch).

    python create_data_lists.py --train-folders data/COCO2014/train2014 data/COCO2014/val2014 \
        --test-folders data/Set5 data/Set14 data/BSD100
    python train_srresnet.py                          # tutorial: SRResNet x4, Adam 1e-4, MSE, batch 400, 130 epochs
    python train_srresnet.py --batch-size 64 --epochs 10 --device cuda
    python train_srresnet.py --resume                 # continue results/checkpoint_srresnet.pth
    python train_srresnet.py --arch espcn --scale 3 --val-folder data/Set5 --keep-best
    python train_srresnet.py --arch edsr --scale 2 --ema-decay 0.999   # also keep an EMA of the weights (model_ema)
    python train_srresnet.py --arch msrresnet --init-from msrresnet_x4.safetensors   # new run from those weights
    python train_srresnet.py --ngpu 2                 # the tutorial's DataParallel, one process
    torchrun --nproc-per-node 4 train_srresnet.py --batch-size 400      # DDP: --batch-size is the global batch
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        train_srresnet.py --batch-size 400

Writes results/checkpoint_<arch>.pth every epoch (atomically), TensorBoard logs under runs/.
Ctrl-C or SIGTERM finishes the current step, saves, and prints the command that resumes.
"""
import ast
import os
import time

import torch
from torch import nn

import checkpoints
import inference
import models
import training
from checkpoints import FORMAT_VERSION, load_checkpoint, strip_prefixes
from utils import (AverageMeter, UserError, autocast, get_rng_state, given_flags, keep_freed_memory, make_parser,
                   odd_positive_int, positive_int, run_cli, seed_everything, set_determinism, unwrap_model)

# What a resumed run takes from its checkpoint unless given again (see training.settings_from_checkpoint).
RESUMED_FLAGS = training.RESUMED_FLAGS + ('loss', 'lr_schedule', 'lr_milestones', 'lr_gamma', 'large_kernel_size',
                                          'small_kernel_size', 'n_channels', 'n_blocks', 'model_opt')


def build_parser():
    parser = make_parser(__doc__, training=True)
    training.add_training_args(parser, archs=sorted(a for a, spec in models.ARCHS.items() if spec.train))
    g = parser.add_argument_group('model (SRResNet flags as in the tutorial; --model-opt for any arch)')
    g.add_argument('--large-kernel-size', type=odd_positive_int, default=9, help='srresnet: first/last conv kernel')
    g.add_argument('--small-kernel-size', type=odd_positive_int, default=3, help='srresnet: inner conv kernel')
    g.add_argument('--n-channels', type=positive_int, default=64, help='srresnet: inner channels')
    g.add_argument('--n-blocks', type=positive_int, default=16, help='srresnet: residual blocks')
    g.add_argument('--model-opt', action='append', default=[], metavar='KEY=VALUE',
                   help='constructor option of the chosen arch, e.g. n_feats=32, channels=[512,256,64]')
    g.add_argument('--loss', choices=('mse', 'l1'), help='pixel loss; default: the arch recipe (srresnet mse)')
    g.add_argument('--lr-schedule', choices=('step', 'cosine'),
                   help="'step': lr *= --lr-gamma at each --lr-milestones epoch; 'cosine': cosine decay to lr/100 "
                        "over --epochs; default: the arch recipe (srresnet: step without milestones = constant)")
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


def resolve_args(parser, argv=None):
    """Parse flags, fill the architecture's defaults, and reject impossible combinations before any work."""
    args = parser.parse_args(argv)
    if args.init_from and args.resume:
        parser.error("--init-from starts a new run from weights, --resume continues one: give only one")
    if args.resume:  # a resumed run continues with the settings of its checkpoint
        path = (os.path.join(args.results_dir, f"checkpoint_{args.arch}.pth") if args.resume == 'auto'
                else args.resume)
        ckpt, given = load_checkpoint(path), given_flags(parser, argv)
        if 'arch' not in given and args.resume != 'auto' and ckpt.get('arch') in models.ARCHS:
            args.arch = ckpt['arch']
        training.settings_from_checkpoint(ckpt, path, args, given, RESUMED_FLAGS)
        del ckpt
    args.scale = 4 if args.scale is None else args.scale
    try:
        models.check_scale(args.arch, args.scale)
    except ValueError as e:
        parser.error(f"--scale: {e}")
    args.lr_from = training.faithful_lr_from(args.faithful, args.lr_from)
    for key, value in models.train_defaults(args.arch, args.scale).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.crop_size % args.scale:
        parser.error(f"--crop-size {args.crop_size} is not divisible by --scale {args.scale}")
    if args.keep_best and not args.val_folder:
        parser.error("--keep-best needs --val-folder (e.g. --val-folder data/Set5)")
    if not 0 <= args.max_bad_fraction < 1:
        parser.error("--max-bad-fraction must be in [0, 1)")
    overrides = parse_model_opts(args.model_opt, parser)
    if args.arch == 'srresnet':
        overrides = dict(large_kernel_size=args.large_kernel_size, small_kernel_size=args.small_kernel_size,
                         n_channels=args.n_channels, n_blocks=args.n_blocks, **overrides)
    try:
        args.model_config = models.model_config(args.arch, args.scale, **overrides)
        models.build_model(args.arch, args.model_config)  # fail now on impossible options, not after loading data
        models.arch_spec(args.arch, args.model_config)
    except (ValueError, TypeError) as e:
        parser.error(f"--model-opt: {e}")
    args.checkpoint_path = os.path.join(args.results_dir, f"checkpoint_{args.arch}.pth")
    if args.resume == 'auto':
        args.resume = args.checkpoint_path
    return args


def train_one_epoch(model, criterion, optimizer, scaler, loader, dataset, ctx, speed, spec, args, epoch, start_step,
                    ema=None):
    """One pass over the loader (from ``start_step``), updating ``ema`` (if any) after each step.
    Returns ({'loss': mean loss}, next step, stopped early?)."""
    model.train()
    meter, device, scale = AverageMeter(), ctx.device, args.scale
    start, n_patches, step = time.perf_counter(), 0, start_step
    bar = ctx.progress(loader, desc=f"epoch {epoch}")
    for step, batch in enumerate(bar, start=start_step):
        lr, hr = training.batch_to_device(batch, device, scale, args.downsample)  # (N, 3, h, w), (N, 3, sh, sw)
        x = inference.model_input(spec, lr, scale)  # in the model's input space
        target = inference.model_target(spec, hr)  # in its output space
        if speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, speed.precision):
            sr = model(x)  # (N, C, s*h, s*w)
        loss = criterion(sr.float(), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        training.update_ema(ema, model)
        if step == start_step:
            ctx.log_images(f"epoch_{epoch}", epoch, x, sr, target, spec.in_type, spec.out_type)
        values, stop = ctx.end_step({'loss': loss}, epoch, step, args.checkpoint_path)
        meter.update(values['loss'], lr.size(0))
        n_patches += lr.size(0) * ctx.dist.world_size
        if hasattr(bar, 'set_postfix'):
            bar.set_postfix(loss=f"{meter.avg:.4g}", patches_s=training.patches_per_second(n_patches, start))
        dataset.check_failures()
        if stop:
            return {'loss': meter.avg}, step + 1, True
    return {'loss': meter.avg}, step + 1, False


def checkpoint_state(model, optimizer, scheduler, scaler, global_step, args, speed, epoch, resume_step, best_psnr,
                     ema=None):
    """Everything needed to resume exactly, as state_dicts and plain data (with --ema-decay: model_ema, the EMA
    weights under the same keys as model, ema_decay and ema_n_averaged)."""
    return {
        'format_version': FORMAT_VERSION, 'arch': args.arch, 'model_config': args.model_config,
        'epoch': epoch, 'resume_step': resume_step, 'step': global_step,
        'model': strip_prefixes(unwrap_model(model).state_dict()), 'optimizer': optimizer.state_dict(),
        'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'rng': get_rng_state(),
        'args': training.run_record(args, speed), 'best_psnr': best_psnr, **training.ema_state(ema, 'model_ema'),
    }


def build_training(args, speed, device):
    """Model, optimizer, scheduler, loss and GradScaler for ``args`` (on ``device``)."""
    model = training.apply_speed(models.build_model(args.arch, args.model_config).to(device), speed)
    optimizer = training.make_adam(model.parameters(), args.lr, speed)
    if args.lr_schedule == 'cosine':
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=args.lr / 100)
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(args.lr_milestones),
                                                         gamma=args.lr_gamma)
    criterion = nn.MSELoss() if args.loss == 'mse' else nn.L1Loss()
    return model, optimizer, scheduler, criterion, training.make_scaler(device, speed)


def load_init(path, args, model, log):
    """--init-from: load the weights of ``path`` into ``model``; refuses another architecture or configuration."""
    init = checkpoints.load_sr_model(path)
    if init.arch not in models.ARCHS:
        raise UserError(f"--init-from {path} holds a {init.source} network, which this suite does not train")
    without_init = [{k: v for k, v in c.items() if k != 'init'} for c in (init.config, args.model_config)]
    training.check_resume_compatible(init.arch, without_init[0], args.arch, without_init[1], path)  # init: overwritten
    model.load_state_dict(init.state)
    log(f"initial weights from {path} ({init.source}; weights only: a new run)")


def load_resume(path, ctx, args, model, optimizer, scheduler, scaler, ema=None):
    """Continue from a checkpoint of the same architecture and configuration (checked before any data is read),
    and the same --ema-decay (``ema``: restored too). Returns (start_epoch, start_step, best_psnr)."""
    ckpt = load_checkpoint(path, map_location=ctx.device)
    training.check_resume_compatible(ckpt.get('arch', 'srresnet'), ckpt.get('model_config'), args.arch,
                                     args.model_config, path)
    model.load_state_dict(strip_prefixes(ckpt['model']))
    training.load_ema(ema, ckpt, 'model_ema', path)
    optimizer.load_state_dict(ckpt['optimizer'])
    if ckpt.get('scheduler'):
        scheduler.load_state_dict(ckpt['scheduler'])
    return training.restore_training_state(ckpt, path, scaler, ctx)


def main(argv=None):
    args = resolve_args(build_parser(), argv)
    with training.TrainContext(args.device, ngpu=args.ngpu, dist_timeout=args.dist_timeout, max_steps=args.max_steps,
                               checkpoint=args.checkpoint_path, resume=args.resume, restart=args.restart) as ctx:
        speed = training.speed_of(args, ctx.device)
        if not speed.faithful:
            keep_freed_memory()
        seed_everything(args.seed + ctx.dist.rank)
        set_determinism(args.deterministic)
        model, optimizer, scheduler, criterion, scaler = build_training(args, speed, ctx.device)
        start_epoch, start_step, best_psnr = 1, 0, None
        if args.init_from:
            load_init(args.init_from, args, model, ctx.log)
        ema = training.make_ema(model, args.ema_decay, ctx.dist)  # at the initial weights; resume restores it
        if args.resume:
            start_epoch, start_step, best_psnr = load_resume(args.resume, ctx, args, model, optimizer, scheduler,
                                                             scaler, ema)
        val_images = training.load_val_images(args.val_folder) if args.val_folder else None
        dataset, collate = training.dataset_of(args, log=ctx.log)
        ctx.open_writer(os.path.join(args.runs_dir, args.arch), tag=args.arch)
        net = training.wrap_model(model, ctx.dist, args.ngpu, args.sync_bn)
        if speed.compile:
            net = torch.compile(net)
        loader, sampler = training.make_train_loader(dataset, args.batch_size, ctx.dist, args.workers, args.seed,
                                                     pin_memory=ctx.device.type == 'cuda', collate_fn=collate)
        saver = training.CheckpointSaver(args.checkpoint_path, ctx.dist, keep_best=args.keep_best)
        spec = models.arch_spec(args.arch, args.model_config)  # EDSR/RCAN with rgb_range 1 take [0, 1]

        def state(epoch, resume_step):
            return checkpoint_state(net, optimizer, scheduler, scaler, ctx.global_step, args, speed, epoch,
                                    resume_step, best_psnr, ema)

        for epoch in range(start_epoch, args.epochs + 1):
            sampler.set_epoch(epoch, start_step * loader.batch_size)
            losses, next_step, stopped = train_one_epoch(net, criterion, optimizer, scaler, loader, dataset, ctx,
                                                         speed, spec, args, epoch, start_step, ema)
            start_step = 0
            if stopped:
                saver.save_stopped(state(epoch - 1, next_step), epoch, next_step)
                return 0
            scheduler.step()
            val_psnr = None
            if val_images is not None and ctx.dist.is_main and training.validation_due(epoch, args.val_every,
                                                                                       args.epochs):
                val_psnr = training.validate(training.shipped_model(net, ema), spec, args.scale, ctx.device,
                                             val_images)
            best_psnr, improved = training.better(val_psnr, best_psnr)
            saver.save(state(epoch, 0), improved)
            ctx.log_epoch(epoch, args.epochs, losses, val_psnr, best_psnr, ema=ema is not None)
        ctx.log(f"done: {args.checkpoint_path}")
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
