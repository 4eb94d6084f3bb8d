"""A web page on this machine to upscale images with any model of the suite: drop in one or more images, pick a
checkpoint (or bicubic), compare bicubic and SR with a before/after slider, download the PNGs.

    python app.py                                   # http://127.0.0.1:7860 (or: make app)
    python app.py --port 8080 --device cpu
    python app.py --checkpoint-dir results/my_runs  # list the checkpoints found there (and in its sub-folders)
    python app.py --max-pixels 2000000 --max-file-size 10MB --max-jobs 1
    python app.py --host 0.0.0.0                    # reachable from other machines: trusted networks only
    python app.py --share                           # a public *.gradio.live link: goes through Gradio's servers

Everything the page needs is served by this process: no telemetry or version check, no CDN, no web fonts (the
browser's system fonts), no share link unless --share; it works with no network at all. The upscaling is
inference.Upscaler's (tiles within the memory budget, self-ensemble, precision), as in test.py; the page runs one
job at a time per model (other users' jobs on that model wait, jobs on other models run alongside, up to
--max-jobs), and every browser tab is its own session: its files live in a private temporary folder, deleted when
the tab closes and when the server stops. Everything the server writes, Gradio's copies of the uploads included
(GRADIO_TEMP_DIR is set to it), lives in one work folder (sr_app_* under the system's temporary folder), removed
when the server stops on Ctrl-C, SIGTERM or SIGHUP.

Bad input gets a one-line message in the page (never a stack trace): a file that is not an image, an image over
--max-pixels, an upload over --max-file-size (refused by the browser and by the server), a checkpoint that does
not load, an option the device cannot run. Unexpected errors show one line and leave the traceback in the server
log.
"""
import argparse
import atexit
import collections
import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import traceback
import uuid
from typing import NamedTuple

import gradio as gr
import torch
from PIL import Image

import checkpoints
import inference
import models
from utils import (IMAGE_EXTENSIONS, UserError, bicubic_upscale, load_image, make_parser, parse_memory, pick_device,
                   pil_to_tensor, positive_int, run_cli, timer)

BICUBIC = 'bicubic'
# Listed first, in this order; the first one found is the default: the user's own SRResNet, then the shipped models
SHIPPED = ('checkpoint_srresnet.pth', 'srresnet_x4_291.pth', 'srresnet_x4_real.pth', 'espcn_x3_t91.pth',
           'srcnn_x3_t91.pth')
SCALES = (2, 3, 4, 8)
PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')
PREVIEW_MAX_SIDE = 2048  # the slider's images are scaled down to this; the downloads are full size
MODEL_CACHE_SIZE = 4  # loaded checkpoints kept in memory
QUEUE_SIZE = 20  # jobs waiting in gradio's queue before new ones are refused
OUT_OF_MEMORY = "set a smaller memory budget (e.g. 256MB)"
SYSTEM_FONTS = (['ui-sans-serif', 'system-ui', 'sans-serif'], ['ui-monospace', 'Consolas', 'monospace'])


def port_number(text):
    """argparse type of --port: an integer in 1-65535."""
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def check_port_free(host, port):
    """One line instead of Gradio's traceback when --port is taken (or not ours to bind) on --host."""
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            raise UserError(f"--port {port}: cannot serve on {host}:{port} ({e.strerror}); pick another --port") \
                from None


def preselected(offered, wanted, folder):
    """The entry of ``offered`` (find_checkpoints') that is the file ``wanted`` (--checkpoint); a UserError when
    it is missing or not under ``folder`` (--checkpoint-dir), which is all the page offers."""
    if not os.path.isfile(wanted):
        raise UserError(f"--checkpoint {wanted}: no such file")
    for path in offered:
        if os.path.samefile(path, wanted):
            return path
    raise UserError(f"--checkpoint {wanted}: the page offers the .pth files under --checkpoint-dir {folder} only: "
                    f"move it there, or pass --checkpoint-dir its folder")


