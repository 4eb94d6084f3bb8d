"""create_data_lists.py, SRDataset and EpochSampler."""
import json
import multiprocessing
import os
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_here, run_script
from datasets import EpochSampler, PatchDataset, SRDataset, collate_patches, create_data_lists


def make_folder(path, names, size=(40, 30)):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        fmt = {'JPG': 'JPEG', 'JPEG': 'JPEG', 'TIF': 'TIFF', 'TIFF': 'TIFF'}.get(name.rsplit('.', 1)[1].upper(),
                                                                               name.rsplit('.', 1)[1].upper())
        img.save(path / name, format=fmt)


def test_create_data_lists_cli_extensions_names_and_counts(tmp_path):
    train = tmp_path / 'coco'
    make_folder(train, ['a.png', 'b.JPG', 'c.jpeg', 'd.BMP', 'e.tif', 'f.WebP', 'tiny.png'])
    make_folder(train, ['tiny.png'], size=(20, 50))  # overwrite: too small
    (train / 'notes.txt').write_text('not an image')
    (train / 'fake.png').write_bytes(b'not a png at all')
    test = tmp_path / 'My Set'
    make_folder(test, ['x.png', 'y.png'])
    out = tmp_path / 'lists'
    result = run_script('create_data_lists.py', '--train-folders', train, '--test-folders', str(test) + '/',
                        '--min-size', 25, '--output-folder', out, '--workers', 1)
    assert result.returncode == 0, result.stderr
    train_list = json.loads((out / 'train_images.json').read_text())
    assert sorted(p.rsplit('/', 1)[1] for p in train_list) == ['a.png', 'b.JPG', 'c.jpeg', 'd.BMP', 'e.tif',
                                                                  'f.WebP']
    assert len(json.loads((out / 'My Set_test_images.json').read_text())) == 2
    assert 'train: found 8, kept 6, skipped 2' in result.stdout
    assert 'not an image' in result.stdout and 'smaller than --min-size' in result.stdout
    log = (out / 'create_data_lists.log').read_text()
    assert 'fake.png' in log and 'tiny.png' in log


def test_create_data_lists_cli_errors(tmp_path):
    result = run_script('create_data_lists.py', '--output-folder', tmp_path)
    assert result.returncode == 2 and 'train-folders' in result.stderr
    result = run_script('create_data_lists.py', '--train-folders', tmp_path / 'absent', '--output-folder', tmp_path)
    assert result.returncode == 2 and result.stderr.count('\n') == 1 and 'not a folder' in result.stderr


def test_epoch_sampler_partitions_global_order_across_ranks():
    single_order = [i for _, i in EpochSampler(10, seed=3)]
    assert sorted(single_order) == list(range(10))
    ranks = [[i for _, i in EpochSampler(10, seed=3, rank=r, world_size=2)] for r in range(2)]
    interleaved = [ranks[r][k] for k in range(5) for r in range(2)]
    assert interleaved == single_order  # local batch b of all ranks == global batch b
    s = EpochSampler(10, seed=3)
    s.set_epoch(2)
    epoch2 = [i for _, i in s]
    assert epoch2 != single_order and sorted(epoch2) == list(range(10))
    s.set_epoch(2, start=4)
    assert [i for _, i in s] == epoch2[4:] and len(s) == 6
    assert all(e == 2 for e, _ in s)
    uneven = [len(list(EpochSampler(5, rank=r, world_size=2))) for r in range(2)]
    assert uneven == [3, 3]


def test_srdataset_crops_depend_only_on_seed_epoch_index(tiny_dataset):
    ds = SRDataset(tiny_dataset['data'], 'train', 24, 4, '[0, 1]', '[-1, 1]', seed=5)
    assert len(ds) == 6
    lr, hr = ds[(1, 3)]
    assert lr.shape == (3, 6, 6) and hr.shape == (3, 24, 24) and hr.min() >= -1 and lr.max() <= 1
    assert torch.equal(ds[(1, 3)][1], hr)
    assert not torch.equal(ds[(2, 3)][1], hr)
    other_seed = SRDataset(tiny_dataset['data'], 'train', 24, 4, '[0, 1]', '[-1, 1]', seed=6)
    assert not torch.equal(other_seed[(1, 3)][1], hr)
    repeated = SRDataset(tiny_dataset['data'], 'train', 24, 4, '[0, 1]', '[0, 1]', repeat=3)
    assert len(repeated) == 18


