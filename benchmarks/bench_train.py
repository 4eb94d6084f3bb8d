"""Training-step throughput of SRResNet x4: the suite's defaults against the tutorial's fp32 NCHW eager step.

    python benchmarks/bench_train.py                      # CPU (or the default device), batch 16, 96-px crops
    python benchmarks/bench_train.py --device cuda --batch-size 64 --compile

Both sides run the same model on the same random batches, in one process, alternating so that machine load
hits both alike. The reference is written here as the tutorial wrote it (imagenet-norm LR in, [-1, 1] out,
MSE, Adam, fp32, NCHW, eager). The suite side uses the suite's own pieces: resolve_speed_args (--amp auto,
channels_last), utils.autocast, model_io. Prints one JSON line and one readable line.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
import utils  # noqa: E402


def tutorial_step(model, optimizer, lr_imgs, hr_imgs):
    """The tutorial's training step, verbatim in spirit: fp32 NCHW eager."""
    sr_imgs = model(lr_imgs)
    loss = torch.nn.functional.mse_loss(sr_imgs, hr_imgs)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def suite_step(model, optimizer, lr01, hr01, speed, device):
    """The suite's step (as train_srresnet.train_one_epoch does it)."""
    x, target = utils.model_io(models.ARCHS['srresnet'], lr01, hr01, 4)
    if speed.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with utils.autocast(device, speed.amp):
        sr = model(x)
    loss = torch.nn.functional.mse_loss(sr.float(), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def timed(step, n):
    t0 = utils.timer()
    for _ in range(n):
        step()
    return (utils.timer() - t0) / n


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--crop-size', type=int, default=96)
    parser.add_argument('--steps', type=int, default=5, help='timed steps per round')
    parser.add_argument('--rounds', type=int, default=3, help='alternating rounds; the best round counts')
    parser.add_argument('--amp', default='auto', choices=('auto', 'off', 'bf16', 'fp16'))
    parser.add_argument('--compile', action='store_true')
    args = parser.parse_args()
    device = utils.pick_device(args.device)
    speed = utils.resolve_speed_args(argparse.Namespace(faithful=False, amp=args.amp, channels_last=None,
                                                        compile=args.compile), device)
    torch.manual_seed(0)
    n, c = args.batch_size, args.crop_size
    lr01 = torch.rand(n, 3, c // 4, c // 4, device=device)
    hr01 = torch.rand(n, 3, c, c, device=device)

    ref_model = models.SRResNet().to(device)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-4)
    lr_norm = utils.convert_image(lr01, '[0, 1]', 'imagenet-norm')
    hr_pm1 = utils.convert_image(hr01, '[0, 1]', '[-1, 1]')

    model = models.SRResNet().to(device)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    net = torch.compile(model) if args.compile else model

    def ref():
        return tutorial_step(ref_model, ref_opt, lr_norm, hr_pm1)

    def suite():
        return suite_step(net, optimizer, lr01, hr01, speed, device)

    ref(), suite(), suite()  # warm-up (and compilation)
    ref_times, suite_times = [], []
    for _ in range(args.rounds):
        ref_times.append(timed(ref, args.steps))
        suite_times.append(timed(suite, args.steps))
    ref_s, suite_s = min(ref_times), min(suite_times)
    result = {
        'benchmark': 'train_step_srresnet_x4', 'device': str(device), 'torch': torch.__version__,
        'threads': torch.get_num_threads(), 'batch_size': n, 'crop_size': c,
        'suite_settings': {'amp': speed.amp, 'channels_last': speed.channels_last, 'compile': args.compile},
        'reference_s_per_step': round(ref_s, 4), 'suite_s_per_step': round(suite_s, 4),
        'reference_patches_per_s': round(n / ref_s, 1), 'suite_patches_per_s': round(n / suite_s, 1),
        'speedup': round(ref_s / suite_s, 2), 'date': time.strftime('%Y-%m-%d'),
    }
    print(json.dumps(result))
    print(f"train step SRResNet x4, batch {n}, {c}px, {device}: tutorial fp32 NCHW {ref_s:.3f} s/step, "
          f"suite (amp {speed.amp}, channels_last {speed.channels_last}, compile {args.compile}) {suite_s:.3f} "
          f"s/step: {ref_s / suite_s:.2f}x")


if __name__ == '__main__':
    main()
