"""Videos: every frame of a video through an upscaler (tiling and the memory budget apply per frame), each frame at its
own timestamp, the audio copied packet for packet; with PyAV (FFmpeg). test.py upscales videos with it.

    import checkpoints, inference, video
    model = checkpoints.load_sr_model('results/espcn_x3_t91.pth', 'cpu')
    upscaler = inference.ImageUpscaler(model, 'cpu')
    result = video.upscale_video(upscaler, 'clip.mp4', 'clip_x3_espcn.mp4')   # a VideoResult

The only module of the suite that imports PyAV; only test.py and app.py import it. Imports utils only.
"""
import os
from typing import NamedTuple

import av
import av.logging
import numpy as np
import torch
from PIL import Image

from utils import IMAGE_EXTENSIONS, UserError, atomic_path, timer

VIDEO_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.mkv', '.webm', '.avi', '.mpg', '.mpeg', '.ts', '.mts', '.m2ts',
                    '.flv', '.wmv', '.ogv', '.3gp')
# Output containers: these keep the input's; any other input is written as Matroska, which holds H.264 and nearly
# every audio codec (WebM cannot hold H.264, AVI and MPEG-TS hold its timing badly).
VIDEO_MUXERS = {'.mp4': 'mp4', '.m4v': 'ipod', '.mov': 'mov', '.mkv': 'matroska'}
MUXER_OPTIONS = {'mp4': {'movflags': '+faststart'}, 'ipod': {'movflags': '+faststart'},
                 'mov': {'movflags': '+faststart'}}  # the index first: plays while it downloads
# FFmpeg's demuxers and decoders say 'partial file', 'File ended prematurely', 'Invalid NAL unit size' at this
# level and still hand out what they could read: logged errors count as damage (with frame-count and duration
# checks behind them).
_FFMPEG_ERROR = av.logging.ERROR


def is_video_file(path):
    """True for a file test.py treats as a video: a video extension (VIDEO_EXTENSIONS, any letter case), or an
    extension of neither kind on a file that Pillow cannot open and PyAV opens as a moving-picture container."""
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTENSIONS:
        return True
    if ext in IMAGE_EXTENSIONS or not os.path.isfile(path):
        return False
    try:
        with Image.open(path):
            return False  # any image Pillow reads stays an image (GIF, PPM, ...), as before
    except Exception:  # Pillow raises many types for what it cannot read
        pass
    try:
        with av.open(path, metadata_errors='ignore') as container:
            name = container.format.name  # FFmpeg also 'plays' stills and text files (image2, *_pipe, tty)
            still = name in ('image2', 'tty') or name.endswith('_pipe')
            return not still and _main_video_stream(container) is not None
    except (av.error.FFmpegError, OSError, ValueError):
        return False


def video_output_path(src, output_dir, label, scale):
    """Where test.py writes the upscaled video: <output_dir>/<stem>_x<scale>_<label><ext> (so the outputs of
    different models or scales never share a name), ext the input's when it is .mp4 .m4v .mov or .mkv, else .mkv
    (see VIDEO_MUXERS)."""
    stem, ext = os.path.splitext(os.path.basename(src))
    ext = ext.lower() if ext.lower() in VIDEO_MUXERS else '.mkv'
    return os.path.join(output_dir, f"{stem}_x{scale}_{label}{ext}")


class VideoInfo(NamedTuple):
    """What probe_video reads from a file's header: frame size, frame rate (a Fraction), the number of frames the
    header states (None when it states none), the video's duration in seconds (None when unknown), the
    container's name and the codecs of the video and of its audio streams."""
    width: int
    height: int
    fps: object
    frames: object
    duration: object
    container: str
    codec: str
    audio: tuple

    @property
    def expected_frames(self):
        """The header's frame count, else duration x frame rate (an estimate, for progress bars), else None."""
        return self.frames or (round(self.duration * self.fps) if self.duration else None)


