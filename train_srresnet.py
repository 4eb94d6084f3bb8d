"""Train SRResNet with the tutorial's recipe, or any pixel-loss model of the suite (--arch).

    python create_data_lists.py --train-folders data/COCO2014/train2014 data/COCO2014/val2014 \
        --test-folders data/Set5 data/Set14 data/BSD100
    python train_srresnet.py                          # tutorial: SRResNet x4, Adam 1e-4, MSE, batch 400, 130 epochs
    python train_srresnet.py --batch-size 64 --epochs 10 --device cuda
    python train_srresnet.py --resume                 # continue results/checkpoint_srresnet.pth
    python train_srresnet.py --arch espcn --scale 3 --val-folder data/Set5 --keep-best
    python train_srresnet.py --ngpu 2                 # the tutorial's DataParallel, one process
    torchrun --nproc-per-node 4 train_srresnet.py --batch-size 400      # DDP: --batch-size is the global batch
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        train_srresnet.py --batch-size 400

Writes results/checkpoint_<arch>.pth every epoch (atomically), TensorBoard logs under runs/.
Ctrl-C or SIGTERM finishes the current step, saves, and prints the command that resumes.
"""
import ast
import os

import torch
from torch import nn

import models
from utils import (AverageMeter, FORMAT_VERSION, TrainContext, Upscaler, UserError, add_training_args,
                   apply_training_rewrites, autocast, batch_to_device, build_train_dataset, check_finite,
                   close_distributed, get_rng_state, init_distributed, keep_freed_memory, list_image_files,
                   load_checkpoint, load_image, log_image_grids, make_parser, make_train_loader, model_io,
                   pil_to_tensor, plain_args, positive_int, progress, resolve_speed_args, restore_training_state,
                   run_cli, run_epochs, seed_everything, set_determinism, strip_prefixes, timer, unwrap_model,
                   validate_psnr, wrap_model)


def build_parser():
    parser = make_parser(__doc__, training=True)
    add_training_args(parser, archs=sorted(models.ARCHS))
    g = parser.add_argument_group('model (SRResNet flags as in the tutorial; --model-opt for any arch)')
    g.add_argument('--large-kernel-size', type=positive_int, default=9, help='srresnet: first/last conv kernel')
    g.add_argument('--small-kernel-size', type=positive_int, default=3, help='srresnet: inner conv kernel')
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
    args.scale = 4 if args.scale is None else args.scale
    try:
        models.check_scale(args.arch, args.scale)
    except ValueError as e:
        parser.error(f"--scale: {e}")
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
    except (ValueError, TypeError) as e:
        parser.error(f"--model-opt: {e}")
    args.checkpoint_path = os.path.join(args.results_dir, f"checkpoint_{args.arch}.pth")
    if args.resume == 'auto':
        args.resume = args.checkpoint_path
    return args


def check_resume_compatible(ckpt, arch, config, path):
    """Refuse a checkpoint of another architecture, scale or configuration, naming what differs."""
    got_arch = ckpt.get('arch', 'srresnet')
    if got_arch != arch:
        raise UserError(f"{path} is a {got_arch} checkpoint, not {arch}: pass --arch {got_arch} or another file")
    got = ckpt.get('model_config') or {}
    diffs = [f"{k}: checkpoint {got.get(k)!r} vs now {v!r}" for k, v in config.items() if k in got and got[k] != v]
    if diffs:
        raise UserError(f"{path} was made with another model configuration ({'; '.join(diffs)}): "
                        f"pass the same flags as when it was created")


def load_val_images(folder):
    """(3, H, W) uint8 tensors of every image in ``folder`` (for validation PSNR)."""
    paths = list_image_files(folder)
    if not paths:
        raise UserError(f"--val-folder {folder}: no images found")
    return [pil_to_tensor(load_image(p)) for p in paths]


