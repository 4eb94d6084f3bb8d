"""EMA of the weights or not: ESPCN x3 on T91 with the shipped recipe (models.ARCHS, shortened to --epochs), Set5
PSNR (standard protocol: Y, border = scale, MATLAB bicubic LR) of the trained weights and of their EMA.

    python benchmarks/bench_ema.py                            # T91 -> Set5 from ../shared/data, 2 epochs, D 0.99
    python benchmarks/bench_ema.py --ema-decay 0.999          # the field's decay: too slow for 2912 steps
    python benchmarks/bench_ema.py --epochs 200 --ema-decay 0.999 --device cuda  # the whole recipe
    python benchmarks/bench_ema.py --check-without            # also train without --ema-decay (twice the time)

One training run with --ema-decay gives both sides: the EMA only watches the run, so its `model` weights are those
of the same run without the flag, bit for bit (tests/test_ema.py checks it; --check-without retrains without
the flag and compares). The recipe's cosine decay over --epochs is kept, so both sides end at a low learning rate.
The EMA keeps a share D^steps of the initial (random) weights: choose D with 1 / (1 - D) well below the steps.
Prints one JSON line and a readable one.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), 'shared', 'data')


def sh(script, *args):
    result = subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        sys.exit(f"{script} failed: {result.stderr.strip().splitlines()[-1]}")
    return result.stdout


def set5_psnr(state, config, val_folder, device):
    """Standard-protocol PSNR (inference.validate_psnr, as eval.py --protocol standard) of ESPCN x3 weights."""
    import inference
    import models
    from utils import list_image_files, load_image, pil_to_tensor
    model = models.build_model('espcn', config)
    model.load_state_dict(state)
    images = [pil_to_tensor(load_image(p)) for p in list_image_files(val_folder)]
    return inference.validate_psnr(inference.Upscaler(model.eval(), models.ARCHS['espcn'], 3, device), images, 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument('--train-folder', default=os.path.join(SHARED, 'T91'))
    parser.add_argument('--val-folder', default=os.path.join(SHARED, 'Set5'))
    parser.add_argument('--epochs', type=int, default=2, help="of the recipe's 200 (728 steps each)")
    parser.add_argument('--ema-decay', type=float, default=0.99)
    parser.add_argument('--patches-per-image', type=int, help="default: the recipe's (256)")
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--check-without', action='store_true',
                        help='also train without --ema-decay and check that its weights equal the raw side')
    args = parser.parse_args()
    for folder in (args.train_folder, args.val_folder):
        if not os.path.isdir(folder):
            sys.exit(f"{folder} not found: pass --train-folder/--val-folder")
    sys.path.insert(0, REPO)
    from checkpoints import load_checkpoint
    train = ['--arch', 'espcn', '--scale', 3, '--epochs', args.epochs, '--device', args.device, '--seed', 0]
    if args.patches_per_image:
        train += ['--patches-per-image', args.patches_per_image]
    with tempfile.TemporaryDirectory() as work:
        sh('create_data_lists.py', '--train-folders', args.train_folder, '--min-size', 32, '--output-folder', work)
        t0 = time.perf_counter()
        sh('train_srresnet.py', *train, '--ema-decay', args.ema_decay, '--data-folder', work,
           '--results-dir', os.path.join(work, 'ema'), '--runs-dir', os.path.join(work, 'runs'))
        minutes = (time.perf_counter() - t0) / 60
        ckpt = load_checkpoint(os.path.join(work, 'ema', 'checkpoint_espcn.pth'))
        same = None
        if args.check_without:
            sh('train_srresnet.py', *train, '--data-folder', work, '--results-dir', os.path.join(work, 'plain'),
               '--runs-dir', os.path.join(work, 'runs'))
            plain = load_checkpoint(os.path.join(work, 'plain', 'checkpoint_espcn.pth'))['model']
            same = all(torch.equal(plain[k], ckpt['model'][k]) for k in plain)
    raw = set5_psnr(ckpt['model'], ckpt['model_config'], args.val_folder, args.device)
    ema = set5_psnr(ckpt['model_ema'], ckpt['model_config'], args.val_folder, args.device)
    row = {'benchmark': 'ema', 'arch': 'espcn', 'scale': 3, 'epochs': args.epochs, 'steps': ckpt['step'],
           'ema_decay': args.ema_decay, 'set5_psnr_without_ema': round(raw, 3), 'set5_psnr_ema': round(ema, 3),
           'ema_minus_without_db': round(ema - raw, 3), 'train_minutes': round(minutes, 1),
           'without_run_matches_raw_weights': same,
           'command': 'python train_srresnet.py ' + ' '.join(map(str, train)) + f" --ema-decay {args.ema_decay}",
           'machine': f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
           'date': time.strftime('%Y-%m-%d')}
    print(json.dumps(row))
    print(f"ESPCN x3, T91, {args.epochs} epochs ({ckpt['step']} steps, {row['train_minutes']} min): Set5 "
          f"{raw:.3f} dB without EMA, {ema:.3f} dB with EMA {args.ema_decay} ({ema - raw:+.3f} dB)")


if __name__ == '__main__':
    main()
