"""Train SRGAN as the tutorial does: a generator warm-started from a trained SRResNet, a discriminator,
a VGG19 content loss and a BCE adversarial loss (beta = 1e-3), Adam 1e-4, learning rate x0.1 at half the epochs.

    python train_srgan.py                              # tutorial: x4, batch 128, 50 epochs, warm start from
                                                       # results/checkpoint_srresnet.pth
    python train_srgan.py --srresnet-checkpoint results/checkpoint_srresnet.pth --batch-size 32 --device cuda
    python train_srgan.py --resume                     # continue results/checkpoint_srgan.pth
    python train_srgan.py --vgg-weights vgg19-dcbb9e9d.pth     # VGG19 weights from a file instead of the hub cache
    python train_srgan.py --update-order d-first       # discriminator step before generator step (as the Keras SRGAN)
    python train_srgan.py --variant keras              # the Keras SRGAN (srgan-keras) from scratch, no SRResNet:
                                                       # x4, batch 4, 384-px HR crops, 200 epochs, Adam 2e-4
    python train_srgan.py --ema-decay 0.999            # also keep an EMA of the generator (generator_ema)
    python train_srgan.py --variant realesrgan --vgg-weights vgg19-dcbb9e9d.pth --val-folder data/Set5
                                                       # Real-ESRGAN's GAN stage for photos: U-Net discriminator
                                                       # with spectral norm, L1 + perceptual + 0.1 x GAN loss, LR by
                                                       # Real-ESRGAN's degradations, from the shipped photo SRResNet
    torchrun --nproc-per-node 4 train_srgan.py --batch-size 128  # DDP: --batch-size is the global batch

VGG19 ImageNet weights come from torchvision (downloaded once into the torch hub cache) or --vgg-weights PATH;
--vgg-weights random is for tests and smoke runs only. Writes results/checkpoint_srgan.pth every epoch, with the
variant, which --resume, eval.py and test.py read from it, and at the end (or when stopped) results/srgan_curves.png:
the losses and validation PSNR per epoch against steps and wall time. The tutorial variant's generator starts from
the SRResNet checkpoint's EMA weights (model_ema) when it has them, else its weights.
"""
import contextlib
import os
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import checkpoints
import models
import training
from checkpoints import FORMAT_VERSION, load_checkpoint, strip_prefixes
from utils import (AverageMeter, Settings, UserError, adjust_learning_rate, autocast, convert_image, get_rng_state,
                   given_flags, keep_freed_memory, make_parser, odd_positive_int, positive_int, run_cli,
                   seed_everything, set_determinism, unwrap_model)

SRGAN_RECIPE = dict(crop_size=96, batch_size=128, epochs=50, lr=1e-4, downsample='pil', lr_from='patch',
                    hflip=False, vflip=False, rot90=False, patches_per_image=1, beta=1e-3)
# The Keras SRGAN (bubbliiiing/srgan-keras, train.py and utils/dataloader.py of its BatchNorm-momentum-0.5 version):
# 96-px LR crops (384 HR), batch 4, 200 epochs, Adam 2e-4, PIL-bicubic LR, random horizontal flips.
KERAS_RECIPE = dict(crop_size=384, batch_size=4, epochs=200, lr=2e-4, downsample='pil', lr_from='patch',
                    hflip=True, vflip=False, rot90=False, patches_per_image=1, beta=1e-3)
# Real-ESRGAN's GAN stage (its options for RealESRGAN x4plus: 256-px HR crops, horizontal flips only, Adam 1e-4 with
# betas (0.9, 0.99), a constant learning rate, an EMA of 0.999; the LR by its degradations), for the tutorial's
# generator; its 400k iterations of batch 48 on DIV2K + Flickr2K + OST are this suite's --epochs instead.
REALESRGAN_RECIPE = dict(crop_size=256, batch_size=12, epochs=50, lr=1e-4, downsample='pil', lr_from='patch',
                         hflip=True, vflip=False, rot90=False, patches_per_image=1, ema_decay=0.999, ema_warmup=False,
                         beta=0.1)
