"""Frames per second of video super-resolution: the shipped ESPCN x3 from 640x360 to 1920x1080, next to the ESPCN
paper's claim (Shi et al., CVPR 2016: "real-time SR of 1080p videos on a single K2 GPU"; real time taken here as
25 frames/s).

    python benchmarks/bench_video.py                        # CPU: fp32, and bf16 where the CPU runs it natively
    python benchmarks/bench_video.py --device cuda --precisions fp32 fp16 bf16
    python benchmarks/bench_video.py --frames 120 --preset veryfast --threads 2
    python benchmarks/bench_video.py --size 64x36 --frames 3 --precisions fp32   # a smoke run

The clip is made first: --frames frames of a real photo (scikit-image's astronaut, scaled up) panned by a 640x360
window, encoded with libx264 (crf 18) into a temporary folder. Then, per precision:
  model     inference.Upscaler.upscale_uint8 on the decoded frames, one frame at a time (RGB in, RGB out:
            the Y-channel conversions and MATLAB bicubic for Cb/Cr included), after --warmup frames
  pipeline  video.upscale_video end to end, as test.py --image clip.mp4 runs it: decode, upscale, encode
            1920x1080 H.264 (--preset, crf 18), mux (fp32 only unless --pipeline-all)
and once the same pipeline with a pixel-repeating 'upscaler' (codec only: decode, convert, encode), which bounds the
pipeline's speed whatever the model. Prints one JSON object and one readable line per measurement; each JSON
object also has the process's CPU seconds and the 1-minute load average, which show how much of a shared
machine's cores the run had.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from fractions import Fraction

import av
import numpy as np
import torch
from PIL import Image
from skimage import data

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import checkpoints  # noqa: E402
import inference  # noqa: E402
import utils  # noqa: E402
import video  # noqa: E402

REAL_TIME_FPS = 25
PAPER = "ESPCN paper: real-time 1080p (>= 25 frames/s) on one K2 GPU"


def parse_size(text):
    w, h = (int(v) for v in text.lower().split('x'))
    return w, h


def make_clip(path, size, frames, fps=25):
    """A --size window panning across a real photo, libx264 crf 18 medium, yuv420p: the benchmark's input."""
    w, h = size
    photo = Image.fromarray(data.astronaut()).resize((2 * w, 2 * w), Image.Resampling.LANCZOS)
    arr = np.asarray(photo)
    with av.open(path, 'w') as out:
        stream = out.add_stream('libx264', rate=fps, options={'crf': '18', 'preset': 'medium'})
        stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
        stream.codec_context.time_base = Fraction(1, fps)
        for i in range(frames):
            x, y = (i * 7) % w, (i * 3) % (2 * w - h)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr[y:y + h, x:x + w]), format='rgb24')
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def decoded_frames(path):
    """(1, 3, h, w) float RGB in [0, 1] per frame, as upscale_video feeds them."""
    with av.open(path) as c:
        return [torch.from_numpy(f.to_ndarray(format='rgb24')).permute(2, 0, 1)[None].float().div_(255.)
                for f in c.decode(video=0)]


class Repeat:
    """Pixel repetition in place of a model: what decoding, colour conversion and encoding cost alone."""

    def __init__(self, scale):
        self.scale = scale

    def upscale_uint8(self, lr):
        u8 = torch.floor(lr * 255 + 0.5).to(torch.uint8)
        return u8.repeat_interleave(self.scale, -1).repeat_interleave(self.scale, -2)


def measure_model(upscaler, frames, warmup, device):
    """(frames/s, process CPU seconds) of upscale_uint8 over frames[warmup:]."""
    for lr in frames[:warmup]:
        upscaler.upscale_uint8(lr)
    start, cpu = utils.timer(), time.process_time()
    for lr in frames[warmup:]:
        upscaler.upscale_uint8(lr.to(device))
    return (len(frames) - warmup) / (utils.timer() - start), time.process_time() - cpu


def report(row, cpu_seconds):
    """Print a measurement; with the process's CPU seconds and the machine's load, which say how much of the
    cores the run had on a shared machine."""
    row = dict(row, cpu_seconds=round(cpu_seconds, 2), load_average_1min=round(os.getloadavg()[0], 2))
    print(json.dumps(row), flush=True)
    verdict = 'real time' if row['fps'] >= REAL_TIME_FPS else f"{row['fps'] / REAL_TIME_FPS:.2f}x real time"
    print(f"# {row['what']:9s} {row['precision']:5s} {row['device']}: {row['fps']:.2f} frames/s "
          f"({row['in']} -> {row['out']}, {row['frames']} frames; {verdict}; {PAPER})", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument('--checkpoint', default=os.path.join('results', 'espcn_x3_t91.pth'))
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--size', type=parse_size, default=(640, 360), help='input frame size, WxH')
    parser.add_argument('--frames', type=int, default=60)
    parser.add_argument('--warmup', type=int, default=3, help='frames run before the model timing starts')
    parser.add_argument('--precisions', nargs='+', default=None,
                        help='default: fp32, plus bf16 where the device runs it natively')
    parser.add_argument('--preset', default='medium', help='libx264 preset of the pipeline')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s own)')
    parser.add_argument('--pipeline-all', action='store_true', help='run the pipeline for every precision')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = utils.pick_device(args.device)
    precisions = args.precisions or (['fp32', 'bf16'] if utils.native_bf16(device) else ['fp32'])
    path = args.checkpoint if os.path.isabs(args.checkpoint) else os.path.join(os.getcwd(), args.checkpoint)
    loaded = checkpoints.load_sr_model(path, device)
    scale = int(loaded.config['scaling_factor'])
    w, h = args.size
    common = {'device': str(device), 'in': f"{w}x{h}", 'out': f"{w * scale}x{h * scale}",
              'torch_threads': torch.get_num_threads(), 'checkpoint': args.checkpoint}
    with tempfile.TemporaryDirectory() as tmp:
        clip = os.path.join(tmp, 'clip.mp4')
        make_clip(clip, args.size, args.frames)
        frames = decoded_frames(clip)
        warmup = min(args.warmup, len(frames) - 1)
        for precision in precisions:
            upscaler = inference.Upscaler(loaded.network, loaded.spec, scale, device, precision=precision,
                                          max_memory=inference.auto_memory_budget(device), fuse=True,
                                          channels_last=True)
            fps, cpu = measure_model(upscaler, frames, warmup, device)
            report(dict(common, what='model', precision=precision, fps=fps, frames=len(frames) - warmup), cpu)
            if precision == precisions[0] or args.pipeline_all:
                cpu = time.process_time()
                result = video.upscale_video(upscaler, clip, os.path.join(tmp, f"out_{precision}.mp4"),
                                             preset=args.preset)
                report(dict(common, what='pipeline', precision=precision, fps=result.frames / result.seconds,
                            frames=result.frames, model_fps=result.frames / result.model_seconds,
                            preset=args.preset), time.process_time() - cpu)
        start, cpu = time.perf_counter(), time.process_time()
        result = video.upscale_video(Repeat(scale), clip, os.path.join(tmp, 'out_repeat.mp4'), preset=args.preset)
        report(dict(common, what='codec', precision='-', fps=result.frames / (time.perf_counter() - start),
                    frames=result.frames, preset=args.preset), time.process_time() - cpu)


if __name__ == '__main__':
    main()