def build_parser():
    parser = make_parser(__doc__, data=False)
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to serve on (0.0.0.0: every interface; the checkpoint-path box is then off)')
    parser.add_argument('--port', type=port_number, default=7860, help='port to serve on (1-65535)')
    parser.add_argument('--checkpoint-dir', default='results',
                        help='folder searched (with its sub-folders) for .pth checkpoints to offer')
    parser.add_argument('--checkpoint', metavar='FILE',
                        help="the model the page starts with, a .pth file under --checkpoint-dir (default: your own "
                             "checkpoint_srresnet.pth there, else the shipped SRResNet x4, else the first one found)")
    parser.add_argument('--max-pixels', type=positive_int, default=2048 * 2048,
                        help='largest input image (width x height) the page accepts')
    parser.add_argument('--max-file-size', default='20MB',
                        help='largest upload per file, e.g. 20MB or 512KB (1MB = 2**20 bytes)')
    parser.add_argument('--max-jobs', type=positive_int, default=2,
                        help='jobs run at once, each on another model (a model runs one job at a time)')
    parser.add_argument('--share', action='store_true',
                        help="also publish a temporary public link through Gradio's share servers (needs internet)")
    return parser


# ----------------------------------------------------------------------------------------------
# Models: what the page offers, loaded once, one job at a time each
# ----------------------------------------------------------------------------------------------


