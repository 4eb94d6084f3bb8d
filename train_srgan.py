"""Train SRGAN as the tutorial does: a generator warm-started from a trained SRResNet, a discriminator,
a VGG19 content loss and a BCE adversarial loss (beta = 1e-3), Adam 1e-4, learning rate x0.1 at half the epochs.

    python train_srgan.py                              # tutorial: x4, batch 128, 50 epochs, warm start from
                                                       # results/checkpoint_srresnet.pth
    python train_srgan.py --srresnet-checkpoint results/checkpoint_srresnet.pth --batch-size 32 --device cuda
    python train_srgan.py --resume                     # continue results/checkpoint_srgan.pth
    python train_srgan.py --vgg-weights vgg19-dcbb9e9d.pth     # VGG19 weights from a file instead of the hub cache
    python train_srgan.py --update-order d-first       # discriminator step before generator step (seed 001, Keras)
    torchrun --nproc-per-node 4 train_srgan.py --batch-size 128  # DDP: --batch-size is the global batch

VGG19 ImageNet weights come from torchvision (downloaded once into the torch hub cache) or --vgg-weights PATH;
--vgg-weights random is for tests and smoke runs only. Writes results/checkpoint_srgan.pth every epoch.
"""
import os
import time

import torch
from torch import nn

import inference
import models
import training
from utils import (AverageMeter, FORMAT_VERSION, UserError, adjust_learning_rate, autocast, convert_image,
                   get_rng_state, given_flags, keep_freed_memory, load_checkpoint, make_parser, odd_positive_int,
                   positive_int, run_cli, seed_everything, set_determinism, strip_prefixes, unwrap_model)

SRGAN_RECIPE = dict(crop_size=96, batch_size=128, epochs=50, lr=1e-4, downsample='pil', hflip=False, vflip=False,
                    rot90=False, patches_per_image=1)
GENERATOR_FLAGS = ('large_kernel_size', 'small_kernel_size', 'n_channels', 'n_blocks')
# What a resumed run takes from its checkpoint unless given again (see training.settings_from_checkpoint); the
# generator's configuration comes from the checkpoint's generator_config.
RESUMED_FLAGS = training.RESUMED_FLAGS + ('kernel_size_d', 'n_channels_d', 'n_blocks_d', 'fc_size_d', 'vgg19_i',
                                          'vgg19_j', 'beta', 'update_order')


def build_parser():
    parser = make_parser(__doc__, training=True)
    training.add_training_args(parser)
    g = parser.add_argument_group('SRGAN')
    g.add_argument('--srresnet-checkpoint',
                   help="trained SRResNet to start the generator from (default: RESULTS_DIR/checkpoint_srresnet.pth; "
                        "'none': a random generator)")
    g.add_argument('--large-kernel-size', type=odd_positive_int, help='generator first/last kernel (default: the '
                   "SRResNet checkpoint's, else 9)")
    g.add_argument('--small-kernel-size', type=odd_positive_int,
                   help='generator inner kernel (default: checkpoint, else 3)')
    g.add_argument('--n-channels', type=positive_int, help='generator channels (default: checkpoint, else 64)')
    g.add_argument('--n-blocks', type=positive_int, help='generator residual blocks (default: checkpoint, else 16)')
    g.add_argument('--kernel-size-d', type=positive_int, default=3, help='discriminator kernel size')
    g.add_argument('--n-channels-d', type=positive_int, default=64, help='discriminator first-block channels')
    g.add_argument('--n-blocks-d', type=positive_int, default=8, help='discriminator conv blocks')
    g.add_argument('--fc-size-d', type=positive_int, default=1024, help='discriminator hidden fc size')
    g.add_argument('--vgg19-i', type=positive_int, default=5, help='VGG19 feature map: before the i-th max-pool')
    g.add_argument('--vgg19-j', type=positive_int, default=4, help='VGG19 feature map: after the j-th conv')
    g.add_argument('--vgg-weights', default='imagenet',
                   help="'imagenet' (torchvision, hub cache), a PATH to vgg19 weights, or 'random' (tests only)")
    g.add_argument('--beta', type=float, default=1e-3, help='adversarial loss weight')
    g.add_argument('--update-order', choices=('g-first', 'd-first'), default='g-first',
                   help='per step: generator then discriminator (tutorial) or the reverse (seed 001)')
    return parser