RECIPES = {'tutorial': SRGAN_RECIPE, 'keras': KERAS_RECIPE, 'realesrgan': REALESRGAN_RECIPE}
REALESRGAN_ADAM = dict(betas=(0.9, 0.99))
# Real-ESRGAN's perceptual loss: L1 between VGG19 features before the ReLU, these layers with these weights.
REALESRGAN_PERCEPTUAL_LAYERS = {'conv1_2': 0.1, 'conv2_2': 0.1, 'conv3_4': 1., 'conv4_4': 1., 'conv5_4': 1.}
# What the realesrgan variant does not use: the tutorial discriminator's shape, the content loss's VGG layer, the
# update order (Real-ESRGAN updates the generator first).
TUTORIAL_ONLY_FLAGS = ('kernel_size_d', 'n_blocks_d', 'fc_size_d', 'vgg19_i', 'vgg19_j', 'update_order')
KERAS_LR_DECAY = 0.98  # srgan-keras multiplies both learning rates by 0.98 after every epoch
KERAS_VGG_WEIGHT = 2e-6  # srgan-keras's loss_weights=[1, 1e-3, 2e-6]: pixel MSE, adversarial BCE (--beta), VGG MSE
KERAS_ADAM = dict(betas=(0.9, 0.999), eps=1e-7)  # srgan-keras's Adam(lr, 0.9, 0.999); Keras's epsilon is 1e-7
KERAS_BCE_EPSILON = 1e-7  # Keras clips probabilities to [1e-7, 1 - 1e-7] in binary_crossentropy
GENERATOR_FLAGS = ('large_kernel_size', 'small_kernel_size', 'n_channels', 'n_blocks')
# What a resumed run takes from its checkpoint unless given again (see training.recorded_settings); the
# generator's configuration comes from the checkpoint's generator_config.
RESUMED_FLAGS = training.RESUMED_FLAGS + ('kernel_size_d', 'n_channels_d', 'n_blocks_d', 'fc_size_d', 'vgg19_i',
                                          'vgg19_j', 'beta', 'update_order', 'vgg_weights', 'srresnet_checkpoint')


def build_parser():
    parser = make_parser(__doc__, training=True)
    training.add_training_args(parser)
    g = parser.add_argument_group('SRGAN')
    g.add_argument('--variant', choices=tuple(RECIPES),
                   help="tutorial (default): the tutorial's SRGAN, its generator warm-started from an SRResNet; keras: "
                        "the Keras SRGAN of srgan-keras (its own generator and discriminator, pixel + VGG + "
                        "adversarial loss, discriminator updated first) trained from scratch as that code does, so it "
                        "needs no SRResNet checkpoint; realesrgan: Real-ESRGAN's GAN stage for photos (L1 + VGG19 "
                        "perceptual + 0.1 x adversarial loss, a U-Net discriminator with spectral norm, LR by "
                        "Real-ESRGAN's degradations), warm-started from the shipped real-photo SRResNet when you "
                        "have none. --resume takes the variant from the checkpoint")
    g.add_argument('--srresnet-checkpoint',
                   help="trained SRResNet to start the generator from (default: RESULTS_DIR/checkpoint_srresnet.pth "
                        "when it exists, else the shipped SRResNet x4, results/srresnet_x4_291.pth, for the "
                        "realesrgan variant results/srresnet_x4_real.pth; 'none': a random generator)")
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
    g.add_argument('--beta', type=float, help="adversarial loss weight (default: the variant's, 1e-3; realesrgan 0.1)")
    g.add_argument('--update-order', choices=('g-first', 'd-first'),
                   help='per step: generator then discriminator (tutorial, the default) or the reverse (the Keras '
                        'SRGAN); '
                        'the keras variant is always d-first, the realesrgan variant g-first')
    return parser


def resolve_variant(flag, resume):
    """--variant, else the variant recorded in the SRGAN checkpoint being resumed (a flag may not contradict it),
    else 'tutorial'."""
    recorded = None
    if resume and os.path.isfile(resume):
        ckpt = load_checkpoint(resume)
        recorded = ckpt.get('variant', 'tutorial') if 'generator' in ckpt else None
    if recorded is not None and recorded not in RECIPES:
        raise UserError(f"{resume} is a run of the SRGAN variant {recorded!r}, which this version does not know")
    if recorded is not None and flag is not None and flag != recorded:
        raise UserError(f"--variant {flag}: {resume} is a run of the {recorded} variant; drop --variant to resume "
                        f"it, or start the new run in another --results-dir")
    return flag or recorded or 'tutorial'


def check_keras_flags(parser, flags):
    """What the Keras SRGAN fixes: a generator trained from scratch (not an SRResNet: no warm start), D first."""
    if flags.srresnet_checkpoint is not None and flags.srresnet_checkpoint.lower() != 'none':
        parser.error("--srresnet-checkpoint: the keras variant trains its generator from scratch, as the Keras "
                     "SRGAN does (it is not an SRResNet); drop the flag")
    if flags.update_order == 'g-first':
        parser.error("--update-order g-first: the keras variant updates the discriminator first, as the Keras SRGAN "
                     "does")


def check_realesrgan_flags(parser, run, given):
    """What the realesrgan variant fixes or needs: none of the tutorial discriminator's shape flags, the content
    loss's VGG layer (its perceptual loss takes five layers) or --update-order, and Real-ESRGAN's degradations when
    neither --degradation nor --paired says otherwise."""
    unused = [f"--{k.replace('_', '-')}" for k in TUTORIAL_ONLY_FLAGS if k in given]
    if unused:
        parser.error(f"{', '.join(unused)}: not used by the realesrgan variant (its U-Net discriminator is sized by "
                     f"--n-channels-d, its perceptual loss takes five VGG19 layers, it updates the generator first "
                     f"as Real-ESRGAN does); drop the flag")
    if run['degradation'] is None and not run['paired'] and not run['faithful'] and run['lr_from'] is None:
        run['degradation'] = 'realesrgan'


