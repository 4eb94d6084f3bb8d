"""The data lists, the datasets and the sampler, and how LR images are made from HR ones.

create_data_lists writes the JSON lists (train_images.json, <name>_test_images.json) that everything else reads.
SRDataset is the tutorial's dataset (PIL crops, bicubic LR), made reproducible and robust: indexed by (epoch, i)
from EpochSampler, every crop is a pure function of (seed, epoch, i), whatever the number of workers, processes or
resumes; a file that went bad after listing is skipped with a warning and counted, and too many failures stop the
run. PatchDataset is the fast pipeline (uint8 HR patches from a RAM cache; LR made on the device by make_lr, or cut
from each whole image's LR, made once, or read from paired LR/HR folders, or made per patch by Real-ESRGAN's
degradations, degradations.py).

create_paired_lists lists paired folders (LR/ and HR/ images matched by name, sizes checked against the scale) into
train_pairs.json and <name>_test_pairs.json.
"""
import functools
import json
import multiprocessing
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

import degradations
from utils import (ImageTransforms, UserError, atomic_write_many, dataset_name, imresize, list_image_files,
                   load_image, pil_resize, pil_to_tensor)

# ----------------------------------------------------------------------------------------------
# The data lists
# ----------------------------------------------------------------------------------------------

TRAIN_LIST = 'train_images.json'
LOG_NAME = 'create_data_lists.log'


def test_list_name(name):
    """File name of a test set's data list."""
    return f"{name}_test_images.json"


def _image_problem(path, min_size):
    """None if ``path`` is a readable image with both sides >= min_size, else a short reason."""
    try:
        img = load_image(path)
    except UserError as e:
        return str(e).split(': ', 1)[-1]
    if img.width < min_size or img.height < min_size:
        return f"smaller than --min-size {min_size} ({img.width}x{img.height})"
    return None


def _set_max_pixels(max_pixels):
    if max_pixels:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)


def create_data_lists(train_folders, test_folders, min_size, output_folder, workers=None, log=print,
                      max_pixels=None):
    """Write ``train_images.json`` (all train folders merged) and ``<name>_test_images.json`` per test folder.

    Every candidate is fully decoded; unreadable, empty, truncated, non-image, too small and decompression-bomb
    files, and entries that are not regular files (FIFO, socket, device, broken link), are skipped, counted by
    reason, and listed with their paths in ``create_data_lists.log``. Every folder is listed before any decoding
    (one that cannot be listed is a UserError), and the lists and the log are written together, all or nothing.
    Lists hold absolute paths. max_pixels: decompression-bomb limit (default: PIL's MAX_IMAGE_PIXELS).
    Returns {list name: (kept, skipped)}.
    """
    jobs = [('train', train_folders)] + [(dataset_name(d), [d]) for d in test_folders]
    found_per_job = [[p for d in folders for p in list_image_files(d)] for _, folders in jobs]
    log_lines, summary, texts = [], {}, {}
    workers = workers or min(8, os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers, initializer=_set_max_pixels, initargs=(max_pixels,)) as pool:
        for (name, _), found in zip(jobs, found_per_job):
            problems = list(pool.map(functools.partial(_image_problem, min_size=min_size), found, chunksize=16))
            kept = [os.path.abspath(p) for p, why in zip(found, problems) if why is None]
            reasons = {}
            for p, why in zip(found, problems):
                if why is not None:
                    key = why.split(' (')[0]
                    reasons[key] = reasons.get(key, 0) + 1
                    log_lines.append(f"{name}\t{p}\t{why}")
            file_name = TRAIN_LIST if name == 'train' else test_list_name(name)
            texts[os.path.join(output_folder, file_name)] = json.dumps(kept, indent=0)
            skipped = ', '.join(f"{n} {why}" for why, n in sorted(reasons.items())) or 'none'
            log(f"{name}: found {len(found)}, kept {len(kept)}, skipped {len(found) - len(kept)} ({skipped})")
            summary[name] = (len(kept), len(found) - len(kept))
    texts[os.path.join(output_folder, LOG_NAME)] = ''.join(line + '\n' for line in log_lines)
    atomic_write_many(texts)
    if log_lines:
        log(f"skipped files and reasons: {os.path.join(output_folder, LOG_NAME)}")
    return summary


