"""export.py: ONNX of every architecture checked with onnxruntime, safetensors round trips (also into test.py,
eval.py and train_srresnet.py --init-from), the suite's own format for published weights, and the file rules."""
import json
import re

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import checkpoints
import export
import inference
import models
import train_srresnet
import utils
from conftest import doc_text, run_here
from test_published import (edsr_pytorch_forward, edsr_pytorch_shapes, msrresnet_shapes, random_sd, save_weights,
                            tiny_spandrel)

TINY = {
    'srresnet': dict(n_channels=8, n_blocks=2), 'srcnn': dict(channels=[8, 4]), 'espcn': dict(channels=[8, 4]),
    'edsr': dict(n_resblocks=1, n_feats=8), 'rcan': dict(n_resgroups=1, n_resblocks=2, n_feats=8, reduction=4),
    'msrresnet': dict(n_channels=8, n_blocks=2),
}


def suite_checkpoint(tmp_path, arch, scale, srgan=False):
    """A checkpoint of the suite with random weights (non-trivial BatchNorm statistics), as training writes it."""
    torch.manual_seed(scale)
    config = models.model_config(arch, scale, **TINY[arch])
    model = models.build_model(arch, config)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    if arch in ('srcnn', 'espcn'):  # a random Y-model's luma is near 0: lift it mid-range so little is clamped
        with torch.no_grad():
            (model.conv3 if arch == 'srcnn' else model.body[-1]).bias.fill_(0.5)
    if srgan:
        ckpt = {'format_version': 1, 'arch': 'srgan', 'generator_config': config,
                'generator': {'net.' + k: v for k, v in model.state_dict().items()}, 'epoch': 1}
    else:
        ckpt = {'format_version': 1, 'arch': arch, 'model_config': config, 'model': model.state_dict(), 'epoch': 1}
    path = tmp_path / f"checkpoint_{'srgan' if srgan else arch}.pth"
    checkpoints.save_checkpoint(ckpt, str(path))
    return path


def onnx_vs_upscaler(onnx_path, loaded, sizes):
    """Max abs difference between onnxruntime and inference.Upscaler (plain model, fp32) on random inputs, and the
    share of output values strictly inside (0, 1) (the comparison is not one of clamped values)."""
    session = onnxruntime.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    upscaler = inference.Upscaler(loaded.network, loaded.spec, loaded.config['scaling_factor'], 'cpu')
    worst, inside = 0., []
    for n, h, w in sizes:
        lr = torch.rand(n, 3, h, w)
        expected = upscaler.upscale(lr)[0].clamp(0, 1).numpy()
        got = session.run(['sr'], {'lr': lr.numpy()})[0]
        assert got.shape == expected.shape
        worst = max(worst, float(np.abs(got - expected).max()))
        inside.append(float(((expected > 0) & (expected < 1)).mean()))
    return worst, min(inside)


@pytest.mark.parametrize('arch,scale,srgan', [('srresnet', 4, False), ('srresnet', 2, True), ('srcnn', 3, False),
                                              ('espcn', 3, False), ('edsr', 3, False), ('rcan', 2, False),
                                              ('msrresnet', 4, False)])
def test_onnx_of_every_architecture_matches_pytorch_in_onnxruntime(tmp_path, capsys, arch, scale, srgan):
    path = suite_checkpoint(tmp_path, arch, scale, srgan)
    before = path.read_bytes()
    assert export.main(['--checkpoint', str(path), '--format', 'onnx']) == 0
    onnx_path = path.with_suffix('.onnx')
    assert path.read_bytes() == before
    assert f"wrote {onnx_path}" in capsys.readouterr().out
    graph = onnx.load(str(onnx_path))
    onnx.checker.check_model(graph)
    (lr,), (sr,) = graph.graph.input, graph.graph.output
    assert (lr.name, sr.name) == ('lr', 'sr')
    dims = [d.dim_param or d.dim_value for d in lr.type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))  # N, H, W dynamic
    props = {p.key: p.value for p in graph.metadata_props}
    assert props['arch'] == ('srgan' if srgan else arch) and props['scaling_factor'] == str(scale)
    # Sizes unlike export.py's own check and trace; the fused graph against the plain PyTorch model.
    worst, inside = onnx_vs_upscaler(onnx_path, checkpoints.load_sr_model(str(path)), [(1, 9, 14), (3, 16, 11)])
    assert worst <= 1e-5 and inside > 0.5  # docs/export.md: 1e-7 to a few 1e-6 (export.py refuses over 1e-4)