def resolve_args(parser, argv=None):
    """Parse flags; the generator's configuration defaults to the warm-start SRResNet's."""
    args = parser.parse_args(argv)
    resumed = None
    if args.resume:  # a resumed run continues with the settings of its checkpoint
        path = os.path.join(args.results_dir, 'checkpoint_srgan.pth') if args.resume == 'auto' else args.resume
        resumed = load_checkpoint(path)
        training.settings_from_checkpoint(resumed, path, args, given_flags(parser, argv), RESUMED_FLAGS)
    try:
        models.check_vgg19_layer(args.vgg19_i, args.vgg19_j)
    except ValueError as e:
        parser.error(f"--vgg19-i {args.vgg19_i} --vgg19-j {args.vgg19_j}: {e}")
    for key, value in SRGAN_RECIPE.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.keep_best and not args.val_folder:
        parser.error("--keep-best needs --val-folder (e.g. --val-folder data/Set5)")
    args.checkpoint_path = os.path.join(args.results_dir, 'checkpoint_srgan.pth')
    if args.resume == 'auto':
        args.resume = args.checkpoint_path
    args.srresnet_state = None
    if args.srresnet_checkpoint is None:
        args.srresnet_checkpoint = os.path.join(args.results_dir, 'checkpoint_srresnet.pth')
    given = {k: getattr(args, k) for k in GENERATOR_FLAGS + ('scale',) if getattr(args, k) is not None}
    given = {('scaling_factor' if k == 'scale' else k): v for k, v in given.items()}
    config = models.model_config('srresnet', 4, large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16)
    if resumed is not None and isinstance(resumed.get('generator_config'), dict):
        config = dict(resumed['generator_config'])  # flags given now that differ are refused by load_resume
    elif args.srresnet_checkpoint.lower() != 'none' and not args.resume:
        path = args.srresnet_checkpoint
        if not os.path.isfile(path):
            raise UserError(f"--srresnet-checkpoint {path}: no such file; train SRResNet first "
                            f"(python train_srresnet.py) or pass --srresnet-checkpoint none")
        info = inference.describe_checkpoint(load_checkpoint(path), path)
        if info.arch != 'srresnet':
            raise UserError(f"--srresnet-checkpoint {path} holds a {info.label}, not an SRResNet")
        ckpt_config, state = info.config, info.state
        diffs = [f"{k} {v} (checkpoint: {ckpt_config[k]})" for k, v in given.items() if ckpt_config.get(k) != v]
        if diffs:
            raise UserError(f"generator flags disagree with {path}: {', '.join(diffs)}; drop them to use the "
                            f"checkpoint's configuration")
        config, args.srresnet_state = dict(ckpt_config), state
    config.update(given)
    args.scale = int(config['scaling_factor'])
    try:
        models.check_scale('srresnet', args.scale)
    except ValueError as e:
        parser.error(f"--scale: {e}")
    if args.crop_size % args.scale:
        parser.error(f"--crop-size {args.crop_size} is not divisible by --scale {args.scale}")
    args.generator_config = config
    args.discriminator_config = dict(kernel_size=args.kernel_size_d, n_channels=args.n_channels_d,
                                     n_blocks=args.n_blocks_d, fc_size=args.fc_size_d)
    return args


def discriminator_step(discriminator, optimizer_d, criterion, sr, hr, scaler, device, speed):
    """One D update on detached SR (label 0) and HR (label 1). Returns the loss (a tensor).

    SR and HR go through D in separate forward passes (separate BatchNorm statistics, as the tutorial) and
    separate backward passes: the gradients add up to those of the summed loss, and under DDP each
    parameter is used once per backward, as DDP requires.
    """
    optimizer_d.zero_grad(set_to_none=True)
    total = 0.
    for images, label in ((sr.detach(), 0.), (hr, 1.)):
        with autocast(device, speed.precision):
            logits = discriminator(images)  # (N, 1)
        loss = criterion(logits.float(), torch.full_like(logits, label, dtype=torch.float32))
        scaler.scale(loss).backward()
        total = total + loss.detach()
    scaler.step(optimizer_d)
    return total