def train_one_epoch(model, criterion, optimizer, ctx, epoch, start_step=0):
    """One pass over ctx.loader (from ``start_step``). Returns ({'loss': mean loss}, next step, stopped early?)."""
    model.train()
    meter, spec, device = AverageMeter(), ctx.spec, ctx.dist.device
    t0, n_patches = timer(), 0
    bar = progress(ctx.loader, total=len(ctx.loader), dist=ctx.dist, desc=f"epoch {epoch}")
    step = start_step
    for step, batch in enumerate(bar, start=start_step):
        lr, hr = batch_to_device(batch, device, ctx.scale, ctx.downsample)  # (N, 3, h, w), (N, 3, s*h, s*w) in [0, 1]
        x, target = model_io(spec, lr, hr, ctx.scale)  # in the model's input / output spaces
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, ctx.amp):
            sr = model(x)  # (N, C, s*h, s*w)
        loss = criterion(sr.float(), target)
        loss_value = loss.item()
        check_finite(loss_value, epoch, step, ctx.checkpoint_path)
        optimizer.zero_grad(set_to_none=True)
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
        meter.update(loss_value, lr.size(0))
        ctx.global_step += 1
        n_patches += lr.size(0) * ctx.dist.world_size
        if step == start_step:
            log_image_grids(ctx.writer, f"{ctx.tag}/epoch_{epoch}", epoch, x, sr, target, spec.in_type,
                            spec.out_type)
        if ctx.writer is not None:
            ctx.writer.add_scalar(f"{ctx.tag}/loss_step", loss_value, ctx.global_step)
        if hasattr(bar, 'set_postfix'):
            bar.set_postfix(loss=f"{meter.avg:.4g}", patches_s=f"{n_patches / max(timer() - t0, 1e-9):.0f}")
        ctx.dataset.check_failures()
        if ctx.should_stop():
            return {'loss': ctx.dist.all_mean(meter.avg)}, step + 1, True
    return {'loss': ctx.dist.all_mean(meter.avg)}, step + 1, False


def checkpoint_state(model, optimizer, scheduler, ctx, args, epoch, resume_step, best_psnr):
    """Everything needed to resume exactly, as state_dicts and plain data."""
    return {
        'format_version': FORMAT_VERSION, 'arch': args.arch, 'model_config': args.model_config,
        'epoch': epoch, 'resume_step': resume_step, 'step': ctx.global_step,
        'model': strip_prefixes(unwrap_model(model).state_dict()), 'optimizer': optimizer.state_dict(),
        'scheduler': scheduler.state_dict(), 'scaler': ctx.scaler.state_dict(), 'rng': get_rng_state(),
        'args': plain_args(args), 'best_psnr': best_psnr,
    }


def build_training(args, dist):
    """Model, optimizer, scheduler and loss for ``args`` (on dist.device)."""
    model = models.build_model(args.arch, args.model_config).to(dist.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    apply_training_rewrites(model, args)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    if args.lr_schedule == 'cosine':
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=args.lr / 100)
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(args.lr_milestones),
                                                         gamma=args.lr_gamma)
    criterion = nn.MSELoss() if args.loss == 'mse' else nn.L1Loss()
    return model, optimizer, scheduler, criterion


def main(argv=None):
    args = resolve_args(build_parser(), argv)
    dist = init_distributed(args.device, args.ngpu, args.dist_timeout)
    try:
        resolve_speed_args(args, dist.device)
        if not args.faithful:
            keep_freed_memory()
        seed_everything(args.seed + dist.rank)
        set_determinism(args.deterministic)
        model, optimizer, scheduler, criterion = build_training(args, dist)
        ckpt = None
        if args.resume:  # checked before any data is read
            ckpt = load_checkpoint(args.resume, map_location=dist.device)
            check_resume_compatible(ckpt, args.arch, args.model_config, args.resume)
            model.load_state_dict(strip_prefixes(ckpt['model']))
            optimizer.load_state_dict(ckpt['optimizer'])
            if ckpt.get('scheduler'):
                scheduler.load_state_dict(ckpt['scheduler'])
        val_images = load_val_images(args.val_folder) if args.val_folder else None
        dataset, collate = build_train_dataset(args, log=print if dist.is_main else lambda *a: None)
        ctx = TrainContext(args, dist, dataset, args.arch, tag=args.arch)
        start_epoch, start_step, best_psnr = restore_training_state(ckpt, ctx) if ckpt else (1, 0, None)
        if ckpt and dist.is_main:
            print(f"resumed {args.resume}: epoch {start_epoch}" + (f", step {start_step}" if start_step else ''))
        net = wrap_model(model, dist, args.ngpu, args.sync_bn)
        if args.compile:
            net = torch.compile(net)
        ctx.loader, sampler = make_train_loader(dataset, args.batch_size, dist, args.workers, args.seed,
                                                pin_memory=dist.device.type == 'cuda', collate_fn=collate)
        validate = None if val_images is None else lambda: validate_psnr(
            Upscaler(unwrap_model(net).eval(), args.arch, args.scale, dist.device), val_images, args.scale)
        run_epochs(
            ctx, args, sampler, start_epoch=start_epoch, start_step=start_step, best_psnr=best_psnr,
            train_epoch=lambda epoch, step: train_one_epoch(net, criterion, optimizer, ctx, epoch, step),
            make_state=lambda epoch, step, best: checkpoint_state(net, optimizer, scheduler, ctx, args, epoch,
                                                                  step, best),
            validate=validate, after_epoch=lambda epoch: scheduler.step())
        return 0
    finally:
        if 'ctx' in locals():
            ctx.close()
        close_distributed()


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
