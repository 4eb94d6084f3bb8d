"""Export a network of the suite, or published weights it reads: ONNX to deploy without PyTorch, safetensors to share
weights without pickle, or this suite's own checkpoint format.

    python export.py --checkpoint results/checkpoint_srresnet.pth --format onnx    # -> results/checkpoint_srresnet.onnx
    python export.py --checkpoint results/espcn_x3_t91.pth --format onnx --output espcn_x3.onnx
    python export.py --checkpoint results/checkpoint_edsr.pth --format safetensors  # checkpoint_edsr.safetensors
    python export.py --checkpoint edsr_baseline_x2-1bc95232.pt --format pth --output results/edsr_baseline_x2.pth
    python export.py --checkpoint EDSR_Lx4_f256b32_DIV2K_official-76ee1c8f.pth --res-scale 0.1 --format safetensors
    python export.py --checkpoint RealESRGAN_x4plus.pth --format onnx --overwrite  # spandrel's ESRGAN
    python export.py --checkpoint results/checkpoint_srgan.pth --format onnx --weights raw  # not its EMA weights

--checkpoint takes whatever eval.py and test.py read (checkpoints.load_sr_model): this suite's checkpoints of any
architecture, SRGAN generators, the tutorial's files, safetensors written here, EDSR-PyTorch's EDSR, the official
RCAN release, BasicSR's EDSR / RCAN / MSRResNet, and anything spandrel (optional) recognises. What published weights
do not say (EDSR's res_scale, BasicSR's img_range) follows the official release unless --res-scale / --rgb-range
say otherwise, and is printed as 'note:' lines. A checkpoint holding an exponential moving average of its weights
(the trainers' --ema-decay) exports the average, what the trainer validated (a 'note:' line says so; --weights raw
exports the trained weights); the exported file holds that one set.

--format onnx: one graph, the same for every architecture: input 'lr', float32 (N, 3, H, W), RGB in [0, 1]; output
'sr', float32 (N, 3, s*H, s*W), RGB in [0, 1], clamped; N, H and W are dynamic (H, W >= 2). The conventions are inside
the graph (inference.RGBNetwork): value ranges, ImageNet normalisation, and for the Y-channel models (SRCNN, ESPCN)
the BT.601 conversion and MATLAB's bicubic for Cb/Cr (and SRCNN's pre-upscaling), so a deployment feeds RGB and gets
RGB whatever the model. The exported network is the fused one (models.fuse_for_inference: BatchNorm folded, the
last conv before the last pixel shuffle; --no-fuse keeps the plain one). Before anything is written, onnxruntime
runs the graph on two input sizes (1 x 17 x 23 and 2 x 24 x 32) and its output is compared with PyTorch's
(inference.Upscaler on the plain model, fp32): a difference above 1e-4 on the [0, 1] output is an error. Networks
that need their input padded (spandrel's SwinIR, HAT...) are not exported to ONNX. Upscaling an image with it:

    import numpy as np, onnxruntime as ort
    from PIL import Image
    session = ort.InferenceSession('checkpoint_srresnet.onnx', providers=['CPUExecutionProvider'])
    lr = np.asarray(Image.open('photo.png').convert('RGB'), dtype=np.float32) / 255.  # (H, W, 3) in [0, 1]
    sr = session.run(['sr'], {'lr': lr.transpose(2, 0, 1)[None]})[0][0]              # (3, s*H, s*W) in [0, 1]
    Image.fromarray(np.floor(sr.transpose(1, 2, 0) * 255. + 0.5).astype(np.uint8)).save('photo_sr.png')

(the whole image at once: cut big photos into tiles yourself, or use test.py, which does).

--format safetensors: the network's weights (in this suite's key names, converted from the publishing project's)
and, as metadata strings, the suite's configuration: format 'sr-suite', format_version, arch, weights ('model', or
'generator' for an SRGAN generator), config (JSON), scaling_factor, source, notes (JSON), label (a model named
otherwise than its architecture in output file names, as srresnet_real), input and output (in words). eval.py,
test.py, export.py and train_srresnet.py --init-from read it back. safetensors holds tensors and strings only, so
loading one can run no code (a pickled .pth can): the format to share weights in. A spandrel
network is written with its own key names and arch 'spandrel': reading it back needs spandrel again.

--format pth: this suite's checkpoint format (format_version, arch, model_config, model, source, notes), e.g. to
turn published weights into a file of the suite once; read with torch.load(weights_only=True).

An existing output file is never replaced unless --overwrite is given; files are written atomically (a crash leaves
the old file or the new one), and nothing is written when a check fails. Errors are one line, exit code 2.
"""
import argparse
import io
import os
import warnings

