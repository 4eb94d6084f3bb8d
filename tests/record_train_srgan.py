"""Test helper, not a test module: train_srgan.py's own main(), recording what it trains with.

    torchrun --standalone --nproc-per-node 2 tests/record_train_srgan.py RECORD TRAIN_SRGAN_FLAGS...

Each rank r (0 without torchrun) writes RECORD.r: {'wrapped': {'generator', 'discriminator', 'vgg': the class name of
the module train_one_epoch got}, 'vgg_trainable': how many VGG parameters require a gradient, 'steps': [{'local':
{loss name: this rank's own loss}, 'mean': {loss name: what TrainContext.end_step returned}} per step], 'generator',
'discriminator': the networks' parameters after the last epoch (not the BatchNorm statistics: DDP copies rank 0's
to the others at each forward pass, so each rank's own last update differs and rank 0's are the ones saved)}. Everything else is the script's.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_srgan  # noqa: E402
import training  # noqa: E402
from utils import run_cli, unwrap_model  # noqa: E402

RECORD = {'steps': []}


def recording_train_one_epoch(gan, *args, train_one_epoch=train_srgan.train_one_epoch):
    RECORD['wrapped'] = {name: type(net).__name__ for name, net in
                         (('generator', gan.generator), ('discriminator', gan.discriminator), ('vgg', gan.vgg))}
    RECORD['vgg_trainable'] = sum(p.requires_grad for p in gan.vgg.parameters())
    result = train_one_epoch(gan, *args)
    for name, net in (('generator', gan.generator), ('discriminator', gan.discriminator)):
        RECORD[name] = {k: v.detach().clone() for k, v in unwrap_model(net).named_parameters()}
    return result


def recording_end_step(self, losses, *args, end_step=training.TrainContext.end_step):
    local = {k: v.detach().float().item() for k, v in losses.items()}
    values, stop = end_step(self, losses, *args)
    RECORD['steps'].append({'local': local, 'mean': dict(values)})
    return values, stop


if __name__ == '__main__':
    record_path = sys.argv.pop(1)
    train_srgan.train_one_epoch = recording_train_one_epoch
    training.TrainContext.end_step = recording_end_step
    rc = run_cli(train_srgan.main)
    torch.save(RECORD, f"{record_path}.{os.environ.get('RANK', '0')}")
    sys.exit(rc)
