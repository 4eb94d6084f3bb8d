"""Pictures and pages made from results: the papers' comparison figure (eval.py --figure), the visual report of an
evaluation (eval.py --report html) and the curves of a training run (the trainers' <run>_curves.png).

    box = reports.best_gain_box(sr_y, bicubic_y, hr_y, side=64, border=3)   # where a model beats bicubic most
    image, layout = reports.render_figure([FigureRow('butterfly (Set5)', hr, box, panels)])
    png = reports.png_bytes(image)                                          # the same bytes for the same input
    html = reports.html_report('Evaluation: espcn x3', facts, (header, rows), images)
    png = reports.curves_png(history, 'srresnet')                           # loss, validation PSNR per epoch

Rendering only: uint8 (H, W, 3) arrays and numbers in, PNG bytes or HTML text out. The figure uses PIL's built-in
bitmap font (no FreeType, no system fonts) and integer zooms, and its PNG holds no date: the same input gives the
same bytes on every machine with the same Pillow. The HTML page is self-contained (images as data URIs, no
script or style from elsewhere), so it opens offline. Imports nothing from the project.
"""
import base64
import html
import io
import math
from typing import NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

PANEL = 256  # the figure's crops are zoomed by the largest integer factor that keeps them within PANEL px
THUMB = 160  # the HTML report's thumbnails: at most this many px per side
CROP = 160  # the HTML report's crops: zoomed within this many px
TEXT_ZOOM = 2  # the bitmap font is 11 px high: drawn twice as large, pixel for pixel
LINE = 12 * TEXT_ZOOM  # px per line of text
PAD = 8  # px between panels and around the figure
BOX_COLOUR = (255, 0, 0)
BOX_WIDTH = 2


# ----------------------------------------------------------------------------------------------
# Boxes, crops and text
# ----------------------------------------------------------------------------------------------


def best_gain_box(sr_y, ref_y, hr_y, side, border=0):
    """The square window (x, y, side, side) where ``sr_y`` beats ``ref_y`` (e.g. bicubic) by the largest PSNR gain
    against ``hr_y``: 10 log10(SSE_ref / SSE_sr) over the window. Arrays (H, W) with values in [0, 255] (numpy or
    torch); windows lie inside ``border`` px from every side (the pixels the metrics measure) on a grid of
    max(1, side // 8) px; ties go to the first window from the top left, row by row. Deterministic: the sums are of
    squared integers (exact in float64) when the inputs hold integers, as the standard protocol's rounded luma does.
    A window with no error at all in ``sr_y`` counts as the largest gain (a tiny constant keeps 0 / 0 out)."""
    sr, ref, hr = (np.asarray(a, dtype=np.float64) for a in (sr_y, ref_y, hr_y))
    if not sr.shape == ref.shape == hr.shape or sr.ndim != 2:
        raise ValueError(f"best_gain_box needs three (H, W) arrays of one shape, got {sr.shape}, {ref.shape}, "
                         f"{hr.shape}")
    h, w = sr.shape
    inner_h, inner_w = h - 2 * border, w - 2 * border
    side = int(min(side, inner_h, inner_w))
    if side < 1:
        raise ValueError(f"no window fits a {w}x{h} image inside a {border}-px border")

    def window_sums(err):  # sum of err over every side x side window: (inner_h - side + 1, inner_w - side + 1)
        err = err[border:h - border, border:w - border]
        c = np.zeros((inner_h + 1, inner_w + 1))
        c[1:, 1:] = err.cumsum(0).cumsum(1)
        return c[side:, side:] - c[:-side, side:] - c[side:, :-side] + c[:-side, :-side]

    stride = max(1, side // 8)
    sse_sr = window_sums((sr - hr) ** 2)[::stride, ::stride]
    sse_ref = window_sums((ref - hr) ** 2)[::stride, ::stride]
    tiny = 1e-9
    gain = (sse_ref + tiny) / (sse_sr + tiny)  # monotonic in the PSNR gain
    i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
    return border + j * stride, border + i * stride, side, side


def check_box(box, width, height):
    """ValueError unless ``box`` (x, y, w, h) lies inside a width x height image and is at least 1x1."""
    x, y, w, h = box
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"box {x},{y},{w},{h} (x,y,w,h) is not inside the {width}x{height} image")