def test_srdataset_test_split_and_argument_errors(tiny_dataset):
    from utils import UserError
    ds = SRDataset(tiny_dataset['data'], 'test', 0, 4, 'imagenet-norm', '[-1, 1]', test_data_name='Tiny')
    lr, hr = ds[0]
    assert len(ds) == 2 and lr.shape == (3, 16, 16) and hr.shape == (3, 64, 64)
    with pytest.raises(ValueError, match='divisible'):
        SRDataset(tiny_dataset['data'], 'train', 30, 4, '[0, 1]', '[0, 1]')
    with pytest.raises(ValueError, match='test_data_name'):
        SRDataset(tiny_dataset['data'], 'test', 0, 4, '[0, 1]', '[0, 1]')
    with pytest.raises(UserError, match='create_data_lists.py'):
        SRDataset(tiny_dataset['data'], 'test', 0, 4, '[0, 1]', '[0, 1]', test_data_name='Set99')


def test_patch_dataset_cached_and_streaming_give_identical_patches(tiny_dataset):
    from datasets import PatchDataset
    cached = PatchDataset(tiny_dataset['data'], 24, 4, seed=1, crops_per_visit=2, hflip=True, vflip=True,
                          rot90=True, log=lambda *_: None)
    streamed = PatchDataset(tiny_dataset['data'], 24, 4, seed=1, crops_per_visit=2, hflip=True, vflip=True,
                            rot90=True, cache_bytes=0, log=lambda *_: None)
    assert cached.buffer is not None and streamed.buffer is None
    assert len(cached) == len(streamed) == 3  # 6 images x 1 patch each / 2 crops per visit
    for index in [(0, 0), (0, 2), (5, 1)]:
        a, b = cached[index], streamed[index]
        assert a.shape == (2, 3, 24, 24) and a.dtype == torch.uint8
        assert torch.equal(a, b)
    assert not torch.equal(cached[(0, 0)], cached[(1, 0)])


def test_patch_dataset_crops_come_from_the_visited_image_with_flips(tiny_dataset):
    from datasets import PatchDataset
    from utils import load_image, pil_to_tensor
    ds = PatchDataset(tiny_dataset['data'], 16, 4, seed=0, crops_per_visit=4, hflip=True, rot90=True,
                      log=lambda *_: None)
    images = [pil_to_tensor(load_image(p)) for p in ds.images]
    for j in range(len(ds)):
        k = ds._image_for(3, j)
        for patch in ds[(3, j)]:
            variants = [patch, patch.flip(-1), patch.transpose(-2, -1), patch.transpose(-2, -1).flip(-1)]
            img = images[k]
            found = any(torch.equal(v, img[:, t:t + 16, l:l + 16]) for v in variants
                        for t in range(64 - 15) for l in range(64 - 15))
            assert found