def default_warm_start(results_dir, resume, variant='tutorial'):
    """--srresnet-checkpoint's default: RESULTS_DIR/checkpoint_srresnet.pth when you trained one (or when resuming,
    which reads no warm start), else the shipped SRResNet x4 (for the realesrgan variant the shipped real-photo one),
    said in one line."""
    own = os.path.join(results_dir, 'checkpoint_srresnet.pth')
    kind = 'photo' if variant == 'realesrgan' else 'clean'
    shipped = checkpoints.shipped_checkpoint(checkpoints.SHIPPED_MODELS[kind][0])
    if resume or os.path.isfile(own) or not os.path.isfile(shipped):
        return own  # when neither exists, the error names the file train_srresnet.py writes
    print(f"warm start: the shipped SRResNet x4 {os.path.relpath(shipped)} ({kind} model; there is no {own} of your "
          f"own; --srresnet-checkpoint picks another)", flush=True)
    return shipped


def warm_start(srresnet_checkpoint, resume):
    """The SRResNet checkpoint the tutorial generator starts from (its EMA weights, model_ema, when it has them),
    or None: --srresnet-checkpoint none (the keras variant's), or a resumed run (--resume)."""
    return None if resume or srresnet_checkpoint.lower() == 'none' else srresnet_checkpoint


def resolve_settings(parser, argv=None):
    """The run's settings, made once from the flags (a frozen utils.Settings): the variant from --variant or the
    checkpoint being resumed, the recipe from the variant, a resumed run's recorded values where not given again,
    and the tutorial generator's configuration from the warm-start SRResNet's (whose EMA weights, model_ema, it starts
    from when the checkpoint has them, as BasicSR and Real-ESRGAN start their GANs from params_ema)."""
    flags = parser.parse_args(argv)
    run = dict(vars(flags))  # the settings being decided (the parsed flags themselves stay as they are)
    run['checkpoint_path'] = os.path.join(flags.results_dir, 'checkpoint_srgan.pth')
    if run['resume'] == 'auto':
        run['resume'] = run['checkpoint_path']
    resumed = None
    if run['resume']:  # a resumed run continues with the settings of its checkpoint
        resumed = load_checkpoint(run['resume'])
        training.check_training_state(resumed, run['resume'], '--srresnet-checkpoint')
        run.update(training.recorded_settings(resumed, run['resume'], flags, given_flags(parser, argv),
                                              RESUMED_FLAGS))
    run['log_name'] = training.log_name(run['runs_dir'], 'srgan', resumed and resumed.get('args'),
                                        resumed=resumed is not None)
    try:
        models.check_vgg19_layer(run['vgg19_i'], run['vgg19_j'])
    except ValueError as e:
        parser.error(f"--vgg19-i {run['vgg19_i']} --vgg19-j {run['vgg19_j']}: {e}")
    run['variant'] = resolve_variant(run['variant'], run['resume'])
    if run['variant'] == 'realesrgan':
        check_realesrgan_flags(parser, run, given_flags(parser, argv))
    run['lr_from'], run['degradation'] = training.resolve_lr_source(run['faithful'], run['lr_from'], run['degradation'],
                                                                     run['degradation_opt'], run['paired'])
    for key, value in RECIPES[run['variant']].items():
        if run[key] is None:
            run[key] = value
    if run['keep_best'] and not run['val_folder']:
        parser.error("--keep-best needs --val-folder (e.g. --val-folder data/Set5)")
    keras = run['variant'] == 'keras'
    if keras:
        check_keras_flags(parser, flags)
        run['srresnet_checkpoint'], run['update_order'] = 'none', 'd-first'
    run['update_order'] = run['update_order'] or 'g-first'
    run['ema_warmup'] = bool(run['ema_warmup'])
    run['generator_arch'] = models.SRGAN_VARIANT_ARCHS.get(run['variant'], 'srresnet')
    if run['srresnet_checkpoint'] is None:
        run['srresnet_checkpoint'] = default_warm_start(run['results_dir'], run['resume'], run['variant'])
    given = {k: run[k] for k in GENERATOR_FLAGS + ('scale',) if run[k] is not None}
    given = {('scaling_factor' if k == 'scale' else k): v for k, v in given.items()}
    config = models.model_config('srgan_keras', 4) if keras else models.model_config(
        'srresnet', 4, large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16)
    if resumed is not None and isinstance(resumed.get('generator_config'), dict):
        config = dict(resumed['generator_config'])  # flags given now that differ are refused by load_resume
    elif warm_start(run['srresnet_checkpoint'], run['resume']):
        config = warm_start_config(run['srresnet_checkpoint'], given)
    config.update(given)
    run['scale'] = scale = int(config['scaling_factor'])
    try:
        models.check_scale(run['generator_arch'], scale)
    except ValueError as e:
        parser.error(f"--scale: {e}")
    if run['crop_size'] % scale:
        parser.error(f"--crop-size {run['crop_size']} is not divisible by --scale {scale}")
    if run['variant'] == 'realesrgan' and run['crop_size'] % 8:  # the U-Net discriminator halves it three times
        parser.error(f"--crop-size {run['crop_size']}: the realesrgan variant's U-Net discriminator needs a multiple "
                     f"of 8")
    run['generator_config'] = config
    run['discriminator_config'] = (dict(n_channels=run['n_channels_d'], skip_connection=True)
                                   if run['variant'] == 'realesrgan' else
                                   dict(kernel_size=run['kernel_size_d'], n_channels=run['n_channels_d'],
                                        n_blocks=run['n_blocks_d'], fc_size=run['fc_size_d']))
    return Settings(**run)