import numpy as np
import onnx
import onnxruntime
import torch

import checkpoints
import inference
import models
from checkpoints import save_checkpoint, save_safetensors_checkpoint
from utils import UserError, atomic_write, make_parser, run_cli

FORMATS = {'onnx': '.onnx', 'safetensors': '.safetensors', 'pth': '.pth'}
ONNX_CHECK_SIZES = ((1, 17, 23), (2, 24, 32))  # (N, H, W): odd and even sides, and a batch, both unlike the trace
ONNX_TRACE_SIZE = (1, 3, 20, 28)
ONNX_TOLERANCE = 1e-4  # max abs difference on the [0, 1] output


def build_parser():
    parser = make_parser(__doc__, data=False, device=False)
    parser.add_argument('--checkpoint', required=True, metavar='PATH', help='the weights to export (see above)')
    parser.add_argument('--format', required=True, choices=tuple(FORMATS), help='what to write')
    parser.add_argument('--output', metavar='PATH',
                        help='the file to write (default: the checkpoint path with the extension of the format)')
    parser.add_argument('--overwrite', action='store_true', help='replace the output file if it exists')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset version')
    parser.add_argument('--fuse', action=argparse.BooleanOptionalAction, default=True,
                        help='ONNX: export the fused network (BatchNorm folded, last conv before the last shuffle)')
    checkpoints.add_assumption_args(parser)
    checkpoints.add_weights_arg(parser)
    return parser


def output_path(checkpoint, fmt, output):
    """--output, or the checkpoint path with the format's extension; never the checkpoint itself."""
    out = output or os.path.splitext(checkpoint)[0] + FORMATS[fmt]
    if os.path.abspath(out) == os.path.abspath(checkpoint):
        raise UserError(f"the output {out} is the checkpoint itself: give another --output")
    return out


def check_writable(path, overwrite):
    if os.path.isdir(path):
        raise UserError(f"--output {path} is a directory: give a file name")
    if os.path.exists(path) and not overwrite:
        raise UserError(f"{path} exists: pass --overwrite to replace it, or give another --output")


def describe_io(spec, scale):
    """What the network itself takes and gives, in words (safetensors metadata)."""
    if spec.color == 'y':
        size = f"(N, 1, {scale}H, {scale}W), bicubic-upscaled" if spec.pre_upsample else "(N, 1, H, W)"
        return f"BT.601 luma Y in [0, 1] {size}", f"Y in [0, 1] (N, 1, {scale}H, {scale}W)"
    return f"RGB {spec.in_type} (N, 3, H, W)", f"RGB {spec.out_type} (N, 3, {scale}H, {scale}W)"


# ----------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------


