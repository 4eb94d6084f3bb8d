"""Datasets and samplers.

SRDataset is the tutorial's dataset (JSON lists written by create_data_lists.py, PIL crops, bicubic LR),
made reproducible and robust: indexed by (epoch, i) from EpochSampler, every crop is a pure function of
(seed, epoch, i), whatever the number of workers, processes or resumes; a file that went bad after
listing is skipped with a warning and counted, and too many failures stop the run.
"""
import json
import multiprocessing
import os
import random
import sys

import torch
from torch.utils.data import Dataset, Sampler

from utils import ImageTransforms, UserError, load_image


def read_data_list(data_folder, split, test_data_name=None):
    """Paths in ``train_images.json`` or ``<test_data_name>_test_images.json``; UserError if missing/empty."""
    name = 'train_images.json' if split == 'train' else f"{test_data_name}_test_images.json"
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


class TooManyBadImages(UserError):
    """More than the allowed fraction of training images failed to load."""


class SRDataset(Dataset):
    """LR/HR pairs from the JSON lists, as in the tutorial.

    split 'train': random crop_size crops; 'test': centre crops to a multiple of the scale (test_data_name
    picks the list). Items are (lr, hr) tensors in lr_img_type / hr_img_type (see utils.convert_image).
    Index with an int (crops drawn from the global ``random``, as the tutorial) or with (epoch, i) from
    EpochSampler (crops drawn from an RNG seeded by (seed, epoch, i): reproducible and resumable).
    downsample: 'pil' (the tutorial's PIL bicubic) or 'matlab' (utils.imresize).
    max_bad_fraction: share of failed loads (among at least 20 attempts) above which the run stops.
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
        self.seed, self.max_bad_fraction = seed, max_bad_fraction
        self.repeat = int(repeat) if self.split == 'train' else 1
        self.images = read_data_list(data_folder, self.split, test_data_name)
        self.transform = ImageTransforms(self.split, self.crop_size, self.scaling_factor, lr_img_type, hr_img_type,
                                         downsample=downsample)
        # Shared with worker processes, so the main process sees every failure.
        self.attempts = multiprocessing.Value('l', 0)
        self.failures = multiprocessing.Value('l', 0)

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
            with self.attempts.get_lock():
                self.attempts.value += 1
            try:
                return self.transform(load_image(path), rng)
            except (UserError, ValueError) as e:
                with self.failures.get_lock():
                    self.failures.value += 1
                print(f"warning: skipping training image: {e}", file=sys.stderr)
        raise TooManyBadImages("no training image could be loaded")

    def check_failures(self):
        """Raise TooManyBadImages when failed loads exceed max_bad_fraction (after at least 20 attempts)."""
        attempts, failures = self.attempts.value, self.failures.value
        if attempts >= 20 and failures > self.max_bad_fraction * attempts:
            raise TooManyBadImages(f"{failures} of {attempts} training image loads failed (more than "
                                   f"{self.max_bad_fraction:.0%}): fix the files listed above or rerun "
                                   f"create_data_lists.py")
        return failures


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs: a permutation seeded by (seed, epoch), split across ranks, resumable.

    rank r of world w takes positions r, r + w, r + 2w, ... of the permutation (as DistributedSampler), so
    local batches b of all ranks together are exactly global batch b of a single-process run.
    The permutation is padded by wrapping so every rank gets the same count. ``start`` skips that many
    of this rank's samples (to resume mid-epoch); call set_epoch before each epoch.
    """

    def __init__(self, n, seed=0, shuffle=True, rank=0, world_size=1):
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, seed, shuffle, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = epoch, start

    def __len__(self):
        return -(-self.n // self.world_size) - self.start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = -(-self.n // self.world_size)
        order += order[:per_rank * self.world_size - self.n]
        mine = order[self.rank::self.world_size]
        return iter([(self.epoch, i) for i in mine[self.start:]])