def warm_start_config(path, given):
    """The configuration of the SRResNet checkpoint at ``path`` (the warm start), checked: an SRResNet whose
    configuration agrees with the generator flags ``given`` ({config key: value})."""
    if not os.path.isfile(path):
        raise UserError(f"--srresnet-checkpoint {path}: no such file; train SRResNet first "
                        f"(python train_srresnet.py) or pass --srresnet-checkpoint none")
    warm = checkpoints.load_sr_model(path)
    if warm.arch != 'srresnet':
        raise UserError(f"--srresnet-checkpoint {path} holds a {warm.label}, not an SRResNet")
    diffs = [f"{k} {v} (checkpoint: {warm.config[k]})" for k, v in given.items() if warm.config.get(k) != v]
    if diffs:
        raise UserError(f"generator flags disagree with {path}: {', '.join(diffs)}; drop them to use the "
                        f"checkpoint's configuration")
    return dict(warm.config)


class GAN(NamedTuple):
    """What the steps update: the generator and discriminator (the bare modules until main wraps them for DDP /
    DataParallel / torch.compile), the VGG19 feature extractor, their optimizers, the GradScaler they share, and
    the EMA of the generator's weights (None without --ema-decay)."""
    generator: nn.Module
    discriminator: nn.Module
    vgg: nn.Module
    optimizer_g: torch.optim.Optimizer
    optimizer_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: object = None


def discriminator_step(discriminator, optimizer_d, criterion, sr, hr, scaler, device, speed, real_first=False):
    """One D update on detached SR (label 0) and HR (label 1), HR first with ``real_first`` (Real-ESRGAN's order,
    which its spectral norm's power iterations follow). Returns the loss (a tensor).

    SR and HR go through D in separate forward passes (separate BatchNorm statistics, as the tutorial) and
    separate backward passes: the gradients add up to those of the summed loss, and under DDP each
    parameter is used once per backward, as DDP requires.
    """
    optimizer_d.zero_grad(set_to_none=True)
    total = 0.
    batches = ((sr.detach(), 0.), (hr, 1.))
    for images, label in (batches[::-1] if real_first else batches):
        with autocast(device, speed.precision):
            logits = discriminator(images)  # (N, 1)
        loss = criterion(logits.float(), torch.full_like(logits, label, dtype=torch.float32))
        scaler.scale(loss).backward()
        total = total + loss.detach()
    scaler.step(optimizer_d)
    return total


def tutorial_step(gan, lr, hr, device, speed, settings):
    """One step of the tutorial's SRGAN on lr, hr RGB in [0, 1]: the generator (VGG content loss + beta * BCE), then
    the discriminator (the reverse with --update-order d-first). The caller updates the scaler.
    Returns ((lr, sr, hr, their kind) to show, {content, adversarial, discriminator: loss})."""
    generator, discriminator, vgg, scaler = gan.generator, gan.discriminator, gan.vgg, gan.scaler
    mse, bce = nn.MSELoss(), nn.BCEWithLogitsLoss()
    d_first = settings.update_order == 'd-first'
    lr = convert_image(lr, '[0, 1]', 'imagenet-norm')  # (N, 3, h, w)
    hr = convert_image(hr, '[0, 1]', 'imagenet-norm')  # (N, 3, s*h, s*w)
    if speed.channels_last:
        lr = lr.contiguous(memory_format=torch.channels_last)
    with autocast(device, speed.precision):
        sr = generator(lr)  # (N, 3, s*h, s*w), in [-1, 1]
    sr = convert_image(sr.float(), '[-1, 1]', 'imagenet-norm')  # (N, 3, s*h, s*w), imagenet-normed
    if d_first:
        d_loss = discriminator_step(discriminator, gan.optimizer_d, bce, sr, hr, scaler, device, speed)
    with autocast(device, speed.precision):
        sr_features = vgg(sr)  # (N, 512, s*h / 16, s*w / 16)
        hr_features = vgg(hr).detach()
        sr_logits = discriminator(sr)  # (N, 1)
    content_loss = mse(sr_features.float(), hr_features.float())
    adversarial_loss = bce(sr_logits.float(), torch.ones_like(sr_logits, dtype=torch.float32))
    perceptual_loss = content_loss + settings.beta * adversarial_loss
    gan.optimizer_g.zero_grad(set_to_none=True)
    scaler.scale(perceptual_loss).backward()
    scaler.step(gan.optimizer_g)
    if not d_first:
        d_loss = discriminator_step(discriminator, gan.optimizer_d, bce, sr, hr, scaler, device, speed)
    return (lr, sr, hr, 'imagenet-norm'), {'content': content_loss, 'adversarial': adversarial_loss,
                                           'discriminator': d_loss}


