"""The real-photo model: fine-tune the shipped SRResNet x4 on Real-ESRGAN's degradations of T91 + BSD200, evaluate
it next to the bicubic-trained model on degraded and clean test sets, print each target met / not met.

    python benchmarks/bench_real_photos.py --out results     # train, evaluate, write results/srresnet_x4_real.pth
    python benchmarks/bench_real_photos.py --work runs/real  # keep the work; the same command again continues it
    python benchmarks/bench_real_photos.py --train-flags "--epochs 1 --patches-per-image 1"   # a smoke run
    python benchmarks/bench_real_photos.py --lpips-backbone-weights alexnet.pth   # LPIPS too (AlexNet's weights)

Steps: the degraded test sets (create_data_lists.py --degrade-test Set5 Set14 BSD100 --degradation light, seed 0:
the training's distribution without its clean share), the data lists of T91 + BSD200, then COMMAND below (the
recipe cpu-291 of the primary model, from its shipped weights, Real-ESRNet's way: the PSNR model first, then the
degradations), then eval.py (standard protocol) of the new model and of the shipped SRResNet x4 on the degraded and
the clean sets. Targets (docs/real-photos.md): on degraded Set14 and BSD100 the new model beats the bicubic-trained
one by >= 1.0 dB; on clean Set5 it stays within 1.5 dB of it; training <= 150 minutes on 2 cores (the minutes are
the checkpoint's train_seconds: a stopped and continued run counts its parts). fp32, pinned: the same numbers on
every CPU, not the fastest settings of a CPU with native bf16. LPIPS (AlexNet) is reported next to PSNR / SSIM
where AlexNet's ImageNet weights are: --lpips-backbone-weights, or the torch hub cache.
"""
import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time

from bench_cpu_quality import REPO, SHARED, evaluate, sh, ship, train

sys.path.insert(0, REPO)
from checkpoints import load_checkpoint  # noqa: E402
from models import BackboneWeightsError, backbone_help, build_lpips, imagenet_weights_path  # noqa: E402

BASE = os.path.join(REPO, 'results', 'srresnet_x4_291.pth')
OUT_NAME = 'srresnet_x4_real.pth'
PRESET = 'light'
COMMAND = ['--recipe', 'cpu-291', '--degradation', PRESET, '--degradation-opt', 'clean_prob=0.3', '--lr', '2e-4',
           '--warmup-steps', '100', '--patches-per-image', '16', '--epochs', '10', '--workers', '2', '--device', 'cpu',
           '--amp', 'off']
TEST_SETS = ('Set5', 'Set14', 'BSD100')
TARGET_GAIN, TARGET_CLEAN_DROP, MAX_MINUTES = 1.0, 1.5, 150


def prepare(data, work):
    """The degraded test sets and the training lists under ``work`` (kept when there from an earlier run)."""
    tests, lists = os.path.join(work, 'tests'), os.path.join(work, 'data_291')
    if not os.path.isdir(tests):
        sh('create_data_lists.py', '--degrade-test', *(os.path.join(data, n) for n in TEST_SETS), '--scale', 4,
           '--degradation', PRESET, '--output-folder', tests)
    if not os.path.isdir(lists):
        sh('create_data_lists.py', '--train-folders', os.path.join(data, 'T91'), os.path.join(data, 'BSD200'),
           '--min-size', 96, '--output-folder', lists)
    return [os.path.join(tests, f"{n}_x4_{PRESET}") for n in TEST_SETS], lists


def scores_of(ckpt, degraded, clean, work, label, lpips):
    """{'degraded': {set: (PSNR, SSIM)}, 'clean': {...}} in the standard protocol (eval.py picks the weights; one
    eval.py run for all the sets); (PSNR, SSIM, LPIPS) with ``lpips``, AlexNet's weights ('imagenet': the torch hub
    cache, or a file)."""
    scores = evaluate(ckpt, degraded + clean, work, weights=None, protocols=('standard',), label=f"eval_{label}",
                      lpips=lpips)['standard']
    return {kind: {os.path.basename(f): scores[os.path.basename(f)] for f in folders}
            for kind, folders in (('degraded', degraded), ('clean', clean))}


def lpips_weights(flag_value):
    """AlexNet's weights for LPIPS: the file given, else 'imagenet' when the torch hub cache holds them, else None
    (LPIPS not measured)."""
    if flag_value:
        return flag_value
    return 'imagenet' if os.path.isfile(imagenet_weights_path('alexnet')) else None