def find_checkpoints(folder):
    """Paths of the .pth files under ``folder`` (recursively): the user's own SRResNet (checkpoint_srresnet.pth) and
    the shipped models first (SHIPPED's order), then the others in sorted order. [] when the folder does not exist."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        found += [os.path.join(root, f) for f in files if f.endswith('.pth') and not f.startswith('.')]
    rank = {name: i for i, name in enumerate(SHIPPED)}
    return sorted(found, key=lambda p: (rank.get(os.path.basename(p), len(SHIPPED)), p))


def default_model_line(path):
    """What the page starts with, in words: the user's own SRResNet, the shipped SRResNet x4, another checkpoint, or
    bicubic when there is none."""
    name = os.path.basename(path)
    if name == SHIPPED[0]:
        return f"{path} (your own SRResNet)"
    if name == SHIPPED[1]:
        return f"{path} (the shipped SRResNet x4; no checkpoint_srresnet.pth of your own)"
    return path if path != BICUBIC else 'bicubic (no checkpoint found)'


def model_choices(checkpoints, folder):
    """Dropdown (label, value) pairs: each checkpoint named by its path inside ``folder``, then bicubic."""
    return [(os.path.relpath(p, folder), p) for p in checkpoints] + [('bicubic (no model)', BICUBIC)]


def is_loopback(host):
    """True when ``host`` only accepts connections from this machine."""
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def image_stems(names):
    """Output name stem per uploaded file name (in order): the name without its extension; with the extension too
    when two uploads share a stem (a.png, a.jpg -> a_png, a_jpg, as test.py does), and a count when the whole name
    repeats (two photo.jpg from two folders -> photo, photo_2)."""
    stems = [os.path.splitext(n)[0] for n in names]
    out, used = [], set()
    for name, stem in zip(names, stems):
        base = stem if stems.count(stem) == 1 else f"{stem}_{os.path.splitext(name)[1][1:].lower()}"
        candidate, k = base, 1
        while candidate in used:
            k += 1
            candidate = f"{base}_{k}"
        used.add(candidate)
        out.append(candidate)
    return out


def read_image(path, name, max_pixels):
    """The uploaded file as a PIL RGB or RGBA image (utils.load_image's rules), or UserError naming the file as
    the user knows it (``name``) when it is not an image, is over ``max_pixels`` or is below 2x2 px. The size is
    checked from the header, before decoding."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception:  # not an image: load_image below says what is wrong
        width = height = 0
    if width * height > max_pixels:
        raise UserError(f"{name}: {width}x{height} px is over this page's limit of {max_pixels:,} px "
                        f"(the server's --max-pixels)")
    try:
        img = load_image(path, keep_alpha=True)
    except UserError as e:
        raise UserError(str(e).replace(path, name)) from None
    if min(img.size) < 2:
        raise UserError(f"{name}: {img.width}x{img.height} px is too small (at least 2x2)")
    return img


class Settings(NamedTuple):
    """What the server was started with (from the flags): the device, where checkpoints are listed from, the input
    limits, whether the checkpoint-path box is on, and the folder holding every session's files."""
    device: torch.device
    checkpoint_dir: str
    max_pixels: int
    allow_paths: bool
    work_root: str


class Result(NamedTuple):
    """One upscaled image: its upload name, sizes (w, h), model seconds, the full-size PNG, the slider's pair."""
    name: str
    in_size: tuple
    out_size: tuple
    seconds: float
    png: str
    before: str
    after: str


class SRService:
    """The page's work, without the page: checkpoints loaded once (a small LRU cache), one lock per model, jobs that
    check every input first and then upscale through inference.Upscaler, and per-session folders."""

    def __init__(self, settings):
        self.settings = settings
        self._models = collections.OrderedDict()  # (realpath, mtime, size, device) -> checkpoints.ModelDescription
        self._locks = {}  # model key -> threading.Lock
        self._guard = threading.Lock()

    # -- models ----------------------------------------------------------------------------------------------

    def resolve(self, choice, path=''):
        """The model a job uses: the checkpoint-path box when filled in (and allowed), else the dropdown's choice.
        Returns BICUBIC or a checkpoint path."""
        path = (path or '').strip()
        if path:
            if not self.settings.allow_paths:
                raise UserError("checkpoint paths are off on this server (it is not bound to 127.0.0.1): pick a "
                                "model from the list")
            return path
        if not choice:
            raise UserError("pick a model")
        if choice != BICUBIC and choice not in find_checkpoints(self.settings.checkpoint_dir):
            raise UserError(f"{choice} is not one of this server's checkpoints any more: reload the page")
        return choice

    def load(self, model):
        """checkpoints.ModelDescription of a checkpoint path (UserError when it does not load), from the cache when the
        file has not changed since."""
        try:
            stat = os.stat(model)
        except OSError:
            raise UserError(f"checkpoint {model}: no such file") from None
        key = (os.path.realpath(model), stat.st_mtime_ns, stat.st_size, str(self.settings.device))
        with self._guard:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        loaded = checkpoints.load_sr_model(model, self.settings.device)
        with self._guard:
            self._models[key] = loaded
            while len(self._models) > MODEL_CACHE_SIZE:
                self._models.popitem(last=False)
        return loaded

    def describe(self, model):
        """(one line about the model for the page, its scale; None for bicubic, whose scale the user picks)."""
        if model == BICUBIC:
            return "MATLAB-style bicubic (the papers' baseline): pick the scale", None
        loaded = self.load(model)
        params = models.count_parameters(loaded.network)
        colour = 'RGB' if loaded.spec.color == 'rgb' else 'Y channel (Cb/Cr by bicubic)'
        text = f"{loaded.label} x{loaded.scale}, {params:,} parameters, {colour}, on {self.settings.device}"
        hint = checkpoints.shipped_hint(model)
        return (f"{text}. The shipped {hint}." if hint else text), loaded.scale

    def lock(self, model):
        """The lock that lets one job at a time run on ``model``."""
        key = model if model == BICUBIC else os.path.realpath(model)
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    # -- jobs ------------------------------------------------------------------------------------------------

    def upscaler(self, model, self_ensemble, precision, memory):
        """The inference.ImageUpscaler of a checkpoint path for a job's options (memory: the page's budget field,
        blank for 'auto'), as test.py sets one up; always fused and channels_last (test.py's defaults)."""
        options = inference.UpscaleOptions(
            max_memory=inference.memory_option(str(memory).strip() or 'auto', 'memory budget'), precision=precision,
            self_ensemble=bool(self_ensemble), channels_last=True, fuse=True)
        return inference.ImageUpscaler(self.load(model), self.settings.device, options, out_of_memory=OUT_OF_MEMORY)

    def job(self, files, choice, path, scale, self_ensemble, precision, memory, session, progress):
        """Upscale the uploaded ``files`` (paths; their base names are what the user uploaded) for ``session``.

        Every input and option is checked before any work (UserError otherwise). The job then waits for its
        model's lock (``progress(0, 'waiting: ...')`` while another job holds it), upscales image by image with
        ``progress(fraction, text)`` after every tile, and writes into a new folder of the session's; once it has
        succeeded, the session's earlier results are removed (on failure, its own). Returns (list of Result, text
        for the page).
        """
        if not files:
            raise UserError("upload at least one image first")
        model = self.resolve(choice, path)
        if precision not in PRECISIONS:
            raise UserError(f"precision {precision!r}: choose {', '.join(PRECISIONS)}")
        if model == BICUBIC:
            if int(scale or 0) not in SCALES:
                raise UserError(f"scale {scale}: choose {', '.join(map(str, SCALES))}")
            upscaler, label, scale = None, BICUBIC, int(scale)
        else:
            upscaler = self.upscaler(model, self_ensemble, precision, memory)
            label, scale = upscaler.label, upscaler.scale
        names = [os.path.basename(f) for f in files]
        images = [read_image(f, n, self.settings.max_pixels) for f, n in zip(files, names)]
        folder = os.path.join(self.session_folder(session), uuid.uuid4().hex)
        os.makedirs(folder)
        lock = self.lock(model)
        try:
            if not lock.acquire(blocking=False):
                progress(0., f"waiting: {label} is busy with another job")
                lock.acquire()
            try:
                start, results = timer(), []
                for k, (name, stem, img) in enumerate(zip(names, image_stems(names), images)):
                    def on_tile(done, total, k=k, name=name):
                        progress((k + done / total) / len(images), f"{name}: tile {done}/{total}")

                    out_stem = os.path.join(folder, f"{stem}_x{scale}_{label}")
                    results.append(upscale_image(upscaler, img, scale, name, out_stem, on_tile))
                seconds = timer() - start
            finally:
                lock.release()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        for older in os.listdir(self.session_folder(session)):  # the results this session showed before
            if older != os.path.basename(folder):
                shutil.rmtree(os.path.join(self.session_folder(session), older), ignore_errors=True)
        options = '' if upscaler is None else f", {upscaler.precision}" + (', self-ensemble' if self_ensemble else '')
        lines = [f"{len(results)} image(s) with {label} x{scale}{options} on {self.settings.device} in "
                 f"{seconds:.2f} s"]
        lines += [f"{r.name}: {r.in_size[0]}x{r.in_size[1]} -> {r.out_size[0]}x{r.out_size[1]} in {r.seconds:.2f} s"
                  for r in results]
        print(f"job done: session {session[:8]}, {label} x{scale}, {len(results)} image(s), {seconds:.2f} s",
              flush=True)
        return results, '\n'.join(lines)

    # -- session folders ---------------------------------------------------------------------------------------

    def session_folder(self, session):
        """Where a session's jobs write (one sub-folder each); the session id reduced to letters, digits, - and _."""
        safe = ''.join(c for c in str(session) if c.isalnum() or c in '-_') or 'anonymous'
        return os.path.join(self.settings.work_root, safe)

    def cleanup(self, session):
        """Remove a session's files (its tab was closed)."""
        shutil.rmtree(self.session_folder(session), ignore_errors=True)


def preview(img, path):
    """``img`` scaled down to PREVIEW_MAX_SIDE on its long side (kept when smaller), saved as a fast PNG."""
    if max(img.size) > PREVIEW_MAX_SIDE:
        f = PREVIEW_MAX_SIDE / max(img.size)
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.LANCZOS)
    img.save(path, format='PNG', compress_level=1)
    return path