def keras_binary_crossentropy(probability, label):
    """Keras's binary_crossentropy of sigmoid outputs (N, 1) against a constant ``label``: the probabilities clipped to
    [1e-7, 1 - 1e-7], then -(t log p + (1 - t) log(1 - p)) averaged over the batch."""
    p = probability.clamp(KERAS_BCE_EPSILON, 1. - KERAS_BCE_EPSILON)
    return F.binary_cross_entropy(p, torch.full_like(p, label))


@contextlib.contextmanager
def batch_statistics_only(module):
    """Within: the BatchNorm layers of ``module`` (in training mode) normalise with each batch's statistics and leave
    their running statistics alone, as a Keras model frozen with trainable=False does inside another model."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def keras_discriminator_update(discriminator, optimizer_d, scaler, images, label, device, speed):
    """One D_model.train_on_batch of srgan-keras: a forward pass in training mode, Keras's BCE against ``label``, one
    Adam step, then the scaler's update (so the next update may step optimizer_d again). Returns the loss."""
    optimizer_d.zero_grad(set_to_none=True)
    with autocast(device, speed.precision):
        validity = discriminator(images)  # (N, 1), probability of "real"
    loss = keras_binary_crossentropy(validity.float(), label)
    scaler.scale(loss).backward()
    scaler.step(optimizer_d)
    scaler.update()
    return loss.detach()


def keras_step(gan, lr, hr, device, speed, settings):
    """One step of srgan-keras's fit_one_epoch on lr, hr RGB in [0, 1], everything in [-1, 1] as srgan-keras feeds it:

    1. fakes from the generator in inference mode (G_model.predict: BatchNorm on running statistics, no gradient);
    2. the discriminator first: one Adam step on the real batch (label 1), then one on the fakes (label 0), each
       its own forward pass in training mode (D_model.train_on_batch twice); hard labels, as srgan-keras;
    3. the generator, against the discriminator just updated: pixel MSE + beta * BCE(D(SR), 1) + 2e-6 * MSE of the
       VGG19 features of SR and HR (srgan-keras's VGG takes the [-1, 1] images as they are), the discriminator frozen
       (Keras's trainable=False: BatchNorm on batch statistics, its running ones left alone; the gradients it gets
       are cleared by its next update). The caller updates the scaler.
    Returns ((lr, sr, hr, '[-1, 1]') to show, {pixel, content, adversarial, discriminator: loss})."""
    generator, discriminator, vgg, scaler = gan.generator, gan.discriminator, gan.vgg, gan.scaler
    lr = convert_image(lr, '[0, 1]', '[-1, 1]')  # (N, 3, h, w)
    hr = convert_image(hr, '[0, 1]', '[-1, 1]')  # (N, 3, s*h, s*w)
    if speed.channels_last:
        lr = lr.contiguous(memory_format=torch.channels_last)
    generator.eval()
    with torch.no_grad(), autocast(device, speed.precision):
        fake = generator(lr).float()  # (N, 3, s*h, s*w), in [-1, 1]
    generator.train()
    d_real = keras_discriminator_update(discriminator, gan.optimizer_d, scaler, hr, 1., device, speed)
    d_fake = keras_discriminator_update(discriminator, gan.optimizer_d, scaler, fake, 0., device, speed)
    with autocast(device, speed.precision):
        sr = generator(lr)  # (N, 3, s*h, s*w), in [-1, 1]
        with batch_statistics_only(discriminator):
            validity = discriminator(sr)  # (N, 1)
        sr_features = vgg(sr)  # (N, 512, s*h / 16, s*w / 16)
        hr_features = vgg(hr).detach()
    pixel_loss = F.mse_loss(sr.float(), hr)
    content_loss = F.mse_loss(sr_features.float(), hr_features.float())
    adversarial_loss = keras_binary_crossentropy(validity.float(), 1.)
    loss = pixel_loss + settings.beta * adversarial_loss + KERAS_VGG_WEIGHT * content_loss
    gan.optimizer_g.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(gan.optimizer_g)
    return (lr, sr.detach().float(), hr, '[-1, 1]'), {'pixel': pixel_loss, 'content': content_loss,
                                                      'adversarial': adversarial_loss,
                                                      'discriminator': (d_real + d_fake) / 2}