def read_data_list(data_folder, split, test_data_name=None):
    """Paths in ``train_images.json`` or ``<test_data_name>_test_images.json``; UserError if missing/empty."""
    name = TRAIN_LIST if split == 'train' else test_list_name(test_data_name)
    path = os.path.join(data_folder, name)
    if not os.path.isfile(path):
        raise UserError(f"data list {path} not found: run create_data_lists.py first "
                        f"(or pass --data-folder where it wrote its lists)")
    with open(path) as f:
        try:
            images = json.load(f)
        except json.JSONDecodeError:
            raise UserError(f"data list {path} is not valid JSON: rerun create_data_lists.py") from None
    if not isinstance(images, list) or not images:
        raise UserError(f"data list {path} holds no images: check the folders given to create_data_lists.py")
    return images


TRAIN_PAIRS = 'train_pairs.json'
PAIR_FOLDERS = ('LR', 'HR')


def is_paired_folder(folder):
    """Whether ``folder`` is a paired folder: it holds the sub-folders LR/ and HR/ (match_pairs reads it)."""
    return all(os.path.isdir(os.path.join(folder, sub)) for sub in PAIR_FOLDERS)


def test_pairs_name(name):
    """File name of a paired test set's list."""
    return f"{name}_test_pairs.json"


def _stems(folder):
    """{file name without extension: path} of the images in ``folder``; UserError for two images of one name."""
    found = {}
    for path in list_image_files(folder):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in found:
            raise UserError(f"{path}: {os.path.basename(found[stem])} has the same name (another extension): "
                            f"pairs are matched by name, rename one")
        found[stem] = path
    return found


def match_pairs(folder, scale):
    """[(lr path, hr path)] of a paired folder: ``folder``/LR and ``folder``/HR, matched by name: the HR image
    <name>.<ext> pairs with the LR image <name> or <name>x<scale> (DIV2K's naming), any image extension. UserError
    of one line naming the file for an image without its partner (either side) or with two."""
    lr_dir, hr_dir = (os.path.join(folder, sub) for sub in PAIR_FOLDERS)
    for sub in (lr_dir, hr_dir):
        if not os.path.isdir(sub):
            raise UserError(f"{folder}: a paired folder holds the sub-folders LR/ and HR/ (images matched by name); "
                            f"{sub} is not a folder")
    lr_by_stem, hr_by_stem = _stems(lr_dir), _stems(hr_dir)
    if not hr_by_stem:
        raise UserError(f"{hr_dir}: no images")
    pairs, used = [], set()
    for stem, hr in hr_by_stem.items():
        partners = [s for s in (stem, f"{stem}x{scale}") if s in lr_by_stem]
        if not partners:
            raise UserError(f"{hr}: no LR image of the same name ({stem}.* or {stem}x{scale}.*) in {lr_dir}")
        if len(partners) > 1:
            both = ' and '.join(os.path.basename(lr_by_stem[s]) for s in partners)
            raise UserError(f"{hr}: two LR images match it ({both}): keep one")
        used.add(partners[0])
        pairs.append((lr_by_stem[partners[0]], hr))
    unmatched = sorted(set(lr_by_stem) - used)
    if unmatched:
        raise UserError(f"{lr_by_stem[unmatched[0]]}: no HR image of the same name in {hr_dir}")
    return [(os.path.abspath(lr), os.path.abspath(hr)) for lr, hr in pairs]


def _pair_problem(pair, scale):
    """None if both images of ``pair`` (lr, hr) decode and the HR is the LR's size times ``scale`` (up to scale - 1
    px more per side, cut off when read: the papers' HR cut to a multiple of the scale), else one line naming the
    file."""
    lr_path, hr_path = pair
    try:
        lr, hr = load_image(lr_path), load_image(hr_path)
    except UserError as e:
        return str(e)
    w, h = lr.size
    if not (w * scale <= hr.width < (w + 1) * scale and h * scale <= hr.height < (h + 1) * scale):
        return (f"{hr_path} is {hr.width}x{hr.height}, but its LR image {os.path.basename(lr_path)} is {w}x{h}: at x"
                f"{scale} the HR image must be {w * scale}x{h * scale} (up to {scale - 1} px more per side)")
    return None