def score_text(score):
    """'24.28 dB / 0.6178' (PSNR / SSIM), with ' / LPIPS 0.3210' when measured."""
    return f"{score[0]:.2f} dB / {score[1]:.4f}" + (f" / LPIPS {score[2]:.4f}" if len(score) > 2 else '')


def targets(real, base, minutes):
    """[(what, value, met?)] of the targets."""
    rows = [(f"degraded {n}: gain over the bicubic-trained SRResNet (dB, >= {TARGET_GAIN})",
             real['degraded'][f"{n}_x4_{PRESET}"][0] - base['degraded'][f"{n}_x4_{PRESET}"][0]) for n in
            ('Set14', 'BSD100')]
    rows = [(what, round(v, 3), v >= TARGET_GAIN) for what, v in rows]
    drop = base['clean']['Set5'][0] - real['clean']['Set5'][0]
    rows.append((f"clean Set5: drop from the bicubic-trained SRResNet (dB, <= {TARGET_CLEAN_DROP})", round(drop, 3),
                 drop <= TARGET_CLEAN_DROP))
    rows.append((f"training minutes (<= {MAX_MINUTES})", round(minutes, 1), minutes <= MAX_MINUTES))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument('--data', default=SHARED, help='folder holding T91, BSD200, Set5, Set14, BSD100')
    parser.add_argument('--base', default=BASE, help='the bicubic-trained SRResNet x4 to start from and compare with')
    parser.add_argument('--out', help=f'write the trained model here as {OUT_NAME} (e.g. results)')
    parser.add_argument('--work', help='keep the work in this folder; given again, the stopped or finished training '
                                       'continues (--resume) instead of starting over (default: a temporary folder)')
    parser.add_argument('--train-flags', default='', metavar='FLAGS', help='more train_srresnet.py flags (a smoke run)')
    parser.add_argument('--lpips-backbone-weights', metavar='PATH',
                        help="a torchvision AlexNet state_dict file: LPIPS is measured too (default: when the torch "
                             "hub cache holds AlexNet's ImageNet weights; otherwise LPIPS is not measured)")
    args = parser.parse_args()
    lpips = lpips_weights(args.lpips_backbone_weights)
    if lpips:
        try:  # read now, not after two hours of training
            build_lpips('alex', lpips)
        except BackboneWeightsError as e:
            sys.exit(str(e))
    missing = [n for n in ('T91', 'BSD200') + TEST_SETS if not os.path.isdir(os.path.join(args.data, n))]
    if missing:
        sys.exit(f"{', '.join(missing)} not found under {args.data}: pass --data")
    if not os.path.isfile(args.base):
        sys.exit(f"{args.base}: no such file: pass --base")
    with (tempfile.TemporaryDirectory() if args.work is None else contextlib.nullcontext(args.work)) as work:
        os.makedirs(work, exist_ok=True)
        degraded, lists = prepare(args.data, work)
        out_dir, ckpt = os.path.join(work, 'train'), os.path.join(work, 'train', 'checkpoint_srresnet.pth')
        command = COMMAND + shlex.split(args.train_flags) + [
            '--data-folder', lists, '--results-dir', out_dir, '--runs-dir', os.path.join(out_dir, 'runs'),
            '--val-folder', os.path.join(args.data, 'Set5')]
        command += ['--resume'] if os.path.isfile(ckpt) else ['--init-from', args.base]
        train(command, time.perf_counter())
        minutes = load_checkpoint(ckpt)['train_seconds'] / 60
        clean = [os.path.join(args.data, n) for n in TEST_SETS]
        real = scores_of(ckpt, degraded, clean, work, 'real', lpips)
        base = scores_of(args.base, degraded, clean, work, 'base', lpips)
        rows = targets(real, base, minutes)
        if args.out:
            ship(ckpt, os.path.join(args.out, OUT_NAME), 'srresnet', 'data/291', label='srresnet_real')
    print(json.dumps({'benchmark': 'real_photos', 'command': 'python train_srresnet.py ' + ' '.join(COMMAND),
                      'real': real, 'base': base, 'train_minutes': round(minutes, 1),
                      'targets': [{'what': w, 'value': v, 'met': m} for w, v, m in rows]}))
    for kind in ('degraded', 'clean'):
        for name in real[kind]:
            print(f"{kind} {name}: real-photo model {score_text(real[kind][name])}, "
                  f"bicubic-trained {score_text(base[kind][name])}")
    if not lpips:
        print(f"LPIPS not measured: {backbone_help('alexnet', '--lpips-backbone-weights')}")
    for what, value, met in rows:
        print(f"{what}: {value} ({'met' if met else 'NOT met'})")


if __name__ == '__main__':
    main()