def _main_video_stream(container):
    """The first video stream that is not an attached picture (cover art), or None."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _stream_duration(stream):
    """The video stream's duration in seconds from the header: stream.duration (mp4), else Matroska's DURATION
    tag (which is the stream's end time); None when neither is there."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get('DURATION')
    if tag:
        try:
            hours, minutes, seconds = tag.split(':')
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            pass
    return None


def _video_info(container, stream):
    cc = stream.codec_context
    fps = stream.average_rate or stream.guessed_rate or stream.base_rate
    audio = tuple(a.codec_context.name for a in container.streams.audio)
    return VideoInfo(cc.width, cc.height, fps, stream.frames or None, _stream_duration(stream),
                     container.format.name, cc.name, audio)


def _why(error):
    return getattr(error, 'strerror', None) or str(error).splitlines()[0][:120] or type(error).__name__


def probe_video(path):
    """VideoInfo of a video file; UserError (one line) when it is missing, not a video PyAV can read, or has no
    video stream. Reads the header only."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with av.open(path, metadata_errors='ignore') as container:
            stream = _main_video_stream(container)
            if stream is None:
                raise UserError(f"{path}: no video stream in this file")
            info = _video_info(container, stream)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable video ({_why(e)})") from None
    if not (info.width and info.height and info.fps):
        raise UserError(f"{path}: the video stream has no frame size or frame rate")
    return info


class VideoResult(NamedTuple):
    """What upscale_video did: frames written, input and output sizes, seconds in all and in the model, audio
    packets copied, and warnings (one line each)."""
    frames: int
    in_size: tuple
    out_size: tuple
    seconds: float
    model_seconds: float
    audio_packets: int
    warnings: tuple


def _encoder():
    """'libx264' where PyAV's FFmpeg has it (its wheels do), else 'mpeg4' (FFmpeg's own MPEG-4 Part 2)."""
    try:
        av.codec.Codec('libx264', 'w')
        return 'libx264'
    except (av.error.FFmpegError, ValueError):
        return 'mpeg4'


def _check_ffmpeg_log(log, names, src):
    """UserError for an error that FFmpeg logged from the input's demuxer or decoder (damage it read past)."""
    for entry in log:
        level, name, message = entry[0], entry[1], entry[2]
        if level <= _FFMPEG_ERROR and name in names:
            raise UserError(f"{src}: corrupt or truncated video ({name}: {message.strip()})")


def _frame_tensor(frame):
    """Decoded frame -> (1, 3, h, w) float32 RGB in [0, 1], converted with the frame's own matrix and range."""
    rgb = frame.to_ndarray(format='rgb24', src_color_range=frame.color_range)  # (h, w, 3) uint8
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.)


def video_tags(path):
    """The container-level metadata tags of a video file ({} when it has none or cannot be read)."""
    try:
        with av.open(path, metadata_errors='ignore') as container:
            return dict(container.metadata or {})
    except (av.error.FFmpegError, OSError, ValueError):
        return {}


