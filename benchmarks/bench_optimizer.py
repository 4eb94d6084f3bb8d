"""The optimizer step alone: torch's Adam as the tutorial builds it (one kernel per parameter), with foreach=True,
and fused (what the training scripts use on CPU and CUDA, training.make_adam), side by side in one process, over
the parameters of the suite's networks. Random gradients; the update's arithmetic does not depend on them.

    python benchmarks/bench_optimizer.py                       # ESPCN x3, SRCNN, SRResNet x4 on the CPU
    python benchmarks/bench_optimizer.py --device cuda --archs srresnet

Prints one JSON line per network (ms per step for each variant, the best of --rounds alternating rounds) and a
summary line.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402

VARIANTS = {'plain': {}, 'foreach': {'foreach': True}, 'fused': {'fused': True}}


def step_ms(optimizer, steps, device):
    """Milliseconds per optimizer.step() over ``steps`` steps."""
    if device.type == 'cuda':
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def measure(arch, scale, device, steps, rounds):
    """{variant: best ms per step} for Adam over ``arch``'s parameters, each variant on its own copy."""
    torch.manual_seed(0)
    model = models.build_model(arch, models.model_config(arch, scale)).to(device)
    optimizers = {}
    for name, options in VARIANTS.items():
        params = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
        for p in params:
            p.grad = torch.randn_like(p)
        optimizers[name] = torch.optim.Adam(params, lr=1e-4, **options)
        step_ms(optimizers[name], 5, device)  # warm-up: state allocated, kernels chosen
    best = {name: float('inf') for name in VARIANTS}
    for _ in range(rounds):
        for name, optimizer in optimizers.items():
            best[name] = min(best[name], step_ms(optimizer, steps, device))
    return best, sum(p.numel() for p in model.parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--archs', nargs='*', default=['espcn', 'srcnn', 'srresnet'], choices=sorted(models.ARCHS))
    parser.add_argument('--steps', type=int, default=200, help='timed steps per round')
    parser.add_argument('--rounds', type=int, default=5, help='alternating rounds; the best round counts')
    args = parser.parse_args()
    device = torch.device(args.device)
    summary = []
    for arch in args.archs:
        scale = 3 if 3 in models.ARCHS[arch].scales else 4
        best, n_params = measure(arch, scale, device, args.steps, args.rounds)
        print(json.dumps({'benchmark': 'optimizer', 'arch': arch, 'scale': scale, 'params': n_params,
                          'device': str(device), 'threads': torch.get_num_threads(), 'torch': torch.__version__,
                          **{f"{name}_ms": round(ms, 4) for name, ms in best.items()},
                          'fused_speedup': round(best['plain'] / best['fused'], 2)}))
        summary.append(f"{arch} ({n_params:,} params): plain {best['plain']:.3f} ms, foreach {best['foreach']:.3f}, "
                       f"fused {best['fused']:.3f} ({best['plain'] / best['fused']:.1f}x)")
    print('; '.join(summary))


if __name__ == '__main__':
    main()