def perceptual_loss(vgg, sr, hr):
    """Real-ESRGAN's perceptual loss of sr and hr, imagenet-normalised (N, 3, H, W): the mean absolute difference of
    their VGG19 features at each REALESRGAN_PERCEPTUAL_LAYERS layer, weighted and summed."""
    sr_features, hr_features = vgg(sr), vgg(hr)  # {layer: (N, C, H / 2^k, W / 2^k)}
    return sum(weight * F.l1_loss(sr_features[name].float(), hr_features[name].detach().float())
               for name, weight in REALESRGAN_PERCEPTUAL_LAYERS.items())


def realesrgan_step(gan, lr, hr, device, speed, settings):
    """One step of Real-ESRGAN's GAN stage (BasicSR's RealESRGANModel.optimize_parameters) on lr, hr RGB in [0, 1]:
    the generator on L1 + perceptual + beta * BCE(D(SR), 1) per pixel, then the U-Net discriminator on HR (label 1)
    and the detached SR (label 0), in that order. The caller updates the scaler.
    Returns ((lr, sr, hr, '[0, 1]') to show, {pixel, content (the perceptual loss), adversarial, discriminator})."""
    generator, discriminator, scaler = gan.generator, gan.discriminator, gan.scaler
    bce = nn.BCEWithLogitsLoss()
    lr_in = convert_image(lr, '[0, 1]', 'imagenet-norm')  # (N, 3, h, w), what the tutorial's generator takes
    if speed.channels_last:
        lr_in = lr_in.contiguous(memory_format=torch.channels_last)
    with autocast(device, speed.precision):
        sr = generator(lr_in)  # (N, 3, s*h, s*w), in [-1, 1]
    sr = convert_image(sr.float(), '[-1, 1]', '[0, 1]')  # (N, 3, s*h, s*w)
    with autocast(device, speed.precision):
        content_loss = perceptual_loss(gan.vgg, convert_image(sr, '[0, 1]', 'imagenet-norm'),
                                       convert_image(hr, '[0, 1]', 'imagenet-norm'))
        sr_logits = discriminator(sr)  # (N, 1, s*h, s*w)
    pixel_loss = F.l1_loss(sr, hr)
    adversarial_loss = bce(sr_logits.float(), torch.ones_like(sr_logits, dtype=torch.float32))
    loss = pixel_loss + content_loss + settings.beta * adversarial_loss
    gan.optimizer_g.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(gan.optimizer_g)
    d_loss = discriminator_step(discriminator, gan.optimizer_d, bce, sr, hr, scaler, device, speed, real_first=True)
    return (lr, sr.detach(), hr, '[0, 1]'), {'pixel': pixel_loss, 'content': content_loss,
                                             'adversarial': adversarial_loss, 'discriminator': d_loss}


STEPS = {'tutorial': tutorial_step, 'keras': keras_step, 'realesrgan': realesrgan_step}


def train_one_epoch(gan, loader, ctx, speed, settings, epoch, start_step):
    """One SRGAN epoch of the variant's steps, updating the generator's EMA (if any) after each step.
    Returns ({loss name: mean loss}, next step, stopped early?)."""
    gan.generator.train()
    gan.discriminator.train()
    device, train_step = ctx.device, STEPS[settings.variant]
    meters = {}
    start, n_patches, step = time.perf_counter(), 0, start_step
    bar = ctx.progress(loader, desc=f"epoch {epoch}")
    for step, batch in enumerate(bar, start=start_step):
        lr, hr = training.batch_to_device(batch, device, settings.scale, settings.downsample)  # RGB in [0, 1]
        (lr, sr, hr, kind), losses = train_step(gan, lr, hr, device, speed, settings)
        gan.scaler.update()
        training.update_ema(gan.ema, gan.generator)
        if step == start_step:
            ctx.log_images(f"epoch_{epoch}", epoch, lr, sr, hr, kind, kind)
        values, stop = ctx.end_step(losses, epoch, step)
        for k, value in values.items():
            meters.setdefault(k, AverageMeter()).update(value, lr.size(0))
        n_patches += lr.size(0) * ctx.dist.world_size
        if hasattr(bar, 'set_postfix'):
            bar.set_postfix(c=f"{meters['content'].avg:.4g}", d=f"{meters['discriminator'].avg:.3g}",
                            patches_s=training.patches_per_second(n_patches, start))
        loader.dataset.check_failures()
        if stop:
            return {k: m.avg for k, m in meters.items()}, step + 1, True
    return {k: m.avg for k, m in meters.items()}, step + 1, False