def test_onnx_check_catches_a_wrong_graph(tmp_path, monkeypatch):
    path = suite_checkpoint(tmp_path, 'espcn', 3)
    model = checkpoints.load_sr_model(str(path))
    real_forward = inference.RGBNetwork.forward  # a graph 1% off: the onnxruntime check must refuse to write it
    monkeypatch.setattr(inference.RGBNetwork, 'forward', lambda self, lr: real_forward(self, lr) * 0.99)
    with pytest.raises(utils.UserError, match=r'onnxruntime differs from PyTorch by .* nothing written'):
        export.export_onnx(model, str(tmp_path / 'espcn.onnx'), 17, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint_espcn.pth']


def readme_onnx_snippet():
    section = doc_text('export.md').split('\n## Export', 1)[1].split('\n## ', 1)[0]
    blocks = re.findall(r'```python\n(.*?)```', section, flags=re.S)
    return next(block for block in blocks if 'InferenceSession' in block)


def test_cli_onnx_export_and_the_readme_snippet_upscale_like_test_py(tmp_path, tiny_dataset):
    path = suite_checkpoint(tmp_path, 'espcn', 3)  # a Y-channel model: colour conversion and Cb/Cr in the graph
    result = run_here('export.py', '--checkpoint', path, '--format', 'onnx', '--output', tmp_path / 'espcn.onnx')
    assert result.returncode == 0, result.stderr
    photo = sorted(tiny_dataset['test'].iterdir())[0]  # 64 x 64 real photo
    code = readme_onnx_snippet().replace('checkpoint_srresnet.onnx', str(tmp_path / 'espcn.onnx'))
    code = code.replace("'photo.png'", repr(str(photo))).replace("'photo_sr.png'", repr(str(tmp_path / 'sr.png')))
    exec(compile(code, 'docs/export.md snippet', 'exec'), {})
    loaded = checkpoints.load_sr_model(str(path))
    lr = utils.pil_to_tensor(utils.load_image(str(photo)))[None].float() / 255
    expected = inference.Upscaler(loaded.network, loaded.spec, 3, 'cpu', fuse=True, channels_last=True)
    expected = expected.upscale_uint8(lr)[0].permute(1, 2, 0).numpy().astype(int)  # what test.py writes
    with Image.open(tmp_path / 'sr.png') as sr:
        got = np.asarray(sr).astype(int)
    assert got.shape == (192, 192, 3) and np.abs(got - expected).max() <= 1 and (got != expected).mean() < 0.01


def test_onnx_refuses_networks_that_need_padding_in_one_line(tmp_path, capsys):
    pytest.importorskip('spandrel')
    path = save_weights(tiny_spandrel('SwinIR'), tmp_path / 'swinir.pth')
    with pytest.raises(utils.UserError) as err:
        export.main(['--checkpoint', str(path), '--format', 'onnx'])
    assert 'cannot export SwinIR to ONNX' in str(err.value) and '\n' not in str(err.value)
    assert not (tmp_path / 'swinir.onnx').exists()
    esrgan = save_weights(tiny_spandrel('ESRGAN'), tmp_path / 'esrgan.pth')  # no padding needed: exported
    assert export.main(['--checkpoint', str(esrgan), '--format', 'onnx']) == 0
    worst, inside = onnx_vs_upscaler(tmp_path / 'esrgan.onnx', checkpoints.load_sr_model(str(esrgan)), [(1, 9, 7)])
    assert worst <= 1e-4 and inside > 0.5


# ----------------------------------------------------------------------------------------------
# safetensors and the suite's own format
# ----------------------------------------------------------------------------------------------

def kinds(tmp_path):
    """A file of each kind export.py reads: (path, label)."""
    sd = random_sd(edsr_pytorch_shapes(2, 1, 8), dtype=torch.float32)
    torch.save(sd, tmp_path / 'edsr_x2.pt')
    msr = random_sd(msrresnet_shapes(3, 1, 8), dtype=torch.float32)
    torch.save({'params_ema': msr}, tmp_path / 'msrresnet_x3.pth')
    labelled = checkpoints.load_checkpoint(suite_checkpoint(tmp_path, 'srresnet', 4))
    checkpoints.save_checkpoint({**labelled, 'label': 'srresnet_real'}, str(tmp_path / 'real_x4.pth'))  # the photo model
    out = [(suite_checkpoint(tmp_path, 'rcan', 2), 'rcan'), (suite_checkpoint(tmp_path, 'srresnet', 2, True), 'srgan'),
           (tmp_path / 'edsr_x2.pt', 'edsr'), (tmp_path / 'msrresnet_x3.pth', 'msrresnet'),
           (tmp_path / 'real_x4.pth', 'srresnet_real')]
    try:
        import spandrel  # noqa: F401
        out.append((save_weights(tiny_spandrel('Compact'), tmp_path / 'compact.pth'), 'Compact'))
    except ImportError:
        pass
    return out


@pytest.mark.parametrize('fmt', ['safetensors', 'pth'])
def test_every_kind_round_trips_through_safetensors_and_the_suites_format(tmp_path, fmt):
    for path, label in kinds(tmp_path):
        out = tmp_path / f'{path.stem}_export.{fmt}'
        assert export.main(['--checkpoint', str(path), '--format', fmt, '--output', str(out)]) == 0
        before, after = checkpoints.load_sr_model(str(path)), checkpoints.load_sr_model(str(out))
        assert (after.label, after.arch, after.config) == (before.label, before.arch, before.config) and \
            after.label == label
        assert after.source == before.source and list(after.notes) == list(before.notes)
        assert after.state.keys() == before.state.keys()
        assert all(torch.equal(after.state[k], before.state[k].float()) for k in before.state)
        x = torch.rand(1, 3, 10, 12)
        with torch.no_grad():
            a, b = checkpoints.load_sr_model(str(path)), checkpoints.load_sr_model(str(out))
            sr_a, sr_b = (inference.Upscaler(m.network, m.spec, m.config['scaling_factor'], 'cpu').upscale(x)[0]
                          for m in (a, b))
        torch.testing.assert_close(sr_b, sr_a, rtol=0, atol=0)
        if fmt == 'safetensors':  # tensors and strings only, this suite's keys
            with safe_open(str(out), framework='pt') as f:
                meta = f.metadata()
            assert all(isinstance(v, str) for v in meta.values())
            assert meta['format'] == 'sr-suite' and meta['scaling_factor'] == str(before.config['scaling_factor'])
            assert json.loads(meta['config']) == before.config
            assert meta['arch'] == {'Compact': 'spandrel', 'srresnet_real': 'srresnet'}.get(label, label)
            assert meta.get('label') == ('srresnet_real' if label == 'srresnet_real' else None)
        else:  # plain data, weights_only
            ckpt = torch.load(out, weights_only=True)
            assert ckpt['format_version'] == 1 and ('model' in ckpt or 'generator' in ckpt)


@pytest.mark.parametrize('arch,scale,network_in,network_out', [
    ('srresnet', 4, 'RGB imagenet-norm (N, 3, H, W)', 'RGB [-1, 1] (N, 3, 4H, 4W)'),
    ('espcn', 3, 'BT.601 luma Y in [0, 1] (N, 1, H, W)', 'Y in [0, 1] (N, 1, 3H, 3W)'),
    ('srcnn', 2, 'BT.601 luma Y in [0, 1] (N, 1, 2H, 2W), bicubic-upscaled', 'Y in [0, 1] (N, 1, 2H, 2W)')])
def test_safetensors_metadata_holds_every_documented_key(tmp_path, arch, scale, network_in, network_out):
    """export.py's docstring: format, format_version, arch, weights, config (JSON), scaling_factor, input and output
    (what the network takes and gives, in words) -- written out here for each kind of network."""
    path = suite_checkpoint(tmp_path, arch, scale)
    out = tmp_path / 'out.safetensors'
    assert export.main(['--checkpoint', str(path), '--format', 'safetensors', '--output', str(out)]) == 0
    with safe_open(str(out), framework='pt') as f:
        meta = f.metadata()
    config = models.model_config(arch, scale, **TINY[arch])
    assert (meta['format'], meta['format_version'], meta['arch'], meta['weights']) == ('sr-suite', '1', arch, 'model')
    assert json.loads(meta['config']) == config and meta['scaling_factor'] == str(scale)
    assert (meta['input'], meta['output']) == (network_in, network_out)


def test_safetensors_runs_in_test_py_eval_py_and_starts_a_training_run(tmp_path, tiny_dataset, capsys):
    src = suite_checkpoint(tmp_path, 'msrresnet', 2)
    st = tmp_path / 'msrresnet_x2.safetensors'
    assert export.main(['--checkpoint', str(src), '--format', 'safetensors', '--output', str(st)]) == 0
    photo = sorted(tiny_dataset['test'].iterdir())[0]
    up = run_here('test.py', '--checkpoint', st, '--image', photo, '--output-dir', tmp_path / 'up', '--device', 'cpu')
    assert up.returncode == 0, up.stderr
    assert (tmp_path / 'up' / f'{photo.stem}_x2_msrresnet.png').is_file()
    ev = run_here('eval.py', '--checkpoint', st, '--test-folders', tiny_dataset['test'], '--results-dir',
                  tmp_path / 'eval', '--device', 'cpu', '--protocol', 'standard')
    assert ev.returncode == 0 and 'msrresnet' in ev.stdout, ev.stderr
    common = ['--arch', 'msrresnet', '--scale', 2, '--model-opt', 'n_blocks=2', '--data-folder', tiny_dataset['data'],
              '--runs-dir', tmp_path / 'runs', '--crop-size', 24, '--batch-size', 2, '--epochs', 1,
              '--patches-per-image', 1, '--workers', 0, '--amp', 'off']
    train = run_here('train_srresnet.py', *common, '--model-opt', 'n_channels=8', '--results-dir', tmp_path / 'run',
                     '--lr', 0, '--init-from', st)
    assert train.returncode == 0, train.stderr
    trained = checkpoints.load_checkpoint(str(tmp_path / 'run' / 'checkpoint_msrresnet.pth'))
    exported = checkpoints.load_sr_model(str(st)).state
    assert trained['epoch'] == 1 and trained['model'].keys() == exported.keys()
    assert all(torch.equal(trained['model'][k], exported[k]) for k in exported)  # lr 0: the initial weights
    argv = [str(a) for a in common] + ['--model-opt', 'n_channels=16', '--init-from', str(st)]
    args = train_srresnet.resolve_settings(train_srresnet.build_parser(), argv)
    model = models.build_model(args.arch, args.model_config)
    with pytest.raises(utils.UserError, match='n_channels: checkpoint 8 vs now 16'):
        train_srresnet.load_init(str(st), args, model, print)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # an argparse error, before any work
        train_srresnet.resolve_settings(train_srresnet.build_parser(), argv + ['--resume', str(src)])
    assert '--init-from starts a new run from weights, --resume continues one' in capsys.readouterr().err


def test_existing_outputs_are_kept_unless_overwrite(tmp_path):
    path = suite_checkpoint(tmp_path, 'edsr', 2)
    out = tmp_path / 'edsr.safetensors'
    out.write_bytes(b'precious')
    result = run_here('export.py', '--checkpoint', path, '--format', 'safetensors', '--output', out)
    assert result.returncode == 2 and 'exists: pass --overwrite' in result.stderr
    assert out.read_bytes() == b'precious' and result.stderr.count('\n') == 1
    assert export.main(['--checkpoint', str(path), '--format', 'safetensors', '--output', str(out),
                        '--overwrite']) == 0
    assert checkpoints.load_sr_model(str(out)).arch == 'edsr'
    with pytest.raises(utils.UserError, match='is the checkpoint itself'):
        export.main(['--checkpoint', str(path), '--format', 'pth', '--overwrite'])
    with pytest.raises(utils.UserError, match='--res-scale 0.5: .* says res_scale 1 itself'):
        export.main(['--checkpoint', str(path), '--format', 'onnx', '--res-scale', '0.5'])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint_edsr.pth', 'edsr.safetensors']


def test_published_edsr_converted_once_keeps_its_assumption(tmp_path):
    sd = random_sd(edsr_pytorch_shapes(2, 1, 8), dtype=torch.float32, last_gain=0.1)
    torch.save(sd, tmp_path / 'edsr_x2.pt')
    out = tmp_path / 'edsr_x2.pth'
    assert export.main(['--checkpoint', str(tmp_path / 'edsr_x2.pt'), '--format', 'pth', '--res-scale', '0.1']) == 0
    loaded = checkpoints.load_sr_model(str(out))  # res_scale is recorded now: no flag needed any more
    assert loaded.config['res_scale'] == 0.1 and any('--res-scale' in n for n in loaded.notes)
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network.double()(255 * x),
                                   edsr_pytorch_forward({k: v.double() for k, v in sd.items()}, 255 * x, 0.1),
                                   rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_weights_that_are_not_the_recorded_network_are_refused_and_nothing_is_written(tmp_path, fmt):
    """A checkpoint whose recorded configuration says one network while its weights are another's (here: 3 blocks
    recorded, 2 blocks of weights) is refused in one line, exit code 2, and no output file appears."""
    net = models.SRResNet(n_blocks=2, n_channels=8)
    path = tmp_path / 'liar.pth'
    checkpoints.save_checkpoint({'format_version': checkpoints.FORMAT_VERSION, 'arch': 'srresnet',
                                 'model_config': models.model_config('srresnet', 4, n_blocks=3, n_channels=8),
                                 'model': net.state_dict()}, str(path))
    result = run_here('export.py', '--checkpoint', path, '--format', fmt, '--output', tmp_path / f"out.{fmt}")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert 'weights do not match a srresnet' in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['liar.pth']