def upscale_image(upscaler, img, scale, name, out_stem, progress):
    """One image: SR with ``upscaler`` (an inference.ImageUpscaler; None: MATLAB-style bicubic,
    utils.bicubic_upscale), the alpha channel (if any) by MATLAB-style bicubic (inference.sr_image, as test.py), the
    SR PNG at out_stem.png, and the slider's two previews. The slider's 'before' is Pillow's bicubic (the same cubic
    kernel, a = -0.5, without MATLAB's rounding between the passes; 50x faster than bicubic_upscale on large
    images). Returns a Result."""
    start = timer()
    if upscaler is None:
        sr = bicubic_upscale(pil_to_tensor(img.convert('RGB')), scale)  # (3, s*h, s*w) uint8
        progress(1, 1)
    else:
        sr = upscaler.upscale_images([img], progress=progress, name=name)[0]  # (3, s*h, s*w) uint8
    seconds = timer() - start
    result = inference.sr_image(sr, img, scale)
    png = out_stem + '.png'
    result.save(png, format='PNG')
    before = preview(img.resize(result.size, Image.Resampling.BICUBIC), out_stem + '.before.png')
    after = png if max(result.size) <= PREVIEW_MAX_SIDE else preview(result, out_stem + '.after.png')
    return Result(name, img.size, result.size, seconds, png, before, after)


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def page_errors(what):
    """UserError -> gr.Error (a message in the page, no traceback anywhere); anything else -> the traceback in the
    server log and one line in the page."""
    try:
        yield
    except UserError as e:
        raise gr.Error(str(e), print_exception=False) from None
    except gr.Error:
        raise
    except Exception as e:  # unexpected: the details stay in the server's log
        traceback.print_exc()
        raise gr.Error(f"{what} failed ({type(e).__name__}); the server's log has the details",
                       print_exception=False) from None