def checkpoint_state(gan, global_step, settings, speed, epoch, resume_step, best_psnr):
    """The tutorial's keys (generator, discriminator, optimizer_g, optimizer_d, epoch) plus what exact resume needs,
    the variant (which eval.py, test.py and --resume read) and, with --ema-decay, generator_ema (under the same keys
    as generator), ema_decay and ema_n_averaged."""
    return {
        'format_version': FORMAT_VERSION, 'arch': 'srgan', 'variant': settings.variant,
        'generator_config': settings.generator_config,
        'discriminator_config': settings.discriminator_config, 'epoch': epoch, 'resume_step': resume_step,
        'step': global_step,
        'generator': strip_prefixes(unwrap_model(gan.generator).state_dict()),
        'discriminator': strip_prefixes(unwrap_model(gan.discriminator).state_dict()),
        'optimizer_g': gan.optimizer_g.state_dict(), 'optimizer_d': gan.optimizer_d.state_dict(),
        'scaler': gan.scaler.state_dict(), 'rng': get_rng_state(), 'args': training.run_record(settings, speed),
        'best_psnr': best_psnr, **training.ema_state(gan.ema, 'generator_ema'),
    }


DISCRIMINATORS = {'tutorial': models.Discriminator, 'keras': models.KerasSRGANDiscriminator,
                  'realesrgan': models.UNetDiscriminatorSN}


def build_networks(settings, speed, device):
    """The GAN of the run's settings (no EMA yet): VGG (fails fast when its weights are missing; the realesrgan
    variant's at its five perceptual layers), the variant's generator (the tutorial's warm-started: warm_start) and
    discriminator, their Adam optimizers (the keras variant's with srgan-keras's betas and Keras's epsilon, the
    realesrgan variant's with Real-ESRGAN's betas) and the GradScaler they share."""
    keras, real = settings.variant == 'keras', settings.variant == 'realesrgan'
    try:
        vgg = (models.VGG19FeatureMaps(REALESRGAN_PERCEPTUAL_LAYERS, weights=settings.vgg_weights) if real else
               models.TruncatedVGG19(settings.vgg19_i, settings.vgg19_j, weights=settings.vgg_weights)).to(device)
    except models.VGGWeightsError as e:
        raise UserError(str(e)) from None
    generator = (models.KerasSRGANGenerator if keras else models.Generator)(**settings.generator_config).to(device)
    discriminator = DISCRIMINATORS[settings.variant](**settings.discriminator_config).to(device)
    start = warm_start(settings.srresnet_checkpoint, settings.resume)
    if start is not None:  # its EMA weights when it has them: load_sr_model's default
        generator.net.load_state_dict(checkpoints.load_sr_model(start).state)
    generator = training.apply_speed(generator, speed)
    if speed.channels_last:
        discriminator = discriminator.to(memory_format=torch.channels_last)
    adam = KERAS_ADAM if keras else REALESRGAN_ADAM if real else {}
    optimizer_g = training.make_adam(generator.parameters(), settings.lr, speed, **adam)
    optimizer_d = training.make_adam(discriminator.parameters(), settings.lr, speed, **adam)
    return GAN(generator, discriminator, vgg, optimizer_g, optimizer_d, training.make_scaler(device, speed))


def load_resume(path, ctx, settings, gan):
    """Load an SRGAN checkpoint into the GAN's networks, optimizers and generator EMA (same --ema-decay required);
    refuse anything else. Returns (start_epoch, start_step, best_psnr)."""
    ckpt = load_checkpoint(path, map_location=ctx.device)
    if ckpt.get('arch', 'srgan' if 'generator' in ckpt else 'srresnet') != 'srgan':
        raise UserError(f"{path} is not an SRGAN checkpoint")
    training.check_resume_compatible('srgan', ckpt.get('generator_config'), 'srgan', settings.generator_config, path)
    training.check_resume_compatible('srgan', ckpt.get('discriminator_config'), 'srgan',
                                     settings.discriminator_config, path)
    if 'optimizer_d' not in ckpt:
        raise UserError(f"{path} has no optimizer_d (the tutorial saved optimizer_g twice): it cannot be "
                        f"resumed exactly; start a new run from its generator instead")
    gan.generator.load_state_dict(strip_prefixes(ckpt['generator']))
    training.load_ema(gan.ema, ckpt, 'generator_ema', path)
    gan.discriminator.load_state_dict(strip_prefixes(ckpt['discriminator']))
    gan.optimizer_g.load_state_dict(ckpt['optimizer_g'])
    gan.optimizer_d.load_state_dict(ckpt['optimizer_d'])
    return training.restore_training_state(ckpt, path, gan.scaler, ctx)