def train_one_epoch(generator, discriminator, vgg, optimizer_g, optimizer_d, scaler, loader, dataset, ctx, speed,
                    args, epoch, start_step):
    """One SRGAN epoch. Returns ({content, adversarial, discriminator: mean loss}, next step, stopped early?)."""
    generator.train()
    discriminator.train()
    device, d_first = ctx.device, args.update_order == 'd-first'
    meters = {k: AverageMeter() for k in ('content', 'adversarial', 'discriminator')}
    mse, bce = nn.MSELoss(), nn.BCEWithLogitsLoss()
    start, n_patches, step = time.perf_counter(), 0, start_step
    bar = ctx.progress(loader, desc=f"epoch {epoch}")
    for step, batch in enumerate(bar, start=start_step):
        lr, hr = training.batch_to_device(batch, device, args.scale, args.downsample)  # RGB in [0, 1]
        lr = convert_image(lr, '[0, 1]', 'imagenet-norm')  # (N, 3, h, w)
        hr = convert_image(hr, '[0, 1]', 'imagenet-norm')  # (N, 3, s*h, s*w)
        if speed.channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
        with autocast(device, speed.precision):
            sr = generator(lr)  # (N, 3, s*h, s*w), in [-1, 1]
        sr = convert_image(sr.float(), '[-1, 1]', 'imagenet-norm')  # (N, 3, s*h, s*w), imagenet-normed
        if d_first:
            d_loss = discriminator_step(discriminator, optimizer_d, bce, sr, hr, scaler, device, speed)
        with autocast(device, speed.precision):
            sr_features = vgg(sr)  # (N, 512, s*h / 16, s*w / 16)
            hr_features = vgg(hr).detach()
            sr_logits = discriminator(sr)  # (N, 1)
        content_loss = mse(sr_features.float(), hr_features.float())
        adversarial_loss = bce(sr_logits.float(), torch.ones_like(sr_logits, dtype=torch.float32))
        perceptual_loss = content_loss + args.beta * adversarial_loss
        optimizer_g.zero_grad(set_to_none=True)
        scaler.scale(perceptual_loss).backward()
        scaler.step(optimizer_g)
        if not d_first:
            d_loss = discriminator_step(discriminator, optimizer_d, bce, sr, hr, scaler, device, speed)
        scaler.update()
        if step == start_step:
            ctx.log_images(f"epoch_{epoch}", epoch, lr, sr, hr, 'imagenet-norm', 'imagenet-norm')
        values, stop = ctx.end_step({'content': content_loss, 'adversarial': adversarial_loss,
                                     'discriminator': d_loss}, epoch, step, args.checkpoint_path)
        for k, m in meters.items():
            m.update(values[k], lr.size(0))
        n_patches += lr.size(0) * ctx.dist.world_size
        if hasattr(bar, 'set_postfix'):
            bar.set_postfix(c=f"{meters['content'].avg:.4g}", d=f"{meters['discriminator'].avg:.3g}",
                            patches_s=training.patches_per_second(n_patches, start))
        dataset.check_failures()
        if stop:
            return {k: m.avg for k, m in meters.items()}, step + 1, True
    return {k: m.avg for k, m in meters.items()}, step + 1, False


def checkpoint_state(generator, discriminator, optimizer_g, optimizer_d, scaler, global_step, args, speed, epoch,
                     resume_step, best_psnr):
    """The tutorial's keys (generator, discriminator, optimizer_g, optimizer_d, epoch) plus what exact resume needs."""
    return {
        'format_version': FORMAT_VERSION, 'arch': 'srgan', 'generator_config': args.generator_config,
        'discriminator_config': args.discriminator_config, 'epoch': epoch, 'resume_step': resume_step,
        'step': global_step,
        'generator': strip_prefixes(unwrap_model(generator).state_dict()),
        'discriminator': strip_prefixes(unwrap_model(discriminator).state_dict()),
        'optimizer_g': optimizer_g.state_dict(), 'optimizer_d': optimizer_d.state_dict(),
        'scaler': scaler.state_dict(), 'rng': get_rng_state(), 'args': training.run_record(args, speed),
        'best_psnr': best_psnr,
    }


def build_networks(args, speed, device):
    """VGG (fails fast when its weights are missing), generator (warm-started), discriminator, optimizers and
    the GradScaler they share."""
    try:
        vgg = models.TruncatedVGG19(args.vgg19_i, args.vgg19_j, weights=args.vgg_weights).to(device)
    except models.VGGWeightsError as e:
        raise UserError(str(e)) from None
    generator = models.Generator(**args.generator_config).to(device)
    discriminator = models.Discriminator(**args.discriminator_config).to(device)
    if args.srresnet_state is not None:
        generator.net.load_state_dict(args.srresnet_state)
    generator = training.apply_speed(generator, speed)
    if speed.channels_last:
        discriminator = discriminator.to(memory_format=torch.channels_last)
    optimizer_g = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], lr=args.lr)
    optimizer_d = torch.optim.Adam([p for p in discriminator.parameters() if p.requires_grad], lr=args.lr)
    return vgg, generator, discriminator, optimizer_g, optimizer_d, training.make_scaler(device, speed)


