"""The CUDA paths: fp16 with a GradScaler, bf16, channels_last, --compile, DataParallel on the GPUs present, DDP with
nccl in one process, and inference on the GPU against the CPU. Marked `cuda`; they need a CUDA GPU, so on machines
without one they are skipped with that reason. `python benchmarks/gpu_check.py` runs them (with the benchmarks)
wherever a GPU is lent: `pytest -m cuda tests/test_cuda.py`.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import inference
import models
from conftest import REPO, run_script
from checkpoints import load_checkpoint

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason='needs a CUDA GPU (python benchmarks/gpu_check.py runs these where one is lent)')]

TINY = ['--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 4, '--workers', 0, '--device', 'cuda']


def train(tmp_path, data, *extra, timeout=300):
    return run_script('train_srresnet.py', '--data-folder', data, '--results-dir', tmp_path / 'results',
                      '--runs-dir', tmp_path / 'runs', *TINY, *extra, timeout=timeout)


def ckpt(tmp_path):
    return load_checkpoint(tmp_path / 'results' / 'checkpoint_srresnet.pth')


def test_fp16_with_grad_scaler_trains_and_resumes(tmp_path, tiny_dataset):
    result = train(tmp_path, tiny_dataset['data'], '--epochs', 1, '--amp', 'fp16')
    assert result.returncode == 0, result.stderr
    first = ckpt(tmp_path)
    assert first['args']['amp'] == 'fp16' and first['scaler'].get('scale', 0) > 0  # a live GradScaler was saved
    result = train(tmp_path, tiny_dataset['data'], '--epochs', 2, '--amp', 'fp16', '--resume')
    assert result.returncode == 0 and 'resumed' in result.stdout, result.stderr
    assert ckpt(tmp_path)['epoch'] == 2


def test_auto_precision_is_bf16_on_a_bf16_gpu_and_bf16_trains(tmp_path, tiny_dataset):
    result = train(tmp_path, tiny_dataset['data'], '--epochs', 1)
    assert result.returncode == 0, result.stderr
    expected = 'bf16' if torch.cuda.is_bf16_supported() else 'off'
    state = ckpt(tmp_path)
    assert state['args']['amp'] == expected and state['args']['channels_last'] is True
    assert all(torch.isfinite(v).all() for v in state['model'].values() if v.is_floating_point())


def test_compile_trains_on_cuda(tmp_path, tiny_dataset):
    result = train(tmp_path, tiny_dataset['data'], '--epochs', 1, '--compile', timeout=900)
    assert result.returncode == 0, result.stderr
    assert not any(k.startswith('_orig_mod.') for k in ckpt(tmp_path)['model'])


def test_dataparallel_on_the_gpus_present(tmp_path, tiny_dataset):
    n = torch.cuda.device_count()
    result = train(tmp_path, tiny_dataset['data'], '--epochs', 1, '--ngpu', max(n, 1))
    assert result.returncode == 0, result.stderr
    assert not any(k.startswith('module.') for k in ckpt(tmp_path)['model'])
    # DataParallel itself on every GPU there is (one GPU: a wrapper over device 0), against the bare model.
    model = models.SRResNet(n_blocks=2, n_channels=8).cuda().eval()
    wrapped = torch.nn.DataParallel(model, device_ids=list(range(n)))
    x = torch.rand(2 * n, 3, 12, 12, device='cuda')
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model(x), rtol=1e-4, atol=1e-5)


def test_ddp_with_nccl_in_one_process(tmp_path, tiny_dataset):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '1',
           os.path.join(REPO, 'train_srresnet.py'), '--data-folder', str(tiny_dataset['data']), '--epochs', '1',
           '--results-dir', str(tmp_path / 'results'), '--runs-dir', str(tmp_path / 'runs'), *map(str, TINY)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert 'epoch 1/1' in result.stdout and ckpt(tmp_path)['epoch'] == 1


def psnr01(a, b):
    mse = ((a.double().clamp(0, 1) - b.double().clamp(0, 1)) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


@pytest.mark.parametrize('arch', ['srresnet', 'espcn', 'edsr'])
def test_upscaler_on_cuda_matches_the_cpu(arch):
    torch.manual_seed(0)
    opts = {'srresnet': dict(n_blocks=2, n_channels=8), 'espcn': dict(channels=[8, 8]),
            'edsr': dict(n_resblocks=1, n_feats=8)}[arch]
    model = models.build_model(arch, models.model_config(arch, 2, **opts)).eval()
    lr = torch.rand(1, 3, 40, 36)
    ref, _ = inference.Upscaler(model, models.ARCHS[arch], 2, 'cpu').upscale(lr)
    gpu_model = models.build_model(arch, models.model_config(arch, 2, **opts))
    gpu_model.load_state_dict(model.state_dict())
    gpu_model = gpu_model.cuda().eval()
    fp32, _ = inference.Upscaler(gpu_model, models.ARCHS[arch], 2, 'cuda', fuse=True, channels_last=True).upscale(lr)
    assert psnr01(fp32.cpu(), ref) > 60
    tiled, _ = inference.Upscaler(gpu_model, models.ARCHS[arch], 2, 'cuda', tile=16, tile_overlap=8).upscale(lr)
    assert psnr01(tiled.cpu(), ref) > 50
    for precision in ('fp16',) + (('bf16',) if torch.cuda.is_bf16_supported() else ()):
        low, _ = inference.Upscaler(gpu_model, models.ARCHS[arch], 2, 'cuda', precision=precision).upscale(lr)
        assert 30 < psnr01(low.cpu(), ref) < math.inf  # ran in low precision, and stayed close


def test_test_and_eval_scripts_on_cuda_match_the_cpu(tmp_path, tiny_dataset):
    shipped = os.path.join(REPO, 'results', 'espcn_x3_t91.pth')
    rows = {}
    for device in ('cpu', 'cuda'):
        result = run_script('eval.py', '--checkpoint', shipped, '--test-folders', tiny_dataset['test'],
                            '--protocol', 'standard', '--results-dir', tmp_path / device, '--device', device)
        assert result.returncode == 0, result.stderr
        rows[device] = (tmp_path / device / 'eval_espcn_x3_t91_x3.json').read_text()
    cpu, cuda = (json.loads(rows[d])['datasets'][0]['standard_psnr'] for d in ('cpu', 'cuda'))
    assert abs(cpu - cuda) < 0.01
    result = run_script('test.py', '--checkpoint', shipped, '--image', tiny_dataset['test'] / 'img0.png',
                        '--output-dir', tmp_path / 'up', '--device', 'cuda')
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / 'up').iterdir()) == ['img0_x3_bicubic.png', 'img0_x3_espcn.png',
                                                               'img0_x3_espcn_compare.png']