def onnx_bytes(graph, opset):
    """The serialised ONNX model of ``graph`` (inference.RGBNetwork) with dynamic N, H and W."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(graph, (torch.rand(*ONNX_TRACE_SIZE),), buffer, dynamo=False, opset_version=opset,
                          input_names=['lr'], output_names=['sr'],
                          dynamic_axes={'lr': {0: 'batch', 2: 'height', 3: 'width'},
                                        'sr': {0: 'batch', 2: 'sr_height', 3: 'sr_width'}})
    return buffer.getvalue()


def with_metadata(data, props):
    """The ONNX model ``data`` (bytes), checked by onnx.checker, with ``props`` as its metadata_props."""
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    onnx.helper.set_model_props(model, props)
    return model.SerializeToString()


def check_onnx(data, model, spec, scale, sizes=ONNX_CHECK_SIZES, seed=0):
    """Max abs difference between onnxruntime on ``data`` and inference.Upscaler (fp32, unfused ``model``) on
    random RGB inputs of each (N, H, W) in ``sizes``: [(size, difference)]."""
    session = onnxruntime.InferenceSession(data, providers=['CPUExecutionProvider'])
    upscaler = inference.Upscaler(model, spec, scale, 'cpu')
    generator = torch.Generator().manual_seed(seed)
    results = []
    for n, h, w in sizes:
        lr = torch.rand(n, 3, h, w, generator=generator)  # (N, 3, h, w), RGB in [0, 1]
        expected = upscaler.upscale(lr)[0].clamp(0, 1).numpy()  # (N, 3, s*h, s*w)
        got = session.run(['sr'], {'lr': lr.numpy()})[0]
        if got.shape != expected.shape:
            raise UserError(f"the ONNX graph gives {got.shape} for a {n}x3x{h}x{w} input, not {expected.shape}")
        results.append(((n, h, w), float(np.abs(got - expected).max())))
    return results


def export_onnx(model, out, opset, fuse):
    """Write the network of ``model`` (a checkpoints.ModelDescription) to ``out`` as ONNX (see the module docstring),
    after the onnxruntime check; returns the checks [(size, difference)]."""
    scale = model.scale
    network = models.fuse_for_inference(model.network) if fuse else model.network
    try:
        graph = inference.RGBNetwork(network, model.spec, scale).eval()
    except ValueError as e:
        raise UserError(f"cannot export {model.label} to ONNX: {e}") from None
    try:
        data = onnx_bytes(graph, opset)
        data = with_metadata(data, {'arch': model.label, 'scaling_factor': str(scale), 'source': model.source,
                                    'input': "lr: RGB in [0, 1], float32 (N, 3, H, W)",
                                    'output': f"sr: RGB in [0, 1], float32 (N, 3, {scale}H, {scale}W), clamped",
                                    'notes': '; '.join(model.notes)})
    except Exception as e:  # the exporter's own errors: unsupported operators, tracing failures
        raise UserError(f"cannot export {model.label} to ONNX ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else 'no message'})") from None
    checks = check_onnx(data, model.network, model.spec, scale)
    worst = max(checks, key=lambda c: c[1])
    if not worst[1] <= ONNX_TOLERANCE:
        (n, h, w), diff = worst
        raise UserError(f"onnxruntime differs from PyTorch by {diff:.2e} (more than {ONNX_TOLERANCE:g}) on a "
                        f"{n}x3x{h}x{w} input: nothing written (try --no-fuse or another --opset)")
    atomic_write(out, lambda f: f.write(data))
    return checks


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = output_path(args.checkpoint, args.format, args.output)
    check_writable(out, args.overwrite)
    model = checkpoints.load_sr_model(args.checkpoint, 'cpu', res_scale=args.res_scale, rgb_range=args.rgb_range,
                                      weights=args.weights)
    for note in model.notes:
        print(f"note: {note}")
    scale = model.scale
    what = f"{model.label} x{scale} ({model.source})"
    check_writable(out, args.overwrite)  # again: the loading may have taken a while
    if args.format == 'onnx':
        checks = export_onnx(model, out, args.opset, args.fuse)
        print(f"wrote {out}: {what}, {'fused, ' if args.fuse else ''}opset {args.opset}; input 'lr' (N, 3, H, W) RGB "
              f"in [0, 1] -> output 'sr' (N, 3, {scale}H, {scale}W) RGB in [0, 1]; onnxruntime vs PyTorch: "
              + ', '.join(f"{diff:.1e} at {n}x3x{h}x{w}" for (n, h, w), diff in checks))
        return 0
    ckpt = checkpoints.suite_checkpoint(model)
    if args.format == 'safetensors':
        network_in, network_out = describe_io(model.spec, scale)
        save_safetensors_checkpoint(ckpt, out, {'input': network_in, 'output': network_out})
    else:
        save_checkpoint(ckpt, out)
    print(f"wrote {out}: {what}, {len(ckpt.get('model') or ckpt['generator'])} tensors, {args.format}")
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
