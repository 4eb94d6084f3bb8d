"""Videos: test.py --image clip.mp4 and video.upscale_video, on short videos made here with PyAV (a moving
pattern in H.264, a 440 Hz sine in AAC, PCM, Opus), upscaled by a tiny random-weight ESPCN (a Y-channel model, so
the chroma goes through bicubic as for images).

Checked against independent computations: the frames against inference.Upscaler run here on the decoded input
frames (a random model is far from bicubic, so a frame that skipped the model fails), the timestamps and the audio
packets against the input's, read back with PyAV. Damaged inputs (cut, scrambled, not a video) must end with one
line, exit code 2 and no output file, also with FFmpeg's own error lines ignored (the backstops).
"""
import math
import os
import random
import signal
import subprocess
import sys
import time
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_here, run_script

import checkpoints  # noqa: E402
import inference  # noqa: E402
import models  # noqa: E402
import utils  # noqa: E402
import video  # noqa: E402
from utils import UserError  # noqa: E402

SCALE = 3


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A random-weight ESPCN x3 (8, 8 channels) checkpoint, and an Upscaler of it. Its output layer is damped and
    centred (luma 0.55 +- about 0.1 of texture) so that its frames stay inside the RGB cube: clipped colours would
    not survive yuv420p's half-resolution chroma, whatever the video path does."""
    torch.manual_seed(0)
    config = models.model_config('espcn', SCALE, channels=(8, 8))
    model = models.build_model('espcn', config).eval()
    with torch.no_grad():
        model.body[-1].weight.mul_(0.3)
        model.body[-1].bias.fill_(0.55)
    path = tmp_path_factory.mktemp('video_model') / 'espcn_tiny.pth'
    checkpoints.save_checkpoint({'format_version': 1, 'arch': 'espcn', 'model_config': config, 'epoch': 1,
                                 'model': model.state_dict()}, str(path))
    return {'checkpoint': path, 'upscaler': inference.Upscaler(model, models.ARCHS['espcn'], SCALE, 'cpu')}