def load_resume(path, ctx, args, generator, discriminator, optimizer_g, optimizer_d, scaler):
    """Load an SRGAN checkpoint into the networks and optimizers; refuse anything else.
    Returns (start_epoch, start_step, best_psnr)."""
    ckpt = load_checkpoint(path, map_location=ctx.device)
    if ckpt.get('arch', 'srgan' if 'generator' in ckpt else 'srresnet') != 'srgan':
        raise UserError(f"{path} is not an SRGAN checkpoint")
    training.check_resume_compatible('srgan', ckpt.get('generator_config'), 'srgan', args.generator_config, path)
    training.check_resume_compatible('srgan', ckpt.get('discriminator_config'), 'srgan', args.discriminator_config,
                                     path)
    if 'optimizer_d' not in ckpt:
        raise UserError(f"{path} has no optimizer_d (the tutorial saved optimizer_g twice): it cannot be "
                        f"resumed exactly; start a new run from its generator instead")
    generator.load_state_dict(strip_prefixes(ckpt['generator']))
    discriminator.load_state_dict(strip_prefixes(ckpt['discriminator']))
    optimizer_g.load_state_dict(ckpt['optimizer_g'])
    optimizer_d.load_state_dict(ckpt['optimizer_d'])
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
        vgg, generator, discriminator, optimizer_g, optimizer_d, scaler = build_networks(args, speed, ctx.device)
        start_epoch, start_step, best_psnr = 1, 0, None
        if args.resume:
            start_epoch, start_step, best_psnr = load_resume(args.resume, ctx, args, generator, discriminator,
                                                             optimizer_g, optimizer_d, scaler)
        val_images = training.load_val_images(args.val_folder) if args.val_folder else None
        dataset, collate = training.dataset_of(args, log=ctx.log)
        ctx.open_writer(os.path.join(args.runs_dir, 'srgan'), tag='srgan')
        g_net = training.wrap_model(generator, ctx.dist, args.ngpu, args.sync_bn)
        d_net = training.wrap_model(discriminator, ctx.dist, args.ngpu, args.sync_bn)
        if speed.compile:
            g_net, d_net, vgg = torch.compile(g_net), torch.compile(d_net), torch.compile(vgg)
        loader, sampler = training.make_train_loader(dataset, args.batch_size, ctx.dist, args.workers, args.seed,
                                                     pin_memory=ctx.device.type == 'cuda', collate_fn=collate)
        saver = training.CheckpointSaver(args.checkpoint_path, ctx.dist, keep_best=args.keep_best)

        def state(epoch, resume_step):
            return checkpoint_state(g_net, d_net, optimizer_g, optimizer_d, scaler, ctx.global_step, args, speed,
                                    epoch, resume_step, best_psnr)

        for epoch in range(start_epoch, args.epochs + 1):
            if epoch == int(args.epochs / 2) and start_step == 0:  # the tutorial's single decay, not again on resume
                adjust_learning_rate(optimizer_g, 0.1)
                adjust_learning_rate(optimizer_d, 0.1)
            sampler.set_epoch(epoch, start_step * loader.batch_size)
            losses, next_step, stopped = train_one_epoch(g_net, d_net, vgg, optimizer_g, optimizer_d, scaler, loader,
                                                         dataset, ctx, speed, args, epoch, start_step)
            start_step = 0
            if stopped:
                saver.save_stopped(state(epoch - 1, next_step), epoch, next_step)
                return 0
            val_psnr = None
            if val_images is not None and ctx.dist.is_main and training.validation_due(epoch, args.val_every,
                                                                                       args.epochs):
                val_psnr = training.validate(unwrap_model(g_net).net, 'srresnet', args.scale, ctx.device, val_images)
            best_psnr, improved = training.better(val_psnr, best_psnr)
            saver.save(state(epoch, 0), improved)
            ctx.log_epoch(epoch, args.epochs, losses, val_psnr, best_psnr)
        ctx.log(f"done: {args.checkpoint_path}")
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