def test_patch_dataset_pairs_are_aligned_crops_of_each_whole_images_lr(tmp_path):
    """--lr-from image: each (lr, hr) pair is an HR crop on the scale's grid of the image cut to a multiple of 3 and
    the crop of imresize(that image, 1/3) at the same place, with the same flips / transpose; cached = streamed."""
    from datasets import PatchDataset, collate_patches, create_data_lists
    from utils import imresize, load_image, pil_to_tensor
    make_folder(tmp_path / 'train', ['a.png', 'b.png'], size=(41, 37))  # neither side a multiple of 3
    create_data_lists([str(tmp_path / 'train')], [], 24, str(tmp_path / 'data'), workers=1, log=lambda *_: None)
    opts = dict(seed=2, patches_per_image=6, crops_per_visit=3, hflip=True, vflip=True, rot90=True,
                lr_method='matlab', log=lambda *_: None)
    cached = PatchDataset(tmp_path / 'data', 24, 3, **opts)
    streamed = PatchDataset(tmp_path / 'data', 24, 3, cache_bytes=0, **opts)
    hr_images = [pil_to_tensor(load_image(p))[:, :36, :39] for p in cached.images]  # (3, 36, 39)
    lr_images = [imresize(img, 1 / 3) for img in hr_images]  # (3, 12, 13)
    undo = [lambda t: t, lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.flip(-1).flip(-2)]
    undo += [lambda t, f=f: f(t.transpose(-2, -1)) for f in list(undo)]
    for index in [(0, 0), (0, 3), (4, 1)]:
        lr, hr = cached[index]
        assert lr.shape == (3, 3, 8, 8) and hr.shape == (3, 3, 24, 24) and lr.dtype == hr.dtype == torch.uint8
        assert all(torch.equal(a, b) for a, b in zip(cached[index], streamed[index]))
        k = cached._image_for(index[0], index[1])
        for lr_patch, hr_patch in zip(lr, hr):
            found = [(f, t, l) for f in undo for t in range(12 - 8 + 1) for l in range(13 - 8 + 1)
                     if torch.equal(f(hr_patch), hr_images[k][:, 3 * t:3 * t + 24, 3 * l:3 * l + 24])]
            assert found
            assert any(torch.equal(f(lr_patch), lr_images[k][:, t:t + 8, l:l + 8]) for f, t, l in found)
    lr, hr = collate_patches([cached[(0, 0)], cached[(0, 1)]])
    assert lr.shape == (6, 3, 8, 8) and hr.shape == (6, 3, 24, 24)


@pytest.mark.parametrize('lr_method', [None, 'matlab'])
def test_patch_dataset_batched_fetch_equals_item_by_item_through_the_loader(tmp_path, lr_method):
    """The DataLoader fetches a batch through PatchDataset.__getitems__ (one copy for the batch): the batch equals
    collate_patches of the items fetched one by one, for HR-only items and (lr, hr) pairs, several crops per visit."""
    make_folder(tmp_path / 'train', ['a.png', 'b.png', 'c.png'], size=(41, 37))
    create_data_lists([str(tmp_path / 'train')], [], 24, str(tmp_path / 'data'), workers=1, log=lambda *_: None)
    ds = PatchDataset(tmp_path / 'data', 24, 3, seed=1, patches_per_image=8, crops_per_visit=2, hflip=True,
                      vflip=True, rot90=True, lr_method=lr_method, log=lambda *_: None)
    sampler = EpochSampler(len(ds), seed=1)
    sampler.set_epoch(3)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=collate_patches)
    indices = list(sampler)
    calls = []
    fetch = PatchDataset.__getitems__
    with mock.patch.object(PatchDataset, '__getitems__', autospec=True,
                           side_effect=lambda self, idx: calls.append(list(idx)) or fetch(self, idx)):
        batches = list(loader)
    assert calls == [indices[i:i + 4] for i in range(0, len(indices), 4)]  # the loader took the batched path
    for n, batch in enumerate(batches):
        expected = collate_patches([ds[i] for i in indices[4 * n:4 * n + 4]])
        if lr_method is None:
            assert batch.shape == (8, 3, 24, 24) and torch.equal(batch, expected)
        else:
            assert batch[0].shape == (8, 3, 8, 8) and batch[1].shape == (8, 3, 24, 24)
            assert all(torch.equal(a, b) for a, b in zip(batch, expected))


class _ReportsSharing(PatchDataset):
    """A PatchDataset whose batches say whether the process's numpy views of the cache are views of its buffer."""

    def __getitems__(self, indices):
        batch, = super().__getitems__(indices)
        return [(np.shares_memory(self._arrays[0], self.buffer.numpy()), batch)]