def make_video(path, size=(64, 48), frames=10, fps=25, audio='aac', sample_rate=44100, pts_ms=None,
               options=None, colorspace=None, vcodec='libx264', pix_fmt='yuv420p', colour=(170, 110, 80)):
    """Write a test video: a muted orange field with a light bar moving 3 px per frame (libx264 with B-frames, so
    packets come out of order), and ``audio`` (None: no audio track) a 440 Hz sine as long as the video.
    pts_ms: explicit frame times in ms (a variable frame rate), else frame i at i / fps."""
    w, h = size
    with av.open(str(path), 'w', options=options or {}) as out:
        stream = out.add_stream(vcodec, rate=fps, options={'preset': 'veryfast'} if vcodec == 'libx264' else {})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        time_base = Fraction(1, 1000) if pts_ms else Fraction(1, fps)
        stream.codec_context.time_base = time_base
        if colorspace is not None:
            stream.codec_context.colorspace = colorspace
        if audio:
            sound = out.add_stream(audio, rate=sample_rate)
            sound.layout = 'mono'
        for i in range(frames):
            img = np.empty((h, w, 3), np.uint8)
            img[...] = colour
            img[h // 4:h // 2, (3 * i) % w:(3 * i) % w + 6] = (200, 190, 140)
            frame = av.VideoFrame.from_ndarray(img, format='rgb24')
            if colorspace is not None:
                frame = frame.reformat(format=pix_fmt, dst_colorspace=colorspace)
            frame.pts, frame.time_base = (pts_ms[i] if pts_ms else i), time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if audio:
            formats = [f.name for f in sound.codec_context.codec.audio_formats]
            fmt = next(f for f in ('fltp', 'flt', 's16', 's16p') if f in formats)
            total = int(((pts_ms[-1] / 1000 + 0.04) if pts_ms else frames / fps) * sample_rate)
            for start in range(0, total, 1000):
                t = np.arange(start, min(total, start + 1000)) / sample_rate
                x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
                if fmt.startswith('s16'):
                    x = (x * 32767).astype(np.int16)
                chunk = av.AudioFrame.from_ndarray(x[None], format=fmt, layout='mono')
                chunk.sample_rate, chunk.pts, chunk.time_base = sample_rate, start, Fraction(1, sample_rate)
                out.mux(sound.encode(chunk))
            out.mux(sound.encode())
    return str(path)


def decoded(path):
    """[(time in s, (h, w, 3) uint8 RGB)] of every frame of the first video stream."""
    with av.open(str(path)) as c:
        return [(round(float(f.time), 4), f.to_ndarray(format='rgb24')) for f in c.decode(video=0)]


def audio_packets(path):
    """[(time in s, payload bytes)] of the first audio stream's packets."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        return [(round(float(p.pts * p.time_base), 4), bytes(p)) for p in c.demux(stream) if p.dts is not None]


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255. ** 2 / mse)


def expected_frames(upscaler, path):
    """The model on every decoded input frame, computed here: [(3H, 3W, 3) uint8]."""
    out = []
    for _, rgb in decoded(path):
        lr = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255.
        out.append(upscaler.upscale_uint8(lr)[0].permute(1, 2, 0).numpy())
    return out


def bicubic(rgb):
    return utils.imresize(torch.from_numpy(rgb.copy()).permute(2, 0, 1), SCALE).permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------------------------
# Through test.py
# ----------------------------------------------------------------------------------------------


def test_cli_upscales_every_frame_keeps_timing_and_copies_the_audio(tiny, tmp_path):
    src = make_video(tmp_path / 'clip.mp4', frames=8)
    out = tmp_path / 'out'
    result = run_script('test.py', '--image', src, '--checkpoint', tiny['checkpoint'], '--output-dir', out,
                        '--device', 'cpu', '--tile', 24, '--tile-overlap', 4, '--video-crf', 0, '--precision', 'fp32')
    assert result.returncode == 0, result.stderr
    assert os.listdir(out) == ['clip_x3_espcn.mp4']
    dst = out / 'clip_x3_espcn.mp4'
    with av.open(str(dst)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (192, 144)
        assert v.average_rate == 25 and v.codec_context.name == 'h264' and v.codec_context.pix_fmt == 'yuv420p'
        assert [a.codec_context.name for a in c.streams.audio] == ['aac']
    frames_in, frames_out = decoded(src), decoded(dst)
    assert len(frames_out) == 8 and [t for t, _ in frames_out] == [t for t, _ in frames_in]
    for (_, lr), (_, sr), want in zip(frames_in, frames_out, expected_frames(tiny['upscaler'], src)):
        assert sr.shape == (144, 192, 3)
        assert psnr(sr, want) > 35  # the model's frame, through lossless H.264 in yuv420p
        assert psnr(sr, bicubic(lr)) < psnr(sr, want) - 10, (psnr(sr, bicubic(lr)), psnr(sr, want))  # not bicubic's
    audio = audio_packets(src)
    assert len(audio) > 10 and audio_packets(dst) == audio  # the same bytes at the same times: copied
    assert 'clip.mp4: 64x48 at 25.000 fps, 8 frames, audio: aac' in result.stdout
    assert f"{dst}: 8 frames 64x48 -> 192x144 (espcn x3), {len(audio)} audio packets copied" in result.stdout
    assert 'frame/s' in result.stderr and '8/8' in result.stderr  # tqdm: frames per second, count, time left


def run_main(*args):
    """(exit code, stdout, stderr) of test.py's command line in this process (conftest.run_here); fp32: pixels are
    compared."""
    result = run_here('test.py', *args, '--precision', 'fp32')
    return result.returncode, result.stdout, result.stderr


def test_an_existing_output_is_replaced_only_when_test_py_wrote_it_and_overwrite_is_given(tiny, tmp_path):
    src = make_video(tmp_path / 'clip.mp4', frames=3)
    out = tmp_path / 'out'
    args = ['--image', src, '--checkpoint', tiny['checkpoint'], '--output-dir', out, '--device', 'cpu']
    assert run_main(*args)[0] == 0
    first = (out / 'clip_x3_espcn.mp4').read_bytes()
    code, _, err = run_main(*args)
    assert code == 2 and '--overwrite' in err and err.count('\n') == 1
    assert run_main(*args, '--overwrite')[0] == 0
    (out / 'clip_x3_espcn.mp4').write_bytes(first[:1000])  # now someone else's file (no marker readable)
    code, _, err = run_main(*args, '--overwrite')
    assert code == 2 and 'did not write it' in err
    assert (out / 'clip_x3_espcn.mp4').read_bytes() == first[:1000]


def test_video_outputs_of_different_models_or_scales_never_share_a_name(tiny, tmp_path):
    """<stem>_x<scale>_<label><ext>: the tiny ESPCN x3, then an SRCNN x2 and an SRCNN x3 on one clip into one folder,
    none with --overwrite: three videos of their own sizes, the earlier ones byte for byte as they were."""
    src = make_video(tmp_path / 'clip.mp4', frames=2, audio=None)
    out = tmp_path / 'out'
    made = {}
    for arch, scale in (('espcn', 3), ('srcnn', 2), ('srcnn', 3)):
        ckpt = tiny['checkpoint']
        if arch == 'srcnn':
            torch.manual_seed(scale)
            config = models.model_config('srcnn', scale, channels=[8, 4])
            ckpt = tmp_path / f"srcnn_x{scale}.pth"
            checkpoints.save_checkpoint({'format_version': 1, 'arch': 'srcnn', 'model_config': config, 'epoch': 1,
                                         'model': models.build_model('srcnn', config).state_dict()}, str(ckpt))
        code, _, err = run_main('--image', src, '--checkpoint', ckpt, '--output-dir', out,
                                '--device', 'cpu')
        assert code == 0, (arch, scale, err)
        name = f"clip_x{scale}_{arch}.mp4"
        assert sorted(os.listdir(out)) == sorted([*made, name]), (arch, scale)
        assert {n: (out / n).read_bytes() for n in made} == made  # the earlier runs' videos untouched
        made[name] = (out / name).read_bytes()
        with av.open(str(out / name)) as c:
            v = c.streams.video[0].codec_context
            assert (v.width, v.height) == (64 * scale, 48 * scale)
    assert sorted(made) == ['clip_x2_srcnn.mp4', 'clip_x3_espcn.mp4', 'clip_x3_srcnn.mp4']


def cut_in_half(path):
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])


def scramble_middle(path):
    data = bytearray(open(path, 'rb').read())
    rng = random.Random(0)
    for i in range(len(data) // 3, len(data) // 3 + len(data) // 5):
        data[i] = rng.randrange(256)
    open(path, 'wb').write(bytes(data))


DAMAGE = [  # (container, muxer options, audio, damage, what the one line says)
    ('.mp4', None, 'aac', cut_in_half, 'not a readable video'),  # the index (moov, at the end) is gone
    ('.mp4', {'movflags': 'faststart'}, 'aac', cut_in_half, 'corrupt or truncated video'),  # 'partial file'
    ('.mkv', None, 'pcm_s16le', cut_in_half, 'corrupt or truncated video'),  # 'File ended prematurely'
    ('.mp4', {'movflags': 'faststart'}, 'aac', scramble_middle, 'corrupt or truncated video'),
    ('.mkv', None, 'pcm_s16le', scramble_middle, 'corrupt or truncated video'),
    ('.mp4', None, 'aac', lambda p: open(p, 'wb').write(os.urandom(20000)), 'not a readable video'),
    ('.mp4', None, 'aac', lambda p: open(p, 'wb').close(), 'not a readable video'),
]


@pytest.mark.parametrize('ext,options,audio,damage,message', DAMAGE)
def test_damaged_video_is_one_line_exit_2_and_no_output(tiny, tmp_path, ext, options, audio, damage, message):
    src = make_video(tmp_path / f"in{ext}", frames=50, audio=audio, options=options)
    damage(src)
    out = tmp_path / 'out'
    out.mkdir()
    code, stdout, stderr = run_main('--image', src, '--checkpoint', tiny['checkpoint'],
                                    '--output-dir', out, '--device', 'cpu')
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith(f"error: {src}: ") and message in lines[-1], stderr
    assert sum('error' in line for line in lines) == 1 and 'Traceback' not in stderr
    assert os.listdir(out) == [] and sorted(os.listdir(tmp_path)) == ['in' + ext, 'out']


def test_damaged_video_through_the_command_line(tiny, tmp_path):
    src = make_video(tmp_path / 'cut.mp4', frames=50, options={'movflags': 'faststart'})
    cut_in_half(src)
    result = run_script('test.py', '--image', src, '--checkpoint', tiny['checkpoint'], '--output-dir',
                        tmp_path / 'out', '--device', 'cpu')
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {src}: corrupt or truncated video")
    assert not (tmp_path / 'out').exists() or os.listdir(tmp_path / 'out') == []


@pytest.mark.parametrize('ext,options,audio,damage,message', [
    ('.mp4', {'movflags': 'faststart'}, 'aac', cut_in_half, r'truncated: \d+ of 50 frames decoded'),
    ('.mkv', None, 'pcm_s16le', cut_in_half, r'truncated: [\d.]+ s of 2.00 s decoded'),
    ('.mp4', {'movflags': 'faststart'}, 'aac', scramble_middle, 'corrupt video data near frame'),
])
def test_backstops_catch_damage_without_ffmpegs_error_lines(tiny, tmp_path, monkeypatch, ext, options, audio, damage,
                                                            message):
    """Were FFmpeg's error lines missed (another FFmpeg, other wording), the header's frame count, the stream's
    duration and the decoder's errors still stop it."""
    monkeypatch.setattr(video, '_check_ffmpeg_log', lambda *args: None)
    src = make_video(tmp_path / f"in{ext}", frames=50, audio=audio, options=options)
    damage(src)
    with pytest.raises(UserError, match=message):
        video.upscale_video(tiny['upscaler'], src, str(tmp_path / f"out{ext}"))
    assert os.listdir(tmp_path) == [f"in{ext}"]


# ----------------------------------------------------------------------------------------------
# video.upscale_video
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('ext,audio,options', [
    ('.mkv', 'pcm_s16le', None),
    ('.mkv', 'libopus', None),
    ('.mp4', 'aac', {'movflags': 'faststart'}),
])
def test_containers_and_audio_codecs(tiny, tmp_path, ext, audio, options):
    src = make_video(tmp_path / f"in{ext}", frames=6, audio=audio, options=options,
                     sample_rate=48000 if audio == 'libopus' else 44100)
    dst = tmp_path / f"out{ext}"
    seen = []
    result = video.upscale_video(tiny['upscaler'], src, str(dst), progress=lambda d, t: seen.append(d))
    assert result.frames == 6 and result.out_size == (192, 144) and seen == [1, 2, 3, 4, 5, 6]
    assert [t for t, _ in decoded(dst)] == [t for t, _ in decoded(src)]
    assert audio_packets(dst) == audio_packets(src) and result.audio_packets == len(audio_packets(src))
    assert sorted(os.listdir(tmp_path)) == sorted([f"in{ext}", f"out{ext}"])
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(dst).st_mode & 0o777 == 0o666 & ~umask


def test_variable_frame_rate_and_start_offset_are_kept(tiny, tmp_path):
    pts = [500, 540, 580, 700, 740, 1000, 1033, 1066, 1500, 1540]  # ms: gaps, and the first frame at 0.5 s
    src = make_video(tmp_path / 'vfr.mkv', frames=len(pts), pts_ms=pts, audio='pcm_s16le')
    video.upscale_video(tiny['upscaler'], src, str(tmp_path / 'out.mkv'))
    assert [t for t, _ in decoded(tmp_path / 'out.mkv')] == [p / 1000 for p in pts]


def test_odd_output_size_loses_its_last_row_and_column(tiny, tmp_path):
    src = make_video(tmp_path / 'odd.mkv', size=(33, 25), frames=3, vcodec='ffv1', pix_fmt='yuv444p', audio=None)
    result = video.upscale_video(tiny['upscaler'], src, str(tmp_path / 'odd.mp4'), crf=0)
    assert result.out_size == (98, 74) and 'cropped to 98x74 px' in result.warnings[0]
    frames = decoded(tmp_path / 'odd.mp4')
    assert frames[0][1].shape == (74, 98, 3) and len(frames) == 3
    want = expected_frames(tiny['upscaler'], src)[0][:74, :98]
    assert psnr(frames[0][1], want) > 35


class Nearest:
    """An upscaler that repeats pixels: the video path's colour handling alone, without a model in the way."""
    scale = SCALE

    def upscale_uint8(self, lr):
        return torch.floor(lr * 255 + 0.5).to(torch.uint8).repeat_interleave(SCALE, -1).repeat_interleave(SCALE, -2)


@pytest.mark.parametrize('colorspace', [None, 1])  # untagged (read as BT.601), BT.709
def test_colour_matrix_is_used_and_kept(tmp_path, colorspace):
    """A saturated red: decoded with the input's matrix, encoded with it and tagged so, it comes back as it went
    in (read with the other matrix, it is 15 levels off)."""
    src = make_video(tmp_path / 'in.mp4', frames=2, audio=None, colorspace=colorspace, colour=(200, 30, 30))
    video.upscale_video(Nearest(), src, str(tmp_path / 'out.mp4'), crf=0)
    with av.open(src) as a, av.open(str(tmp_path / 'out.mp4')) as b:
        assert b.streams.video[0].codec_context.colorspace == a.streams.video[0].codec_context.colorspace
        before, after = next(a.decode(video=0)), next(b.decode(video=0))
        assert after.colorspace == before.colorspace
        want = before.to_ndarray(format='rgb24')[:8, :8].reshape(-1, 3).mean(0)  # the flat field, top left
        got = after.to_ndarray(format='rgb24')[:24, :24].reshape(-1, 3).mean(0)
    assert np.abs(got - want).max() < 3, (got, want)


def test_failures_leave_no_file_and_keep_an_existing_one(tiny, tmp_path):
    src = make_video(tmp_path / 'in.mp4', frames=12)
    dst = tmp_path / 'out.mp4'
    dst.write_bytes(b'an earlier result')
    calls = []

    class Failing:
        scale = SCALE

        def upscale_uint8(self, lr):
            calls.append(1)
            if len(calls) == 5:
                raise KeyboardInterrupt  # Ctrl-C in the middle
            return tiny['upscaler'].upscale_uint8(lr)

    with pytest.raises(KeyboardInterrupt):
        video.upscale_video(Failing(), src, str(dst))
    assert dst.read_bytes() == b'an earlier result' and sorted(os.listdir(tmp_path)) == ['in.mp4', 'out.mp4']
    with pytest.raises(UserError, match='would overwrite the input'):
        video.upscale_video(tiny['upscaler'], src, src)
    with pytest.raises(UserError, match='write videos as'):
        video.upscale_video(tiny['upscaler'], src, str(tmp_path / 'out.webm'))


def test_which_files_are_videos_and_where_outputs_go(tmp_path):
    clip = make_video(tmp_path / 'clip.mkv', frames=2, audio=None)
    os.rename(clip, tmp_path / 'clip.bin')
    Image.new('RGB', (8, 8)).save(tmp_path / 'still.bin', format='PNG')
    (tmp_path / 'notes.bin').write_text('neither')
    Image.new('RGB', (8, 8)).save(tmp_path / 'photo.png')
    assert video.is_video_file(str(tmp_path / 'clip.bin'))  # probed: PyAV reads it as a video
    assert video.is_video_file(str(tmp_path / 'missing.MP4'))  # by extension, any case
    for name in ('still.bin', 'notes.bin', 'photo.png', 'missing.png'):
        assert not video.is_video_file(str(tmp_path / name)), name
    assert video.video_output_path('a/b/clip.MOV', 'out', 'espcn', 3) == os.path.join('out', 'clip_x3_espcn.mov')
    assert video.video_output_path('clip.webm', 'out', 'srgan', 4) == os.path.join('out', 'clip_x4_srgan.mkv')
    assert video.video_output_path('clip.avi', 'out', 'edsr', 2) == os.path.join('out', 'clip_x2_edsr.mkv')
    info = video.probe_video(make_video(tmp_path / 'p.mp4', frames=5))
    assert (info.width, info.height, info.fps, info.frames, info.audio) == (64, 48, 25, 5, ('aac',))
    with pytest.raises(UserError, match='not a readable video'):
        video.probe_video(str(tmp_path / 'notes.bin'))


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stop_signal_during_a_video_leaves_no_file_behind(tiny, tmp_path, sig):
    """SIGTERM (a scheduler, kill) and SIGHUP (the terminal closed) end test.py as Ctrl-C does: one line, exit code
    128 + the signal, and the half-written video's hidden temp file removed."""
    src = make_video(tmp_path / 'long.mp4', frames=400)
    out = tmp_path / 'out'
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'test.py'), '--image', str(src), '--checkpoint',
                             str(tiny['checkpoint']), '--output-dir', str(out), '--device', 'cpu'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(p.name.endswith('.tmp') for p in out.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    name = 'Ctrl-C' if sig == signal.SIGINT else signal.Signals(sig).name
    assert proc.returncode == 128 + sig and err.strip().splitlines()[-1] == (
        f"error: interrupted ({name}); files being written were discarded"), err
    assert list(out.iterdir()) == []