def upscale_video(upscaler, src, dst, *, crf=18, preset='medium', progress=None, tags=None):
    """Upscale every frame of the video ``src`` with ``upscaler`` (anything with ``scale`` and ``upscale_uint8``:
    an inference.ImageUpscaler, as test.py passes, or an Upscaler; tiling and memory budget apply per frame) into
    ``dst``: H.264 (libx264, yuv420p, ``crf``, ``preset``; FFmpeg's mpeg4 where libx264 is missing), every frame at
    its own timestamp in the input's time base (constant and variable frame rates and start offsets survive), the
    audio streams copied packet for packet (no re-encoding); subtitle and data streams are dropped. The container
    follows dst's extension (VIDEO_MUXERS).

    yuv420p needs even sizes: an odd output side loses its last row or column (a warning says so). The colour
    matrix and range of the input are used to decode and to encode, and tagged on the output.
    ``progress(done, total)`` is called after every frame (total: VideoInfo.expected_frames, or None); ``tags``
    ({key: text}) are written as the output container's metadata.

    A damaged input (unreadable header, a decoding error, an error logged by FFmpeg's demuxer or decoder, a frame
    flagged corrupt, or clearly fewer frames or seconds than the header promises) raises UserError; dst is
    written atomically (utils.atomic_path), so any failure, Ctrl-C included, leaves no partial file and an
    existing dst as it was.
    """
    info = probe_video(src)
    ext = os.path.splitext(dst)[1].lower()
    if ext not in VIDEO_MUXERS:
        raise UserError(f"{dst}: write videos as {', '.join(VIDEO_MUXERS)}")
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise UserError(f"{dst}: the output would overwrite the input")
    s, encoder, warned = upscaler.scale, _encoder(), []
    width, height = info.width * s - info.width * s % 2, info.height * s - info.height * s % 2
    if (width, height) != (info.width * s, info.height * s):
        warned.append(f"{src}: output cropped to {width}x{height} px (x{s} is {info.width * s}x{info.height * s}; "
                      f"yuv420p needs even sizes)")
    if encoder != 'libx264':
        warned.append(f"libx264 is not in this FFmpeg build: encoding with {encoder} (larger files)")
    options = {'crf': str(crf), 'preset': preset} if encoder == 'libx264' else {'qscale': '2'}
    start, model_seconds, frames, audio_packets = timer(), 0., 0, 0
    level = av.logging.get_level()
    av.logging.set_level(_FFMPEG_ERROR)  # PyAV keeps FFmpeg silent by default: its error lines are evidence here
    try:
        with av.logging.Capture(local=False) as log, atomic_path(dst) as tmp, \
                av.open(src, metadata_errors='ignore') as inp, \
                av.open(tmp, 'w', format=VIDEO_MUXERS[ext], options=MUXER_OPTIONS.get(VIDEO_MUXERS[ext], {})) as out:
            out.metadata.update(tags or {})
            ivs = _main_video_stream(inp)
            ivs.thread_type = 'AUTO'
            names = {inp.format.name, ivs.codec_context.name}
            ovs = out.add_stream(encoder, rate=info.fps, options=options)
            ovs.width, ovs.height, ovs.pix_fmt = width, height, 'yuv420p'
            ovs.time_base = ovs.codec_context.time_base = ivs.time_base  # the input's pts values, as they are
            for attr in ('colorspace', 'color_range', 'color_primaries', 'color_trc'):
                setattr(ovs.codec_context, attr, getattr(ivs.codec_context, attr))
            audio = {}
            for ias in inp.streams.audio:
                if ias.codec_context.name not in out.supported_codecs:
                    raise UserError(f"{src}: its {ias.codec_context.name} audio cannot be copied into {ext}: "
                                    f"write .mkv")
                audio[ias] = out.add_stream_from_template(ias)
            dropped = len(inp.streams) - len(audio) - len(inp.streams.video)
            if dropped:
                warned.append(f"{src}: {dropped} subtitle, data or attachment stream(s) not copied")
            last_pts, last_time = None, None
            for packet in inp.demux(ivs, *audio):
                if packet.stream is not ivs:
                    if packet.dts is not None:  # the demuxer's final empty packets carry nothing
                        packet.stream = audio[packet.stream]
                        out.mux(packet)
                        audio_packets += 1
                    continue
                try:
                    decoded = packet.decode()
                except (av.error.FFmpegError, ValueError) as e:
                    raise UserError(f"{src}: corrupt video data near frame {frames} ({_why(e)})") from None
                for frame in decoded:
                    _check_ffmpeg_log(log, names, src)
                    if frame.is_corrupt:
                        raise UserError(f"{src}: corrupt video frame {frames} (at {frame.time} s)")
                    if (frame.width, frame.height) != (info.width, info.height):
                        raise UserError(f"{src}: the frame size changes from {info.width}x{info.height} to "
                                        f"{frame.width}x{frame.height} at frame {frames}; not supported")
                    t0 = timer()
                    sr = upscaler.upscale_uint8(_frame_tensor(frame))[0, :, :height, :width]  # (3, H, W) uint8
                    model_seconds += timer() - t0
                    rgb = np.ascontiguousarray(sr.permute(1, 2, 0).numpy())  # (H, W, 3)
                    encoded = av.VideoFrame.from_ndarray(rgb, format='rgb24').reformat(
                        format='yuv420p', dst_colorspace=frame.colorspace, dst_color_range=frame.color_range)
                    pts = frame.pts
                    if pts is None or (last_pts is not None and pts <= last_pts):  # no or repeated stamps (AVI)
                        pts = 0 if last_pts is None else last_pts + max(1, round(1 / (info.fps * ivs.time_base)))
                    encoded.pts, encoded.time_base = pts, ivs.time_base
                    out.mux(ovs.encode(encoded))
                    frames, last_pts, last_time = frames + 1, pts, float(pts * ivs.time_base)
                    if progress is not None:
                        progress(frames, info.expected_frames)
            out.mux(ovs.encode())  # the frames the encoder still holds
            _check_ffmpeg_log(log, names, src)
            _check_complete(src, info, frames, last_time)
    except (av.error.FFmpegError, OSError) as e:
        raise UserError(f"{src}: video failed ({_why(e)}); nothing written to {dst}") from None
    finally:
        av.logging.set_level(level)
    return VideoResult(frames, (info.width, info.height), (width, height), timer() - start, model_seconds,
                       audio_packets, tuple(warned))


def _check_complete(src, info, frames, last_time):
    """UserError when clearly less of the video was decoded than its header promises. Lenient: a frame or two
    (2%) short, or a stream end time (Matroska's DURATION tag) that includes a start offset, are not damage."""
    if frames == 0:
        raise UserError(f"{src}: no decodable video frame")
    if info.frames and info.frames - frames > max(2, info.frames // 50):
        raise UserError(f"{src}: truncated: {frames} of {info.frames} frames decoded")
    if info.duration and last_time is not None:
        covered = last_time + 1 / float(info.fps)  # the end of the last frame, measured from t = 0
        if covered < info.duration - max(2 / float(info.fps), 0.02 * info.duration):
            raise UserError(f"{src}: truncated: {covered:.2f} s of {info.duration:.2f} s decoded")