def test_spawned_loader_workers_crop_from_the_shared_cache_not_from_copies(tmp_path, monkeypatch):
    """A spawned worker (macOS's and Windows' default) gets the dataset pickled. After the main process fetched
    items (which makes its numpy views of the cache), the worker still crops from the shared buffer it received,
    not from a copy of the whole cache that travelled with the views, and gives the same batches."""
    make_folder(tmp_path / 'train', ['a.png', 'b.png'], size=(41, 37))
    create_data_lists([str(tmp_path / 'train')], [], 24, str(tmp_path / 'data'), workers=1, log=lambda *_: None)
    monkeypatch.setattr(multiprocessing, 'Value', multiprocessing.get_context('spawn').Value)  # LoadCounter's
    ds = _ReportsSharing(tmp_path / 'data', 24, 3, patches_per_image=2, log=lambda *_: None)
    sampler = EpochSampler(len(ds), seed=0, shuffle=False)
    expected = collate_patches([ds[i] for i in sampler])
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), sampler=sampler, num_workers=1,
                                         multiprocessing_context='spawn', collate_fn=collate_patches)
    shared, batch = next(iter(loader))
    assert shared and torch.equal(batch, expected)


def test_make_lr_pil_equals_pillow_and_matlab_equals_imresize():
    from PIL import Image as PILImage
    from datasets import make_lr
    from conftest import photo_crops
    from utils import imresize
    hr = torch.from_numpy(photo_crops(96, 1)[0]).permute(2, 0, 1)[None]  # (1, 3, 96, 96)
    for s in (2, 3, 4):
        lr = make_lr(hr, s, 'pil')[0].permute(1, 2, 0).numpy().astype(int)
        ref = PILImage.fromarray(hr[0].permute(1, 2, 0).numpy()).resize((96 // s, 96 // s),
                                                                         PILImage.Resampling.BICUBIC)
        diff = np.abs(lr - np.asarray(ref).astype(int))
        assert diff.max() <= 1 and diff.mean() < 1e-3  # Pillow's fixed-point weights may differ by one level
        assert torch.equal(make_lr(hr, s, 'matlab'), imresize(hr, 1 / s))


def test_loader_workers_default_is_zero_only_for_cached_training_on_a_cpu(tiny_dataset):
    """--workers unset: 0 worker processes on a CPU with the RAM cache, the tutorial's 4 otherwise (at most one per
    available core); a given value always wins. (Same patches either way: tests/test_reliability_training.py resumes with 2 workers after 0.)"""
    from datasets import PatchDataset
    import train_srresnet
    from training import loader_workers
    args = train_srresnet.build_parser().parse_args([])
    assert args.workers is None
    cached = PatchDataset(tiny_dataset['data'], 24, 4, log=lambda *_: None)
    streamed = PatchDataset(tiny_dataset['data'], 24, 4, cache_bytes=0, log=lambda *_: None)
    faithful = SRDataset(tiny_dataset['data'], 'train', 24, 4, '[0, 1]', '[0, 1]')
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    tutorial = min(4, len(os.sched_getaffinity(0)))
    assert loader_workers(args.workers, cpu, cached) == 0
    assert loader_workers(args.workers, cuda, cached) == tutorial
    assert loader_workers(args.workers, cpu, streamed) == tutorial
    assert loader_workers(args.workers, cpu, faithful) == tutorial
    with mock.patch('os.sched_getaffinity', return_value={0, 1, 2, 3, 4, 5, 6, 7}):
        assert loader_workers(None, cpu, streamed) == 4  # the tutorial's 4 where there are cores for them
    with mock.patch('os.sched_getaffinity', return_value={0, 1}):
        assert loader_workers(None, cpu, streamed) == 2  # never more than the cores: PyTorch warns
    args.workers = 2
    assert loader_workers(args.workers, cpu, cached) == 2


def run_create_data_lists_here(argv):
    """(exit code, stdout, stderr) of create_data_lists.main(argv) under utils.run_cli, in this process."""
    result = run_here('create_data_lists.py', *argv, '--workers', 1)
    return result.returncode, result.stdout, result.stderr


def test_create_data_lists_output_folder_naming_a_file_is_one_line_before_any_decoding(tmp_path):
    make_folder(tmp_path / 'train', ['a.png'])
    (tmp_path / 'lists').write_text('a file, not a folder')
    for out in (tmp_path / 'lists', tmp_path / 'lists' / 'sub'):
        result = run_script('create_data_lists.py', '--train-folders', tmp_path / 'train', '--output-folder', out,
                            '--workers', 1)
        assert result.returncode == 2 and result.stderr.startswith('error: '), result.stderr
        assert result.stderr.count('\n') == 1 and '--output-folder' in result.stderr
        assert 'creating data lists' not in result.stdout
    assert (tmp_path / 'lists').read_text() == 'a file, not a folder'


def test_create_data_lists_folder_that_cannot_be_listed_is_one_line(tmp_path, capsys, unlistable):
    make_folder(tmp_path / 'train', ['a.png'])
    make_folder(tmp_path / 'locked', ['b.png'])
    unlistable(tmp_path / 'locked')
    code, stdout, err = run_create_data_lists_here(['--train-folders', tmp_path / 'train', '--test-folders',
                                                    tmp_path / 'locked', '--output-folder', tmp_path / 'lists',
                                                    '--min-size', 10])
    assert code == 2 and err.startswith('error: ') and err.count('\n') == 1, err
    assert 'locked' in err and 'cannot list' in err
    assert not (tmp_path / 'lists').exists()


def test_create_data_lists_writes_its_lists_and_log_all_or_nothing(tmp_path, capsys, monkeypatch):
    """Disk full at the 2nd of its files (train list, test list, log): none of them appears."""
    from conftest import fail_nth_file_sync
    make_folder(tmp_path / 'train', ['a.png', 'b.png'])
    make_folder(tmp_path / 'Test', ['c.png'])
    out = tmp_path / 'lists'
    fail_nth_file_sync(monkeypatch, 2)
    code, _, err = run_create_data_lists_here(['--train-folders', tmp_path / 'train', '--test-folders',
                                               tmp_path / 'Test', '--output-folder', out, '--min-size', 10])
    assert code == 2 and 'No space left on device' in err and err.count('\n') == 1, err
    assert not out.exists() or os.listdir(out) == []


def test_random_crops_take_every_offset_from_zero_and_an_image_of_the_crop_size():
    """docs/differences.md, 1: crops start at any offset from 0 to size - crop (the tutorial's randint(1, ...) never
    took 0 and crashed on an image of exactly the crop size)."""
    import random
    from utils import ImageTransforms
    crop, scale = 24, 4
    coords = np.arange(crop + 1, dtype=np.uint8)  # pixel value = its column, and 100 + its row
    image = Image.fromarray(np.stack([np.tile(coords, (crop + 1, 1)), 100 + np.tile(coords[:, None], (1, crop + 1)),
                                      np.zeros((crop + 1, crop + 1), np.uint8)], axis=-1))
    transform = ImageTransforms('train', crop, scale, '[0, 1]', '[0, 1]')
    offsets = set()
    rng = random.Random(0)
    for _ in range(40):
        _, hr = transform(image, rng)  # (3, crop, crop) in [0, 1]
        hr = torch.round(hr * 255).to(torch.uint8)
        offsets.add((int(hr[1, 0, 0]) - 100, int(hr[0, 0, 0])))  # (top, left)
    assert offsets == {(0, 0), (0, 1), (1, 0), (1, 1)}
    exact = image.crop((0, 0, crop, crop))
    lr, hr = transform(exact, rng)
    assert hr.shape == (3, crop, crop) and lr.shape == (3, crop // scale, crop // scale)
    assert torch.equal(torch.round(hr * 255).to(torch.uint8), torch.from_numpy(np.array(exact)).permute(2, 0, 1))
