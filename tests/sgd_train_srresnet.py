"""Test helper, not a test module: train_srresnet.py's own main() with plain SGD where it builds Adam.

    python tests/sgd_train_srresnet.py RECORD.pth TRAIN_SRRESNET_FLAGS...
    torchrun --standalone --nproc-per-node 2 tests/sgd_train_srresnet.py RECORD.pth TRAIN_SRRESNET_FLAGS...

Adam's step divides by sqrt(v), so rounding noise in a near-zero gradient becomes a full lr-sized step: one process
and DDP then agree only machine by machine. SGD's step is linear in the gradient, so the rounding of DDP's averaging
stays rounding-sized. Everything else is the script's: model, loss, schedule, data split, DDP wrapping, checkpoints.
Rank 0 (the only process without torchrun) also writes RECORD.pth: {'params': {name: value before the first step},
'grads': {name: gradient of the first step}} (under DDP the gradients DDP averaged across ranks).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_srresnet  # noqa: E402
from utils import run_cli  # noqa: E402


class RecordingSGD(torch.optim.SGD):
    """Plain SGD in Adam's place (build_training calls torch.optim.Adam(params, lr=args.lr, ...) through
    training.make_adam; Adam's options such as fused are dropped); records step 1."""

    record_path, names, steps = None, None, 0

    def __init__(self, params, lr, **adam_options):
        super().__init__(params, lr=lr)

    def step(self, closure=None):
        if RecordingSGD.steps == 0 and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0):
            params = [p for group in self.param_groups for p in group['params']]
            torch.save({'params': {self.names[p]: p.detach().clone() for p in params},
                        'grads': {self.names[p]: p.grad.detach().clone() for p in params}}, RecordingSGD.record_path)
        RecordingSGD.steps += 1
        return super().step(closure)


def build_training_with_sgd(settings, speed, device, build_training=train_srresnet.build_training):
    trainee = build_training(settings, speed, device)
    if not isinstance(trainee.optimizer, RecordingSGD):
        sys.exit(f"train_srresnet.build_training made a {type(trainee.optimizer).__name__}, not torch.optim.Adam: "
                 f"update this helper")
    RecordingSGD.names = {p: name for name, p in trainee.model.named_parameters()}
    return trainee


if __name__ == '__main__':
    RecordingSGD.record_path = sys.argv.pop(1)
    torch.optim.Adam = RecordingSGD
    train_srresnet.build_training = build_training_with_sgd
    rc = run_cli(train_srresnet.main)
    if rc == 0 and RecordingSGD.steps == 0:
        sys.exit("train_srresnet.main trained without its build_training's optimizer: update this helper")
    sys.exit(rc)