def build_app(service, default_model):
    """The gr.Blocks page wired to ``service`` (an SRService)."""
    settings = service.settings
    choices = model_choices(find_checkpoints(settings.checkpoint_dir), settings.checkpoint_dir)

    def describe(choice, path):
        with page_errors('loading the model'):
            text, scale = service.describe(service.resolve(choice, path))
        if scale is None:
            return text, gr.update(interactive=True)
        return text, gr.update(value=scale, interactive=False)

    def upscale(files, choice, path, scale, self_ensemble, precision, memory, request: gr.Request,
                progress=gr.Progress()):
        session = getattr(request, 'session_hash', None) or 'anonymous'
        with page_errors('upscaling'):
            results, text = service.job(files, choice, path, scale, self_ensemble, precision, memory, session,
                                        lambda fraction, desc: progress(fraction, desc=desc))
        first = results[0]
        picker = gr.update(choices=[r.name for r in results], value=first.name, interactive=len(results) > 1)
        return (first.before, first.after), text, [r.png for r in results], picker, results

    def show(name, results):
        for r in results or []:
            if r.name == name:
                return r.before, r.after
        return gr.skip()

    def cleanup(request: gr.Request):
        service.cleanup(getattr(request, 'session_hash', None) or 'anonymous')

    with gr.Blocks(title='SR suite: upscale images', analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("## Upscale images\nDrop one or more images, pick a model, press **Upscale**. The slider "
                    "compares bicubic (left) with the model (right); the PNGs are below it.")
        results = gr.State()  # per browser tab: this session's Results
        with gr.Row():
            with gr.Column():
                files = gr.File(label='Images (drag and drop; several at once)', file_count='multiple',
                                file_types=list(IMAGE_EXTENSIONS), elem_id='inputs')
                model = gr.Dropdown(choices, value=default_model, label='Model (checkpoints found under '
                                    f'{settings.checkpoint_dir}/)', elem_id='model')
                path = gr.Textbox(label='or a checkpoint path on the server', placeholder='results/checkpoint.pth',
                                  elem_id='path', visible=settings.allow_paths)
                info = gr.Markdown(elem_id='model-info')
                with gr.Row():
                    scale = gr.Dropdown(list(SCALES), value=4, label='Scale', elem_id='scale')
                    precision = gr.Dropdown(list(PRECISIONS), value='auto', label='Precision', elem_id='precision')
                with gr.Row():
                    memory = gr.Textbox('auto', label="Memory budget (e.g. 512MB; 'auto')", elem_id='memory')
                    ensemble = gr.Checkbox(False, label='Self-ensemble (8x slower)', elem_id='ensemble')
                run = gr.Button('Upscale', variant='primary', elem_id='run')
            with gr.Column():
                slider = gr.ImageSlider(label='bicubic | SR', type='filepath', format='png', interactive=False,
                                        elem_id='slider')
                picker = gr.Dropdown(label='Show', choices=[], elem_id='picker', interactive=False)
                report = gr.Textbox(label='Result', interactive=False, lines=2, elem_id='report')
                downloads = gr.File(label='Downloads (PNG)', file_count='multiple', interactive=False,
                                    elem_id='downloads')
        for event in (model.change, path.submit, demo.load):
            event(describe, [model, path], [info, scale], queue=False, api_visibility='private')
        run.click(upscale, [files, model, path, scale, ensemble, precision, memory],
                  [slider, report, downloads, picker, results], api_name='upscale', show_progress_on=[report])
        picker.change(show, [picker, results], slider, queue=False, api_visibility='private')
        demo.unload(cleanup)
    return demo


def launch_options(args, max_file_size):
    """Keywords for gr.Blocks.launch: this machine only unless --host, no share link unless --share, no error
    details, the upload limit, nothing that phones home or loads from outside (system fonts, no footer links to
    the API page or settings, no run history, no monitoring, no server-side rendering, no PWA, no MCP), and
    Gradio's own start-up lines quiet (serving_line says it instead)."""
    theme = gr.themes.Default(font=SYSTEM_FONTS[0], font_mono=SYSTEM_FONTS[1])
    return dict(server_name=args.host, server_port=args.port, share=args.share, show_error=False,
                max_file_size=max_file_size, footer_links=[], run_history=False, enable_monitoring=False,
                ssr_mode=False, pwa=False, mcp_server=False, inbrowser=False, theme=theme, quiet=True)


def serving_line(local_url, share_url):
    """What the log says once the page is served, in this script's terms (Gradio's own lines, quiet here, name its
    launch() arguments: 'set `share=True` in `launch()`' where the flag is --share)."""
    public = f"; public link (through Gradio's servers): {share_url}" if share_url else \
        "; no public link (--share makes one, through Gradio's servers)"
    return f"serving on {local_url}{public}; Ctrl-C stops it and deletes every session's files"


def offline_environment():
    """Environment for a page that never leaves this machine: Gradio's analytics off, Hugging Face's hub
    offline, and no proxy for 127.0.0.1 (launch() checks the server through httpx, which honours *_PROXY)."""
    os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'
    os.environ['HF_HUB_OFFLINE'] = '1'
    os.environ['HF_HUB_DISABLE_TELEMETRY'] = '1'
    for var in ('NO_PROXY', 'no_proxy'):
        os.environ[var] = ','.join(filter(None, [os.environ.get(var), '127.0.0.1', 'localhost']))


def keep_gradio_files_in(folder):
    """Point every folder Gradio writes to at ``folder`` (inside the server's work folder, which goes at stop): its
    uploads and cache of served files (GRADIO_TEMP_DIR, read when the page is built and launched) and the folders its
    routes make at launch from the same variable as it was when gradio was imported (routes.DEFAULT_TEMP_DIR:
    'vibe_edit_history'), which would otherwise stay in the shared temporary folder after the server has gone."""
    os.environ['GRADIO_TEMP_DIR'] = folder
    for module in (gr.routes, gr.route_utils):
        if hasattr(module, 'DEFAULT_TEMP_DIR'):
            module.DEFAULT_TEMP_DIR = folder


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        max_file_size = parse_memory(args.max_file_size)
    except ValueError as e:
        raise UserError(f"--max-file-size: {e}") from None
    offline_environment()
    work_root = tempfile.mkdtemp(prefix='sr_app_')
    atexit.register(shutil.rmtree, work_root, ignore_errors=True)
    keep_gradio_files_in(os.path.join(work_root, 'gradio'))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(0))  # ends like Ctrl-C, so the files go (atexit)
    settings = Settings(pick_device(args.device), args.checkpoint_dir, args.max_pixels, is_loopback(args.host),
                        work_root)
    service = SRService(settings)
    checkpoints = find_checkpoints(args.checkpoint_dir)
    default = (preselected(checkpoints, args.checkpoint, args.checkpoint_dir) if args.checkpoint
               else checkpoints[0] if checkpoints else BICUBIC)
    check_port_free(args.host, args.port)
    print(f"{len(checkpoints)} checkpoint(s) under {args.checkpoint_dir}/, device {settings.device}; default model: "
          f"{default_model_line(default)}", flush=True)
    demo = build_app(service, default)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=args.max_jobs)
    demo.launch(**launch_options(args, max_file_size), prevent_thread_lock=True)
    print(serving_line(demo.local_url, demo.share_url), flush=True)
    demo.block_thread()  # until Ctrl-C (Gradio then closes the server) or SIGTERM / SIGHUP


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