def zoom(img, factor):
    """Nearest-neighbour zoom of an (H, W, C) array by an integer factor: each pixel becomes factor x factor."""
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def crop_zoom(img, box, limit):
    """The box (x, y, w, h) of img (H, W, 3) uint8, zoomed by the largest integer factor within ``limit`` px
    (at least 1)."""
    x, y, w, h = box
    return zoom(img[y:y + h, x:x + w], max(1, limit // max(w, h)))


def overview(img, box, limit):
    """img (H, W, 3) uint8 reduced by the smallest integer factor that brings its height within ``limit`` px
    (a mean over factor x factor blocks: PIL's Image.reduce), with ``box`` drawn in red: (array, factor)."""
    factor = max(1, math.ceil(img.shape[0] / limit))
    small = Image.fromarray(img).reduce(factor) if factor > 1 else Image.fromarray(img)
    x, y, w, h = box
    draw = ImageDraw.Draw(small)
    right = min(small.width - 1, (x + w - 1) // factor)
    bottom = min(small.height - 1, (y + h - 1) // factor)
    draw.rectangle((x // factor, y // factor, right, bottom), outline=BOX_COLOUR, width=BOX_WIDTH)
    return np.asarray(small), factor


def _font():
    return ImageFont.load_default_imagefont()  # PIL's built-in bitmap font: no FreeType, no files


def text_width(line):
    """Width in px of a line of text as drawn in the figure."""
    return int(_font().getlength(line)) * TEXT_ZOOM


def draw_text(canvas, xy, lines, colour=(0, 0, 0)):
    """Draw ``lines`` on the PIL RGB ``canvas`` from the top-left ``xy``, the bitmap font zoomed TEXT_ZOOM times."""
    font = _font()
    for k, line in enumerate(lines):
        if not line:
            continue
        mask = Image.new('L', (max(1, int(font.getlength(line))), 11), 0)
        ImageDraw.Draw(mask).text((0, 0), line, fill=255, font=font)
        mask = mask.resize((mask.width * TEXT_ZOOM, mask.height * TEXT_ZOOM), Image.Resampling.NEAREST)
        canvas.paste(Image.new('RGB', mask.size, colour), (xy[0], xy[1] + k * LINE), mask)


def png_bytes(image, text=None):
    """PNG of a PIL image, with fixed encoder settings and no metadata (no date) but the ``text`` chunks ({key:
    value}) given: the same pixels and text, the same bytes."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format='PNG', compress_level=9, pnginfo=info)
    return buf.getvalue()


def data_uri(png):
    return 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')


# ----------------------------------------------------------------------------------------------
# The papers' comparison figure
# ----------------------------------------------------------------------------------------------


class FigureRow(NamedTuple):
    """One image of the figure: ``title`` lines under the HR overview, ``hr`` (H, W, 3) uint8, ``box`` (x, y, w, h)
    in HR px, and ``panels``: [(label lines, (H, W, 3) uint8 image of the HR's size)], drawn left to right."""
    title: tuple
    hr: np.ndarray
    box: tuple
    panels: list


def render_figure(rows):
    """The papers' comparison figure: one row per FigureRow, the HR with its box in red (reduced by an integer
    factor when taller than 1.5 x PANEL px and the crops), then the boxed crop of every panel image zoomed by the same
    integer factor, each with its label lines underneath. Returns (PIL RGB image, layout): layout holds, for every
    drawn panel, a dict with 'row', 'kind' ('overview' or 'crop'), 'rect' (x, y, w, h of its pixels in the
    figure), 'zoom' (crops) or 'reduce' (overview), 'box' and 'label'."""
    placed, y, width = [], PAD, 0  # the cells to draw; the top of the current row; the figure's width
    for r, row in enumerate(rows):
        check_box(row.box, row.hr.shape[1], row.hr.shape[0])
        crops = [(label, crop_zoom(img, row.box, PANEL)) for label, img in row.panels]
        zoom_factor = crops[0][1].shape[0] // row.box[3] if crops else 1
        crop_h = crops[0][1].shape[0] if crops else PANEL
        small, factor = overview(row.hr, row.box, max(crop_h, PANEL * 3 // 2))
        cells = [('overview', list(row.title), small, {'reduce': factor})]
        cells += [('crop', list(label), img, {'zoom': zoom_factor}) for label, img in crops]
        x, label_lines = PAD, max(len(c[1]) for c in cells)
        panel_h = max(c[2].shape[0] for c in cells)
        for kind, label, img, extra in cells:
            column = max([img.shape[1]] + [text_width(line) for line in label])
            placed.append({'row': r, 'kind': kind, 'rect': (x, y, img.shape[1], img.shape[0]), 'box': row.box,
                           'label': label, 'pixels': img, 'label_xy': (x, y + panel_h + 4), **extra})
            x += column + PAD
        width = max(width, x)
        y += panel_h + 4 + label_lines * LINE + PAD
    canvas = Image.new('RGB', (max(width, 1), y), (255, 255, 255))
    for cell in placed:
        canvas.paste(Image.fromarray(cell['pixels']), cell['rect'][:2])
        draw_text(canvas, cell['label_xy'], cell['label'])
    layout = [{k: v for k, v in cell.items() if k not in ('pixels', 'label_xy')} for cell in placed]
    return canvas, layout


# ----------------------------------------------------------------------------------------------
# The visual HTML report of an evaluation
# ----------------------------------------------------------------------------------------------


class ReportImage(NamedTuple):
    """One row of the HTML report: where the image is from, its metrics (standard protocol), the HR thumbnail with
    the box (PNG bytes) and the zoomed crops [(label, PNG bytes)], bicubic's first."""
    dataset: str
    image: str
    size: str
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    box: tuple
    thumbnail: bytes
    crops: list

    @property
    def gain(self):
        return self.psnr - self.bicubic_psnr


PAGE_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: middle; }
th { background: #f2f2f2; }
th[data-sort] { cursor: pointer; text-decoration: underline dotted; }
td.name, th.name { text-align: left; }
td.crops { text-align: center; }
figure { display: inline-block; margin: 0 4px; text-align: center; }
figcaption { font-size: 80%; }
img { image-rendering: pixelated; }
"""

# Clicking a column heading with data-sort sorts the rows by that column's data-value: largest first, then, on the
# next click, smallest first. Equal values keep their order (Array.prototype.sort is stable).
PAGE_SCRIPT = """
document.querySelectorAll('th[data-sort]').forEach(function (th) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0], col = th.cellIndex;
    var descending = th.getAttribute('data-order') !== 'descending';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = parseFloat(a.cells[col].getAttribute('data-value'));
      var y = parseFloat(b.cells[col].getAttribute('data-value'));
      return descending ? (y > x) - (y < x) : (x > y) - (x < y);
    });
    rows.forEach(function (row) { body.appendChild(row); });
    document.querySelectorAll('th[data-sort]').forEach(function (other) { other.removeAttribute('data-order'); });
    th.setAttribute('data-order', descending ? 'descending' : 'ascending');
  });
});
"""


def _number(value, digits):
    return ('inf' if value > 0 else '-inf') if math.isinf(value) else f"{value:.{digits}f}"


def _cell(value, digits):
    """A sortable numeric cell: the shown text rounded, the full value in data-value."""
    return f'<td data-value="{value!r}">{_number(value, digits)}</td>'


def html_report(title, facts, table, images):
    """One self-contained HTML page: ``title``, the ``facts`` lines (as in the markdown report), the summary
    ``table`` (header, rows: lists of str) and one row per ReportImage with its thumbnail, its crops and its
    metrics; the image rows sort by PSNR gain over bicubic (or PSNR, or their order) with a click on the heading."""
    esc = html.escape
    out = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">', f'<title>{esc(title)}</title>',
           f'<style>{PAGE_STYLE}</style></head><body>', f'<h1>{esc(title)}</h1>', '<ul>']
    out += [f'<li>{esc(line)}</li>' for line in facts]
    out += ['</ul>', '<table id="summary"><thead><tr>']
    header, rows = table
    out += [f'<th class="name">{esc(h)}</th>' if i == 0 else f'<th>{esc(h)}</th>' for i, h in enumerate(header)]
    out.append('</tr></thead><tbody>')
    for row in rows:
        out.append('<tr>' + ''.join(f'<td class="name">{esc(c)}</td>' if i == 0 else f'<td>{esc(c)}</td>'
                                    for i, c in enumerate(row)) + '</tr>')
    out += ['</tbody></table>', '<h2>Per image</h2>',
            '<p>Standard protocol (PSNR dB and SSIM on luma, per image). The crop is the box drawn on the '
            'thumbnail: where the model gains most over bicubic. Click a heading marked by a dotted line to sort.</p>',
            '<table id="images"><thead><tr>',
            '<th data-sort="order">#</th><th class="name">image</th><th>HR (box in red)</th>'
            '<th>crops</th><th data-sort="psnr">PSNR</th><th>SSIM</th><th data-sort="bicubic">bicubic PSNR</th>'
            '<th>bicubic SSIM</th><th data-sort="gain">gain over bicubic (dB)</th>', '</tr></thead><tbody>']
    for k, item in enumerate(images, start=1):
        crops = ''.join(f'<figure><img src="{data_uri(png)}" alt="{esc(label)} crop of {esc(item.image)}">'
                        f'<figcaption>{esc(label)}</figcaption></figure>' for label, png in item.crops)
        box = ','.join(map(str, item.box))
        out.append(f'<tr><td data-value="{k}">{k}</td>'
                   f'<td class="name">{esc(item.dataset)} / {esc(item.image)}<br>{esc(item.size)}</td>'
                   f'<td><img src="{data_uri(item.thumbnail)}" alt="{esc(item.image)}" title="box {box}"></td>'
                   f'<td class="crops">{crops}</td>{_cell(item.psnr, 2)}{_cell(item.ssim, 4)}'
                   f'{_cell(item.bicubic_psnr, 2)}{_cell(item.bicubic_ssim, 4)}{_cell(item.gain, 2)}</tr>')
    out += ['</tbody></table>', f'<script>{PAGE_SCRIPT}</script>', '</body></html>']
    return '\n'.join(out) + '\n'


# ----------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------

VALIDATION_KEYS = (('val_psnr', 'validation PSNR'), ('val_psnr_ema', 'validation PSNR, EMA weights'))


def curves_figure(history, title):
    """A matplotlib Figure of a run's per-epoch ``history`` (the trainers' checkpoint 'history': dicts with 'epoch',
    'step', 'seconds', 'losses' {name: mean}, and where validated 'val_psnr' and/or 'val_psnr_ema' and
    'bicubic_psnr'): the training losses (top) and the validation PSNR with bicubic's as a dashed line (bottom,
    when there was validation), against optimizer steps (left) and wall time in minutes (right)."""
    validated = [e for e in history if any(k in e for k, _ in VALIDATION_KEYS)]
    rows = 2 if validated else 1
    fig = Figure(figsize=(11, 3.6 * rows), dpi=100, layout='constrained')
    axes = fig.subplots(rows, 2, squeeze=False)
    fig.suptitle(title)
    names = sorted({name for e in history for name in e.get('losses', {})})
    for col, (xkey, xlabel, xscale) in enumerate((('step', 'optimizer steps', 1.), ('seconds', 'wall time (min)',
                                                                                      60.))):
        ax = axes[0][col]
        for name in names:
            points = [(e[xkey] / xscale, e['losses'][name]) for e in history if name in e.get('losses', {})]
            ax.plot(*zip(*points), marker='.', label=f"{name} (epoch mean)")
        if names and all(v > 0 for e in history for v in e.get('losses', {}).values()):
            ax.set_yscale('log')
        ax.set_xlabel(xlabel)
        ax.set_ylabel('training loss')
        ax.grid(True, alpha=0.3)
        if names:
            ax.legend(fontsize='small')
        if not validated:
            continue
        ax = axes[1][col]
        for key, label in VALIDATION_KEYS:
            points = [(e[xkey] / xscale, e[key]) for e in validated if key in e]
            if points:
                ax.plot(*zip(*points), marker='.', label=label)
        bicubic = [(e[xkey] / xscale, e['bicubic_psnr']) for e in validated if 'bicubic_psnr' in e]
        if bicubic:
            ax.plot(*zip(*bicubic), linestyle='--', color='grey', label='bicubic')
        ax.set_xlabel(xlabel)
        ax.set_ylabel('PSNR (dB), standard protocol')
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize='small')
    return fig


def curves_png(history, title):
    """curves_figure as PNG bytes (Agg, no metadata)."""
    fig = curves_figure(history, title)
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf, metadata={'Software': None})
    return buf.getvalue()
