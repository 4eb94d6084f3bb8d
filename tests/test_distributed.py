"""torchrun / DDP on CPU (gloo): same weights as one process over the same global batch, rank 0 alone writes,
multi-node rendezvous on localhost, a failing rank ends the job, and DDP checkpoints resume anywhere."""
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_here, run_script
from datasets import create_data_lists
from checkpoints import load_checkpoint

# ESPCN has no BatchNorm, so DDP's averaged gradients must equal one process's gradient of the global batch. In fp32:
# --amp auto is bf16 on CPUs with AMX / AVX512-BF16, where a batch of 4 and two of 2 differ by 4e-3 of the gradient.
TINY_ESPCN = ['--arch', 'espcn', '--scale', 2, '--model-opt', 'channels=[8,8]', '--crop-size', 32,
              '--patches-per-image', 1, '--batch-size', 4, '--workers', 0, '--deterministic', '--device', 'cpu',
              '--amp', 'off']


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def torchrun(*args, launcher=('--standalone', '--nproc-per-node', 2), timeout=300, script='train_srresnet.py',
             **popen):
    cmd = [sys.executable, '-m', 'torch.distributed.run', *map(str, launcher),
           os.path.join(REPO, script), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def dirs(root):
    return ['--results-dir', root / 'results', '--runs-dir', root / 'runs']


def assert_close_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


# Adam divides each step by sqrt(v): rounding noise in a near-zero gradient becomes a full step, so one process and
# DDP agree after Adam steps only machine by machine. tests/sgd_train_srresnet.py runs train_srresnet.py's own main()
# with plain SGD in Adam's place (a step linear in the gradient, so rounding stays rounding-sized) and records the
# first step's gradients.
SGD_SCRIPT = os.path.join('tests', 'sgd_train_srresnet.py')
SGD_LR = 0.5  # 4 steps move every weight tensor by > 1e-3, some 300x the comparison's tolerance (checked below)


@pytest.fixture(scope='module')
def sgd_runs(tmp_path_factory, tiny_dataset):
    """The same 2 epochs (6 images: steps of 4 + 2 per epoch) with SGD in one process and under torchrun with 2.
    Returns (root, the torchrun result)."""
    root = tmp_path_factory.mktemp('sgd_runs')
    args = ['--data-folder', tiny_dataset['data'], '--epochs', 2, *TINY_ESPCN, '--lr', SGD_LR]
    single = run_script(SGD_SCRIPT, root / 'single_step1.pth', *args, *dirs(root / 'single'))
    assert single.returncode == 0, single.stderr
    ddp = torchrun(root / 'ddp_step1.pth', *args, *dirs(root / 'ddp'), script=SGD_SCRIPT)
    assert ddp.returncode == 0, ddp.stderr
    return root, ddp


def test_ddp_first_step_gradients_are_the_one_process_gradients_of_the_global_batch(sgd_runs):
    root, _ = sgd_runs
    one, two = torch.load(root / 'single_step1.pth'), torch.load(root / 'ddp_step1.pth')
    assert one['params'].keys() == two['params'].keys() == one['grads'].keys() == two['grads'].keys()
    assert len(one['grads']) == 6  # ESPCN channels=[8,8]: three convs, a weight and a bias each
    for k in one['params']:  # the same start: rank 0's initialisation, broadcast by DDP
        torch.testing.assert_close(two['params'][k], one['params'][k], rtol=0, atol=0, msg=k)
    for k, g in one['grads'].items():
        scale = g.abs().max().item()
        assert scale > 1e-3, k  # a real gradient (here 3e-2 to 2.5e-1): the tolerance below is relative to it
        torch.testing.assert_close(two['grads'][k], g, rtol=1e-5, atol=1e-5 * scale, msg=lambda m, k=k: f"{k}: {m}")


def test_two_processes_equal_one_process_and_only_rank0_writes(sgd_runs):
    root, ddp = sgd_runs
    assert ddp.stdout.count('epoch 2/2') == 1  # rank 1 prints nothing
    a = load_checkpoint(root / 'single' / 'results' / 'checkpoint_espcn.pth')
    b = load_checkpoint(root / 'ddp' / 'results' / 'checkpoint_espcn.pth')
    assert a['step'] == b['step'] == 4
    start = torch.load(root / 'single_step1.pth')['params']
    for k, w0 in start.items():  # SGD moved every weight far beyond the tolerance: the equality is not vacuous
        assert (a['model'][k] - w0).abs().max() > 1e-3, k
    assert_close_weights(a['model'], b['model'])
    assert sorted(os.listdir(root / 'ddp' / 'results')) == ['checkpoint_espcn.pth', 'espcn_curves.png']  # rank 0's
    events = [f for _, _, files in os.walk(root / 'ddp' / 'runs') for f in files]
    assert len(events) == 1  # one TensorBoard writer: rank 0's


def test_global_batch_must_split_evenly(tmp_path, tiny_dataset):
    odd_batch = [a if a != 4 else 3 for a in TINY_ESPCN]
    result = torchrun('--data-folder', tiny_dataset['data'], '--epochs', 1, *odd_batch, *dirs(tmp_path))
    assert result.returncode != 0 and 'does not divide across 2 processes' in result.stderr


def test_two_nodes_on_localhost_then_resume_in_one_process(tmp_path, tiny_dataset):
    port = free_port()
    args = ['--data-folder', tiny_dataset['data'], '--epochs', 1, *TINY_ESPCN, *dirs(tmp_path)]
    nodes = [torchrun(*args, launcher=('--nnodes', 2, '--node-rank', rank, '--nproc-per-node', 1,
                                       '--rdzv-backend', 'c10d', '--rdzv-endpoint', f"127.0.0.1:{port}",
                                       '--rdzv-id', 'sr-test'), popen=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, err
    assert sum('epoch 1/1' in out for out, _ in outputs) == 1
    ckpt = load_checkpoint(tmp_path / 'results' / 'checkpoint_espcn.pth')
    assert ckpt['epoch'] == 1 and ckpt['args']['batch_size'] == 4
    resumed = run_here('train_srresnet.py', *args[:2], '--epochs', 2, *TINY_ESPCN, *dirs(tmp_path), '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert 'resumed' in resumed.stdout and 'epoch 2/2' in resumed.stdout


def test_ddp_resume_in_ddp_and_in_one_process_matches_straight_run(tmp_path, tiny_dataset):
    data = ['--data-folder', tiny_dataset['data']]
    straight = torchrun(*data, '--epochs', 2, *TINY_ESPCN, *dirs(tmp_path / 'straight'))
    assert straight.returncode == 0, straight.stderr
    first = torchrun(*data, '--epochs', 2, '--max-steps', 3, *TINY_ESPCN, *dirs(tmp_path / 'split'))
    assert first.returncode == 0 and 'stopped at epoch 2, step 1' in first.stdout, first.stderr
    ckpt = tmp_path / 'split' / 'results' / 'checkpoint_espcn.pth'
    single_dir = tmp_path / 'single'
    (single_dir / 'results').mkdir(parents=True)
    (single_dir / 'results' / 'checkpoint_espcn.pth').write_bytes(ckpt.read_bytes())
    ddp_resume = torchrun(*data, '--epochs', 2, '--resume', *TINY_ESPCN, *dirs(tmp_path / 'split'))
    assert ddp_resume.returncode == 0, ddp_resume.stderr
    single_resume = run_here('train_srresnet.py', *data, '--epochs', 2, '--resume', *TINY_ESPCN, *dirs(single_dir))
    assert single_resume.returncode == 0, single_resume.stderr
    reference = load_checkpoint(tmp_path / 'straight' / 'results' / 'checkpoint_espcn.pth')['model']
    assert_close_weights(load_checkpoint(ckpt)['model'], reference)
    assert_close_weights(load_checkpoint(single_dir / 'results' / 'checkpoint_espcn.pth')['model'], reference)


def test_a_rank_that_raises_ends_the_whole_job(tmp_path):
    from PIL import Image
    from conftest import photo_crops
    folder = tmp_path / 'train'
    folder.mkdir()
    for i, img in enumerate(photo_crops(64, 6)):
        Image.fromarray(img).save(folder / f"{i}.png")
    create_data_lists([str(folder)], [], 32, str(tmp_path / 'lists'), workers=1, log=lambda *_: None)
    (folder / '3.png').write_bytes(b'')  # breaks after listing: the rank that visits it raises
    proc = torchrun('--data-folder', tmp_path / 'lists', '--epochs', 1000, '--cache-gb', 0, '--crops-per-visit', 1,
                    '--max-bad-fraction', 0, *TINY_ESPCN, *dirs(tmp_path), '--dist-timeout', 60, popen=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail('the job hung after a rank failed')
    assert proc.returncode != 0
    assert 'training image loads failed' in err


def test_ngpu_and_torchrun_together_is_an_error(tmp_path, tiny_dataset):
    result = torchrun('--data-folder', tiny_dataset['data'], '--ngpu', 2, *TINY_ESPCN, *dirs(tmp_path),
                      launcher=('--standalone', '--nproc-per-node', 1))
    assert result.returncode != 0 and '--ngpu (DataParallel) and torchrun (DDP) cannot be combined' in result.stderr


RECORD_SRGAN = os.path.join('tests', 'record_train_srgan.py')


def test_srgan_under_ddp_wraps_generator_and_discriminator_and_resumes(tmp_path, tiny_dataset):
    """G and D in DDP, the frozen VGG not; D's (and G's) weights the same on both ranks after training; the losses every rank
    logs and prints are the mean of the ranks' own losses (recorded by tests/record_train_srgan.py, which runs
    train_srgan.py's main); then a resume under torchrun."""
    args = ['--data-folder', tiny_dataset['data'], '--vgg-weights', 'random', '--srresnet-checkpoint', 'none',
            '--n-blocks', 2, '--n-channels', 8, '--n-blocks-d', 2, '--n-channels-d', 8, '--fc-size-d', 16,
            '--crop-size', 32, '--batch-size', 4, '--workers', 0, '--device', 'cpu', '--amp', 'off', *dirs(tmp_path)]
    first = torchrun(tmp_path / 'record', *args, '--epochs', 1, script=RECORD_SRGAN)
    assert first.returncode == 0, first.stderr
    ranks = [torch.load(tmp_path / f"record.{r}", weights_only=True) for r in (0, 1)]
    for record in ranks:
        assert record['wrapped'] == {'generator': 'DistributedDataParallel',
                                     'discriminator': 'DistributedDataParallel', 'vgg': 'TruncatedVGG19'}
        assert record['vgg_trainable'] == 0
    for net in ('discriminator', 'generator'):
        assert ranks[0][net].keys() == ranks[1][net].keys()
        for k in ranks[0][net]:
            assert torch.equal(ranks[0][net][k], ranks[1][net][k]), (net, k)
    saved = load_checkpoint(tmp_path / 'results' / 'checkpoint_srgan.pth')
    assert all(torch.equal(saved['discriminator'][k], v) for k, v in ranks[0]['discriminator'].items())
    steps = list(zip(ranks[0]['steps'], ranks[1]['steps']))
    assert len(steps) == 2  # 6 patches, global batch 4: a batch of 2 + 2, then 1 + 1
    for a, b in steps:
        assert a['mean'] == b['mean']  # every rank sees the same numbers
        assert a['local'] != b['local']  # the ranks trained on different patches
        for name in ('content', 'adversarial', 'discriminator'):
            assert a['mean'][name] == pytest.approx((a['local'][name] + b['local'][name]) / 2, rel=1e-6)
    printed = dict(re.findall(r"(\w+) ([\d.e+-]+)", first.stdout.split('epoch 1/1: ')[1].splitlines()[0]))
    for name in ('content', 'adversarial', 'discriminator'):  # the epoch's mean over local batches of 2 and 1
        expected = (2 * steps[0][0]['mean'][name] + steps[1][0]['mean'][name]) / 3
        assert float(printed[name]) == pytest.approx(expected, rel=1e-4)  # printed to 5 significant digits
    second = torchrun(*args, '--epochs', 2, '--resume', script='train_srgan.py')
    assert second.returncode == 0, second.stderr
    assert 'resumed' in second.stdout and second.stdout.count('epoch 2/2') == 1
    ckpt = load_checkpoint(tmp_path / 'results' / 'checkpoint_srgan.pth')
    assert ckpt['epoch'] == 2 and not any(k.startswith('module.') for k in ckpt['discriminator'])