def create_paired_lists(train_folders, test_folders, scale, output_folder, workers=None, log=print):
    """Write ``train_pairs.json`` (the pairs of all train folders) and ``<name>_test_pairs.json`` per test folder,
    each a paired folder (match_pairs). Every image is decoded and every pair's sizes are checked against ``scale``;
    the first problem stops everything with a UserError of one line naming the file (nothing is written). Lists
    hold {"scale": s, "pairs": [{"lr": path, "hr": path}, ...]}, absolute paths; written all or nothing.
    Returns {list name: number of pairs}."""
    jobs = [(TRAIN_PAIRS, [p for d in train_folders for p in match_pairs(d, scale)])] if train_folders else []
    jobs += [(test_pairs_name(dataset_name(d)), match_pairs(d, scale)) for d in test_folders]
    workers = workers or min(8, os.cpu_count() or 1)
    texts, summary = {}, {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for name, pairs in jobs:
            for problem in pool.map(functools.partial(_pair_problem, scale=scale), pairs, chunksize=8):
                if problem is not None:
                    raise UserError(problem)
            texts[os.path.join(output_folder, name)] = json.dumps(
                {'scale': scale, 'pairs': [{'lr': lr, 'hr': hr} for lr, hr in pairs]}, indent=0)
            summary[name] = len(pairs)
            log(f"{name}: {len(pairs)} LR/HR pairs, x{scale}")
    atomic_write_many(texts)
    return summary


def read_pair_list(data_folder, split, test_data_name=None):
    """(scale, [(lr path, hr path)]) of ``train_pairs.json`` or ``<test_data_name>_test_pairs.json``; UserError if
    missing, not such a list, or empty."""
    name = TRAIN_PAIRS if split == 'train' else test_pairs_name(test_data_name)
    path = os.path.join(data_folder, name)
    if not os.path.isfile(path):
        raise UserError(f"pair list {path} not found: run create_data_lists.py with --paired-train-folders / "
                        f"--paired-test-folders first (or pass --data-folder where it wrote its lists)")
    try:
        with open(path) as f:
            data = json.load(f)
        scale, pairs = int(data['scale']), [(p['lr'], p['hr']) for p in data['pairs']]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"pair list {path} is not a list of LR/HR pairs: rerun create_data_lists.py") from None
    if not pairs:
        raise UserError(f"pair list {path} holds no pairs: check the folders given to create_data_lists.py")
    return scale, pairs


# ----------------------------------------------------------------------------------------------
# Datasets and the sampler
# ----------------------------------------------------------------------------------------------


class TooManyBadImages(UserError):
    """More than the allowed fraction of training images failed to load."""


class LoadCounter:
    """Counts training-image loads and failures, shared with the loader's worker processes so that the main
    process sees every failure; ``check`` stops the run when failures exceed ``max_bad_fraction`` of the loads."""

    def __init__(self, n_images, max_bad_fraction):
        self.n_images, self.max_bad_fraction = n_images, max_bad_fraction
        self.attempts = multiprocessing.Value('l', 0)
        self.failures = multiprocessing.Value('l', 0)

    def attempted(self, n=1):
        with self.attempts.get_lock():
            self.attempts.value += n

    def failed(self, error):
        """Count a failed load and warn, naming the file and the reason."""
        with self.failures.get_lock():
            self.failures.value += 1
        print(f"warning: skipping training image: {error}", file=sys.stderr)

    def check(self):
        """Raise TooManyBadImages when failed loads exceed max_bad_fraction of the attempts so far (judged once
        there were at least 20 attempts, or as many as there are images). Returns the failure count."""
        attempts, failures = self.attempts.value, self.failures.value
        if attempts >= min(20, self.n_images) and failures > self.max_bad_fraction * attempts:
            raise TooManyBadImages(f"{failures} of {attempts} training image loads failed (more than "
                                   f"{self.max_bad_fraction:.0%}): fix the files listed above or rerun "
                                   f"create_data_lists.py")
        return failures