def schedule_learning_rate(optimizers, settings, epoch, start_step):
    """At the start of ``epoch``: the tutorial's single x0.1 decay at half the epochs (not again on resume), the
    Keras SRGAN's x0.98 after every epoch (set from the epoch number, so a resumed run gets the same rates), or
    Real-ESRGAN's constant rate."""
    if settings.variant == 'keras':
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group['lr'] = settings.lr * KERAS_LR_DECAY ** (epoch - 1)
    elif settings.variant == 'tutorial' and epoch == int(settings.epochs / 2) and start_step == 0:
        for optimizer in optimizers:
            adjust_learning_rate(optimizer, 0.1)


def sr_network(generator):
    """The super-resolution network inside a (wrapped) generator: the tutorial Generator's SRResNet (.net), or the
    keras variant's generator itself."""
    generator = unwrap_model(generator)
    return generator.net if isinstance(generator, models.Generator) else generator


def main(argv=None):
    settings = resolve_settings(build_parser(), argv)
    with training.TrainContext.of(settings) as ctx:
        speed = training.speed_of(settings, ctx.device)
        if not speed.faithful:
            keep_freed_memory()
        seed_everything(settings.seed + ctx.dist.rank)
        set_determinism(settings.deterministic)
        gan = build_networks(settings, speed, ctx.device)
        ema = training.make_ema(gan.generator, settings.ema_decay, ctx.dist, settings.ema_warmup)  # resume restores it
        gan = gan._replace(ema=ema)
        start_epoch, start_step, best_psnr = 1, 0, None
        if settings.resume:
            start_epoch, start_step, best_psnr = load_resume(settings.resume, ctx, settings, gan)
            if training.nothing_left(settings.resume, start_epoch, settings.epochs, ctx.log):
                return 0
        val_images = training.load_val_images(settings.val_folder) if settings.val_folder else None
        bicubic = training.bicubic_psnr(val_images, settings.scale) if val_images else None  # the curves' reference
        dataset, collate = training.build_train_dataset(settings, log=ctx.log)
        ctx.open_writer(os.path.join(settings.runs_dir, settings.log_name), tag='srgan')
        g_net = training.wrap_model(gan.generator, ctx.dist, settings.ngpu, settings.sync_bn)
        d_net = training.wrap_model(gan.discriminator, ctx.dist, settings.ngpu, settings.sync_bn)
        vgg = gan.vgg
        if speed.compile:
            g_net, d_net, vgg = torch.compile(g_net), torch.compile(d_net), torch.compile(vgg)
        gan = gan._replace(generator=g_net, discriminator=d_net, vgg=vgg)  # the steps run the wrapped networks
        loader, sampler = training.make_train_loader(dataset, settings.batch_size, ctx.dist, settings.workers,
                                                     settings.seed, pin_memory=ctx.device.type == 'cuda',
                                                     collate_fn=collate)
        saver = training.CheckpointSaver(settings.checkpoint_path, ctx.dist, keep_best=settings.keep_best)
        spec = models.arch_spec(settings.generator_arch, settings.generator_config)  # how validation feeds it
        if settings.resume:
            ctx.log(training.resumed_line(settings.resume, start_epoch, start_step))

        def state(epoch, resume_step):
            return {**checkpoint_state(gan, ctx.global_step, settings, speed, epoch, resume_step, best_psnr),
                    **ctx.history_state()}

        for epoch in range(start_epoch, settings.epochs + 1):
            schedule_learning_rate((gan.optimizer_g, gan.optimizer_d), settings, epoch, start_step)
            sampler.set_epoch(epoch, start_step * loader.batch_size)
            losses, next_step, stopped = train_one_epoch(gan, loader, ctx, speed, settings, epoch, start_step)
            start_step = 0
            if stopped:
                training.stop_workers(loader)
                ctx.write_curves(f"srgan ({settings.variant}) x{settings.scale}")  # first: the resume line stays last
                saver.save_stopped(state(epoch - 1, next_step), epoch, next_step)
                return 0
            val_psnr = raw_psnr = None
            if val_images is not None and ctx.dist.is_main and training.validation_due(epoch, settings.val_every,
                                                                                       settings.epochs):
                val_psnr, raw_psnr = training.validate_run(g_net, ema, spec, settings.scale, ctx.device, val_images,
                                                           wrap=sr_network)
            best_psnr, improved = training.better(val_psnr, best_psnr)
            ctx.record_epoch(epoch, losses, val_psnr, ema is not None, bicubic, raw_psnr)
            saver.save(state(epoch, 0), improved)
            ctx.log_epoch(epoch, settings.epochs, losses, val_psnr, best_psnr, ema=ema is not None)
        training.stop_workers(loader)
        ctx.write_curves(f"srgan ({settings.variant}) x{settings.scale}")
        ctx.log(f"done: {settings.checkpoint_path}")
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