class SRDataset(Dataset):
    """LR/HR pairs from the JSON lists, as in the tutorial.

    split 'train': random crop_size crops; 'test': centre crops to a multiple of the scale (test_data_name
    picks the list). Items are (lr, hr) tensors in lr_img_type / hr_img_type (see utils.convert_image).
    Index with an int (crops drawn from the global ``random``, as the tutorial) or with (epoch, i) from
    EpochSampler (crops drawn from an RNG seeded by (seed, epoch, i): reproducible and resumable).
    downsample: 'pil' (the tutorial's PIL bicubic) or 'matlab' (utils.imresize).
    max_bad_fraction: share of failed loads above which the run stops (see LoadCounter.check).
    repeat: training crops per image per epoch (the dataset's length is repeat x the number of images).
    """

    def __init__(self, data_folder, split, crop_size, scaling_factor, lr_img_type, hr_img_type, test_data_name=None,
                 downsample='pil', seed=0, max_bad_fraction=0.05, repeat=1):
        self.split = split.lower()
        if self.split not in {'train', 'test'}:
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        if self.split == 'test' and test_data_name is None:
            raise ValueError("a test dataset needs test_data_name, e.g. 'Set14'")
        self.crop_size, self.scaling_factor = int(crop_size), int(scaling_factor)
        if self.split == 'train' and self.crop_size % self.scaling_factor != 0:
            raise ValueError(f"crop size {self.crop_size} is not divisible by the scale {self.scaling_factor}")
        self.seed = seed
        self.repeat = int(repeat) if self.split == 'train' else 1
        self.images = read_data_list(data_folder, self.split, test_data_name)
        self.transform = ImageTransforms(self.split, self.crop_size, self.scaling_factor, lr_img_type, hr_img_type,
                                         downsample=downsample)
        self.loads = LoadCounter(len(self.images), max_bad_fraction)

    def __len__(self):
        return len(self.images) * self.repeat

    def _rng(self, index):
        if isinstance(index, tuple):
            epoch, i = index
            return random.Random(f"{self.seed}-{epoch}-{i}"), i
        return random, index

    def __getitem__(self, index):
        rng, i = self._rng(index)
        i %= len(self.images)
        if self.split == 'test':
            return self.transform(load_image(self.images[i]))
        # A file that went bad after listing: warn, count, and use the next one (deterministically).
        for k in range(len(self.images)):
            path = self.images[(i + k) % len(self.images)]
            self.loads.attempted()
            try:
                return self.transform(load_image(path), rng)
            except (UserError, ValueError) as e:
                self.loads.failed(e)
        raise TooManyBadImages("no training image could be loaded")

    def check_failures(self):
        """See LoadCounter.check."""
        return self.loads.check()


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs: a permutation seeded by (seed, epoch), split across ranks, resumable.

    rank r of world w takes positions r, r + w, r + 2w, ... of the permutation (as DistributedSampler), so
    local batches b of all ranks together are exactly global batch b of a single-process run.
    The permutation is padded by wrapping so every rank gets the same count. ``start`` skips that many
    of this rank's samples (to resume mid-epoch); call set_epoch before each epoch. A start at or past the end (a
    run stopped after the epoch's last step, whose last batch was partial: steps x batch size > samples) leaves
    nothing of the epoch, whose end-of-epoch work the trainer then does.
    """

    def __init__(self, n, seed=0, shuffle=True, rank=0, world_size=1):
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, seed, shuffle, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.epoch, self.start = epoch, min(start, self.per_rank)

    @property
    def per_rank(self):
        """Samples of each rank per epoch (the permutation is padded by wrapping to a multiple of world_size)."""
        return -(-self.n // self.world_size)

    def __len__(self):
        return self.per_rank - self.start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = self.per_rank
        order += order[:per_rank * self.world_size - self.n]
        mine = order[self.rank::self.world_size]
        return iter([(self.epoch, i) for i in mine[self.start:]])


def total_memory_bytes():
    """Physical memory of this machine (0 when unknown)."""
    try:
        return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):
        return 0


class PatchDataset(Dataset):
    """The fast training pipeline: HR patches as uint8, LR made later on the device for the whole batch.

    Every training image is decoded once into one shared uint8 buffer in RAM when the decoded total fits in
    ``cache_bytes``; otherwise images are decoded on each visit (streaming). One item is one visit of one image:
    ``crops_per_visit`` random crops (default: 1 when cached, 4 when streaming), each optionally flipped /
    rotated by 90 degrees, as a (crops_per_visit, 3, crop_size, crop_size) uint8 tensor. Items are indexed by
    (epoch, j) from EpochSampler; crops and the image visited are pure functions of (seed, epoch, j). An epoch holds
    ceil(n_images * patches_per_image / crops_per_visit) visits, so it sees n_images * patches_per_image
    patches whatever crops_per_visit is; with fewer visits than images, each epoch visits a random subset.
    Images that cannot be read are skipped with a warning and counted (see LoadCounter.check).

    With ``lr_method`` ('matlab' or 'pil', see make_lr) each image's LR is made once from the whole image (cut to a
    multiple of the scale), as test sets are made, and an item is a pair of aligned crops (BasicSR's paired
    crops): (lr, hr) with lr (crops_per_visit, 3, c/s, c/s) cut at (i, j) of the LR image and hr at (s*i, s*j), both
    flipped / rotated alike. The LR crops then hold no patch borders of their own. With ``paired`` the images are
    the pairs of train_pairs.json (create_paired_lists: given LR images, the HR cut to s times their size), cropped
    the same way. With ``degradation`` (a degradations.DegradationSettings) each HR crop, flipped / rotated, is
    degraded into its LR (degradations.degrade, Real-ESRGAN's second-order model) with the generator
    degradations.patch_rng(seed, epoch, j, crop number): the pair is a pure function of (seed, epoch, j) too. Without
    any of them, items are HR crops only and the LR is made per patch (make_lr on the batch).
    """

    def __init__(self, data_folder, crop_size, scaling_factor, seed=0, patches_per_image=1, crops_per_visit=None,
                 hflip=False, vflip=False, rot90=False, cache_bytes=None, max_bad_fraction=0.05, workers=4,
                 lr_method=None, paired=False, degradation=None, log=print):
        self.crop_size, self.scaling_factor = int(crop_size), int(scaling_factor)
        if lr_method not in (None, 'matlab', 'pil'):
            raise ValueError(f"lr_method is None, 'matlab' or 'pil', not {lr_method!r}")
        if sum((lr_method is not None, bool(paired), degradation is not None)) > 1:
            raise ValueError("the LR comes from one of lr_method, paired or degradation, not several")
        if degradation is not None and not isinstance(degradation, degradations.DegradationSettings):
            raise ValueError(f"degradation is a degradations.DegradationSettings, not {type(degradation).__name__}")
        self.lr_method, self.paired, self.degradation = lr_method, bool(paired), degradation
        if self.crop_size % self.scaling_factor:
            raise ValueError(f"crop size {self.crop_size} is not divisible by the scale {self.scaling_factor}")
        self.lr_images = None
        if self.paired:
            scale, pairs = read_pair_list(data_folder, 'train')
            if scale != self.scaling_factor:
                raise UserError(f"the pairs in {os.path.join(data_folder, TRAIN_PAIRS)} are x{scale}, not "
                                f"x{self.scaling_factor}: pass --scale {scale} or list pairs of x{self.scaling_factor}")
            self.lr_images, self.images = [lr for lr, _ in pairs], [hr for _, hr in pairs]
        else:
            self.images = read_data_list(data_folder, 'train')
        self.seed = seed
        self.flips, self.patches_per_image = (hflip, vflip, rot90), int(patches_per_image)
        self.loads = LoadCounter(len(self.images), max_bad_fraction)
        self._perm_epoch, self._perm = None, None
        self.buffer = self.lr_buffer = None
        self._arrays = None  # numpy views of the buffers, made on first use in each process (see __getstate__)
        if cache_bytes is None:
            cache_bytes = total_memory_bytes() // 4
        needed = self._decoded_bytes()
        cached = needed <= cache_bytes
        self.auto_crops = crops_per_visit is None
        self.set_crops_per_visit(crops_per_visit or (1 if cached else 4))
        if cached:
            self._build_cache(workers)
            log(f"cached {len(self.offsets)} training images in RAM ({needed / 2 ** 20:.0f} MiB, decoded once)")
        else:
            log(f"training images need {needed / 2 ** 30:.1f} GiB decoded, more than the cache limit "
                f"{cache_bytes / 2 ** 30:.1f} GiB: decoding on each visit ({self.crops_per_visit} crops per visit)")

    @property
    def has_lr_images(self):
        """Whether each image comes with a whole LR image (lr_method or paired), cropped alongside."""
        return bool(self.lr_method or self.paired)

    def _decoded_bytes(self):
        """Decoded RGB size of all images, from their headers (unreadable ones count as 0)."""
        total = 0
        for path in self.images + (self.lr_images or []):
            try:
                with Image.open(path) as img:
                    total += img.width * img.height * 3
            except Exception:
                pass
        return total

    def _build_cache(self, workers):
        def decode(k):
            try:
                return self._decode(k)
            except UserError as e:
                return str(e)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            decoded = list(pool.map(decode, range(len(self.images))))
        good = []
        for item in decoded:
            if isinstance(item, str):
                self.loads.failed(item)
            else:
                good.append(item)
        if not good:
            raise TooManyBadImages("no training image could be loaded")
        if self.has_lr_images:
            self.lr_buffer, self.lr_offsets, self.lr_shapes = _pack([lr for _, lr in good])
            good = [hr for hr, _ in good]
        self.buffer, self.offsets, self.shapes = _pack(good)
        self.loads.attempted(len(self.images))

    def _decode(self, k):
        """(3, H, W) uint8 of image k, or the pair (hr, lr) with ``lr_method`` or ``paired``; UserError when
        unusable."""
        path = self.images[k]
        img = load_image(path)
        if min(img.size) < self.crop_size:
            raise UserError(f"{path}: {img.width}x{img.height} is smaller than the crop size {self.crop_size}")
        hr = pil_to_tensor(img)  # (3, H, W) uint8
        s = self.scaling_factor
        if self.paired:
            lr = pil_to_tensor(load_image(self.lr_images[k]))  # (3, h, w) uint8
            if lr.shape[1] * s > hr.shape[1] or lr.shape[2] * s > hr.shape[2]:
                raise UserError(f"{path}: {img.width}x{img.height}, smaller than {s} times its LR image "
                                f"{self.lr_images[k]} ({lr.shape[2]}x{lr.shape[1]}): rerun create_data_lists.py")
            return hr[:, :lr.shape[1] * s, :lr.shape[2] * s], lr  # (3, s h, s w), (3, h, w)
        if not self.lr_method:
            return hr
        hr = hr[:, :hr.shape[1] // s * s, :hr.shape[2] // s * s]  # a multiple of the scale, as the test sets
        return hr, make_lr(hr[None], s, self.lr_method)[0]  # (3, H, W), (3, H / s, W / s) uint8

    def set_crops_per_visit(self, crops):
        """Crops per visit; the epoch keeps n_images * patches_per_image patches."""
        self.crops_per_visit = int(crops)
        self.length = -(-len(self.images) * self.patches_per_image // self.crops_per_visit)

    def __len__(self):
        return self.length

    def n_images(self):
        return len(self.offsets) if self.buffer is not None else len(self.images)

    def _image_for(self, epoch, j):
        """The image visited by item j of an epoch: a per-epoch permutation, cached per worker."""
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 7_919 + epoch + 1)
            self._perm, self._perm_epoch = torch.randperm(self.n_images(), generator=g).tolist(), epoch
        return self._perm[j % self.n_images()]

    def _load(self, k):
        """Image k as a (3, H, W) uint8 numpy array (a view of the cache), or the pair (hr, lr) of them."""
        if self.buffer is None:
            self.loads.attempted()
            img = self._decode(k)
            return tuple(t.numpy() for t in img) if self.has_lr_images else img.numpy()
        if self._arrays is None:
            self._arrays = tuple(b.numpy() for b in (self.buffer, self.lr_buffer) if b is not None)
        hr = _unpack(self._arrays[0], self.offsets[k], self.shapes[k])
        return (hr, _unpack(self._arrays[1], self.lr_offsets[k], self.lr_shapes[k])) if self.has_lr_images else hr

    def __getstate__(self):
        """Pickled for spawned loader workers without the numpy views: they would travel as copies of the whole
        cache, where the shared-memory buffers travel as handles."""
        return {**self.__dict__, '_arrays': None}

    def _views(self, index):
        """The crops of item ``index`` as numpy views of the images: ([hr (3, c, c)], [lr (3, c/s, c/s)], empty
        for HR-only items), one per crop of the visit, flipped / transposed alike (degraded LR: new arrays)."""
        epoch, j = index if isinstance(index, tuple) else (0, index)
        rng = random.Random(f"{self.seed}-{epoch}-{j}")
        k = self._image_for(epoch, j)
        for attempt in range(self.n_images()):
            try:
                img = self._load((k + attempt) % self.n_images())  # (3, H, W) uint8, or (hr, lr)
                break
            except UserError as e:
                self.loads.failed(e)
        else:
            raise TooManyBadImages("no training image could be loaded")
        # numpy views: slicing, flipping and transposing them costs ~10x less than torch's per-op dispatch
        hr_img, lr_img = img if self.has_lr_images else (img, None)
        _, h, w = hr_img.shape
        # with an LR image, crops start on the scale's grid: (top, left) = s * (LR top, LR left)
        s, c = (self.scaling_factor if self.has_lr_images else 1), self.crop_size
        hr_patches, lr_patches = [], []
        for crop in range(self.crops_per_visit):
            top, left = rng.randint(0, (h - c) // s), rng.randint(0, (w - c) // s)
            patches = [hr_img[:, s * top:s * top + c, s * left:s * left + c]]  # (3, c, c) uint8, a view
            if self.has_lr_images:
                patches.append(lr_img[:, top:top + c // s, left:left + c // s])  # (3, c/s, c/s) uint8
            patches = _augment(patches, rng, *self.flips)
            hr_patches.append(patches[0])
            lr_patches.extend(patches[1:])
            if self.degradation is not None:
                patch_rng = degradations.patch_rng(self.seed, epoch, j, crop)
                lr_patches.append(degradations.degrade(patches[0], self.scaling_factor, self.degradation, patch_rng))
        return hr_patches, lr_patches

    def _batch(self, hr_patches, lr_patches):
        """Lists of views -> the uint8 tensor (n, 3, c, c) of the HR crops, or the pair (lr, hr), copied once."""
        hr = torch.from_numpy(np.stack(hr_patches))  # np.stack copies strided views ~2.5x faster than np.array
        return (torch.from_numpy(np.stack(lr_patches)), hr) if lr_patches else hr

    def __getitem__(self, index):
        return self._batch(*self._views(index))

    def __getitems__(self, indices):
        """A whole batch at once (the DataLoader's batched fetch): ``[batch]``, one item holding every crop of
        ``indices`` in order, so that collate_patches gives the batch of ``[self[i] for i in indices]`` with one
        copy instead of one per item and another for the concatenation."""
        views = [self._views(i) for i in indices]
        return [self._batch([p for hr, _ in views for p in hr], [p for _, lr in views for p in lr])]

    def check_failures(self):
        """See LoadCounter.check."""
        return self.loads.check()


def _pack(images):
    """(3, h, w) uint8 tensors -> (one flat uint8 buffer in shared memory, offsets, shapes): one block, which
    worker processes share."""
    sizes = [img.numel() for img in images]
    buffer = torch.empty(sum(sizes), dtype=torch.uint8)
    offsets, start = [], 0
    for img, size in zip(images, sizes):
        buffer[start:start + size] = img.reshape(-1)
        offsets.append(start)
        start += size
    return buffer.share_memory_(), offsets, [tuple(img.shape) for img in images]


def _unpack(array, offset, shape):
    """The (3, h, w) view of one image packed by _pack, from ``array``, the numpy view of its buffer."""
    c, h, w = shape
    return array[offset:offset + c * h * w].reshape(c, h, w)


def _augment(patches, rng, hflip, vflip, rot90):
    """The same random flips / transpose applied to each of ``patches`` ((3, h, w) numpy arrays), as views."""
    if hflip and rng.random() < 0.5:
        patches = [p[:, :, ::-1] for p in patches]
    if vflip and rng.random() < 0.5:
        patches = [p[:, ::-1] for p in patches]
    if rot90 and rng.random() < 0.5:
        patches = [p.transpose(0, 2, 1) for p in patches]
    return patches


def collate_patches(items):
    """Concatenate visits into one (N, 3, c, c) uint8 HR batch, or pairs into (lr, hr) uint8 batches (a single
    item, as PatchDataset.__getitems__ gives, is its batch already)."""
    if len(items) == 1:
        return items[0]
    if isinstance(items[0], tuple):
        return tuple(torch.cat(part) for part in zip(*items))
    return torch.cat(items)


def make_lr(hr, scaling_factor, method):
    """LR batch from a uint8 HR batch on any device: (N, 3, H, W) uint8 -> (N, 3, H/s, W/s) uint8.

    'matlab': utils.imresize (MATLAB bicubic with antialiasing). 'pil': utils.pil_resize, Pillow's bicubic
    (the tutorial's), within 1 grey level of Pillow itself.
    """
    if method == 'matlab':
        return imresize(hr, 1. / scaling_factor)
    if method != 'pil':
        raise ValueError(f"downsampling method is 'pil' or 'matlab', not {method!r}")
    return pil_resize(hr, (hr.shape[-2] // scaling_factor, hr.shape[-1] // scaling_factor))
