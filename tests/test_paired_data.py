"""Paired LR/HR folders (create_data_lists.py --paired-*-folders, PatchDataset(paired=True)), degraded training
patches (PatchDataset(degradation=...)) and the degraded test sets (create_data_lists.py --degrade-test)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import degradations
from conftest import fail_nth_file_sync, photo_crops, run_here, run_script
from datasets import (EpochSampler, PatchDataset, collate_patches, create_data_lists, match_pairs, read_pair_list)
from utils import UserError, load_image, pil_to_tensor

UNDO = [lambda t: t, lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.flip(-1).flip(-2)]
UNDO += [lambda t, f=f: f(t.transpose(-2, -1)) for f in list(UNDO)]  # every flip / transpose of _augment


def save(path, arr_hwc):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr_hwc).save(path)


def make_pairs(folder, scale, names=('a', 'b', 'c'), lr_size=(13, 11), extra=0, lr_suffix=''):
    """folder/LR/<name><lr_suffix>.png (random content, lr_size = (w, h)) and folder/HR/<name>.png of scale x that
    size plus ``extra`` px per side (a real photo crop, so that HR and LR differ)."""
    rng = np.random.default_rng(0)
    w, h = lr_size
    photos = photo_crops(64, len(names))
    for name, photo in zip(names, photos):
        save(folder / 'LR' / f"{name}{lr_suffix}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        save(folder / 'HR' / f"{name}.png", np.ascontiguousarray(photo[:h * scale + extra, :w * scale + extra]))
    return folder


@pytest.fixture
def run_cdl():
    """create_data_lists.py's command line run in this process (conftest.run_here): no interpreter start per call."""
    return lambda *args: run_here('create_data_lists.py', *args, '--workers', 1)


# ----------------------------------------------------------------------------------------------
# Listing pairs
# ----------------------------------------------------------------------------------------------

def test_pairs_are_matched_by_name_also_in_div2ks_naming(tmp_path):
    make_pairs(tmp_path / 'plain', 4)
    pairs = match_pairs(str(tmp_path / 'plain'), 4)
    assert [(os.path.basename(lr), os.path.basename(hr)) for lr, hr in pairs] == [('a.png', 'a.png'),
                                                                                  ('b.png', 'b.png'),
                                                                                  ('c.png', 'c.png')]
    make_pairs(tmp_path / 'div2k', 4, lr_suffix='x4')
    assert [os.path.basename(lr) for lr, _ in match_pairs(str(tmp_path / 'div2k'), 4)] == ['ax4.png', 'bx4.png',
                                                                                            'cx4.png']


@pytest.mark.parametrize('damage, named', [('remove_lr', 'HR/b.png'), ('remove_hr', 'LR/b.png'),
                                           ('twin', 'HR/b.png'), ('no_lr_folder', 'LR')])
def test_unmatched_pairs_are_refused_naming_the_file(tmp_path, damage, named):
    folder = make_pairs(tmp_path / 'pairs', 2)
    if damage == 'remove_lr':
        os.unlink(folder / 'LR' / 'b.png')
    elif damage == 'remove_hr':
        os.unlink(folder / 'HR' / 'b.png')
    elif damage == 'twin':  # b.png and bx2.png both match HR/b.png
        (folder / 'LR' / 'bx2.png').write_bytes((folder / 'LR' / 'b.png').read_bytes())
    else:
        os.rename(folder / 'LR', folder / 'low')
    with pytest.raises(UserError) as err:
        match_pairs(str(folder), 2)
    assert str(folder / named) in str(err.value) and '\n' not in str(err.value)


def test_cli_lists_pairs_and_reads_them_back(tmp_path, run_cdl):
    make_pairs(tmp_path / 'train', 3, extra=2)  # HR 2 px larger per side than 3 x LR: allowed, cut off when read
    make_pairs(tmp_path / 'Phones', 3, names=('x', 'y'))
    result = run_cdl('--paired-train-folders', tmp_path / 'train', '--paired-test-folders', tmp_path / 'Phones',
                     '--scale', 3, '--output-folder', tmp_path / 'lists')
    assert result.returncode == 0, result.stderr
    assert 'train_pairs.json: 3 LR/HR pairs, x3' in result.stdout
    scale, pairs = read_pair_list(tmp_path / 'lists', 'train')
    assert scale == 3 and [os.path.basename(hr) for _, hr in pairs] == ['a.png', 'b.png', 'c.png']
    assert all(os.path.isabs(p) for pair in pairs for p in pair)
    scale, pairs = read_pair_list(tmp_path / 'lists', 'test', 'Phones')
    assert scale == 3 and len(pairs) == 2
    assert not (tmp_path / 'lists' / 'train_images.json').exists()


@pytest.mark.parametrize('extra, lr_size', [(3, (13, 11)), (-1, (13, 11))])
def test_cli_refuses_a_pair_whose_sizes_do_not_fit_the_scale_and_writes_nothing(tmp_path, extra, lr_size, run_cdl):
    make_pairs(tmp_path / 'good', 3)
    make_pairs(tmp_path / 'bad', 3, names=('a', 'b'), extra=0)
    hr = tmp_path / 'bad' / 'HR' / 'b.png'
    save(hr, photo_crops(64, 1)[0][:11 * 3 + extra, :13 * 3 + extra])
    result = run_cdl('--paired-train-folders', tmp_path / 'good', '--paired-test-folders', tmp_path / 'bad',
                     '--scale', 3, '--output-folder', tmp_path / 'lists')
    assert result.returncode == 2 and result.stderr.count('\n') == 1, result.stderr
    assert str(hr) in result.stderr and 'must be 39x33' in result.stderr
    assert not (tmp_path / 'lists').exists() or os.listdir(tmp_path / 'lists') == []


# ----------------------------------------------------------------------------------------------
# Training on pairs
# ----------------------------------------------------------------------------------------------

def listed_pairs(tmp_path, scale=3, extra=2):
    make_pairs(tmp_path / 'train', scale, lr_size=(17, 14), extra=extra)
    from datasets import create_paired_lists
    create_paired_lists([str(tmp_path / 'train')], [], scale, str(tmp_path / 'lists'), workers=1,
                        log=lambda *_: None)
    return tmp_path / 'lists'


def test_paired_patches_are_aligned_crops_flipped_alike_cached_and_streamed(tmp_path):
    lists = listed_pairs(tmp_path)
    opts = dict(seed=4, patches_per_image=4, crops_per_visit=2, hflip=True, vflip=True, rot90=True, paired=True,
                log=lambda *_: None)
    cached = PatchDataset(lists, 24, 3, **opts)
    streamed = PatchDataset(lists, 24, 3, cache_bytes=0, **opts)
    assert cached.buffer is not None and streamed.buffer is None
    lr_images = [pil_to_tensor(load_image(p)) for p in cached.lr_images]  # (3, 14, 17)
    hr_images = [pil_to_tensor(load_image(p))[:, :42, :51] for p in cached.images]  # the 2 extra px cut off
    for index in [(0, 0), (1, 3), (5, 2)]:
        lr, hr = cached[index]
        assert lr.shape == (2, 3, 8, 8) and hr.shape == (2, 3, 24, 24) and lr.dtype == hr.dtype == torch.uint8
        assert all(torch.equal(a, b) for a, b in zip(cached[index], streamed[index]))
        k = cached._image_for(*index)
        for lr_patch, hr_patch in zip(lr, hr):
            found = [(f, t, l) for f in UNDO for t in range(14 - 8 + 1) for l in range(17 - 8 + 1)
                     if torch.equal(f(lr_patch), lr_images[k][:, t:t + 8, l:l + 8])]
            assert found  # the LR crop is from the given LR image (random content: one place fits)
            assert any(torch.equal(f(hr_patch), hr_images[k][:, 3 * t:3 * t + 24, 3 * l:3 * l + 24])
                       for f, t, l in found)


def test_paired_dataset_refuses_another_scale_and_mixed_lr_sources(tmp_path):
    lists = listed_pairs(tmp_path)
    with pytest.raises(UserError, match='x3, not x2'):
        PatchDataset(lists, 16, 2, paired=True, log=lambda *_: None)
    with pytest.raises(ValueError, match='one of lr_method, paired or degradation'):
        PatchDataset(lists, 24, 3, paired=True, lr_method='matlab', log=lambda *_: None)


# ----------------------------------------------------------------------------------------------
# Training on degraded patches
# ----------------------------------------------------------------------------------------------

def test_degraded_patches_are_the_degradation_of_their_hr_crop_by_seed_epoch_index(tiny_dataset):
    settings = degradations.preset('realesrgan')
    ds = PatchDataset(tiny_dataset['data'], 32, 4, seed=3, crops_per_visit=2, hflip=True, rot90=True,
                      degradation=settings, log=lambda *_: None)
    plain = PatchDataset(tiny_dataset['data'], 32, 4, seed=3, crops_per_visit=2, hflip=True, rot90=True,
                         log=lambda *_: None)
    for epoch, j in [(0, 0), (2, 1)]:
        lr, hr = ds[(epoch, j)]
        assert lr.shape == (2, 3, 8, 8) and hr.shape == (2, 3, 32, 32) and lr.dtype == torch.uint8
        assert torch.equal(hr, plain[(epoch, j)])  # the same crops as without the degradation
        for crop in range(2):
            expected = degradations.degrade(hr[crop].numpy(), 4, settings,
                                            degradations.patch_rng(3, epoch, j, crop))
            assert np.array_equal(lr[crop].numpy(), expected)
        again = ds[(epoch, j)]
        assert torch.equal(again[0], lr)
    assert not torch.equal(ds[(0, 0)][0], ds[(1, 0)][0])
    other = PatchDataset(tiny_dataset['data'], 32, 4, seed=4, crops_per_visit=2, degradation=settings,
                         log=lambda *_: None)
    assert not torch.equal(other[(0, 0)][0], ds[(0, 0)][0])


def test_degraded_batches_are_the_same_from_any_number_of_loader_workers_or_ranks(tiny_dataset):
    """Each patch's stream is its own (seed, epoch, index, crop): two worker processes, or two DDP ranks each taking
    its share, give the batches one process gives."""
    ds = PatchDataset(tiny_dataset['data'], 24, 4, seed=1, patches_per_image=4, crops_per_visit=2,
                      degradation=degradations.preset('light'), log=lambda *_: None)

    def batches(workers, rank=0, world_size=1, batch_size=2):
        sampler = EpochSampler(len(ds), seed=1, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                             collate_fn=collate_patches)
        return list(loader)

    single = batches(0)
    for a, b in zip(single, batches(2)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    visits = batches(0, batch_size=1)  # one visit (2 crops) per batch
    ranks = [batches(0, r, 2, batch_size=1) for r in range(2)]
    assert len(visits) == 12  # 6 images x 4 patches / 2 crops per visit
    for n, visit in enumerate(visits):  # rank r takes positions r, r + 2, ... of the epoch's permutation
        assert all(torch.equal(a, b) for a, b in zip(visit, ranks[n % 2][n // 2]))


# ----------------------------------------------------------------------------------------------
# Degraded test sets
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def test_folder(tmp_path):
    folder = tmp_path / 'Tiny5'
    for i, photo in enumerate(photo_crops(64, 3)):
        save(folder / f"img{i}.png", np.ascontiguousarray(photo[:62 - 4 * i, :60]))  # not multiples of 4 all
    return folder


def read(path):
    return pil_to_tensor(load_image(str(path))).numpy()


def test_degraded_test_set_is_written_listed_and_recomputable(tmp_path, test_folder, run_cdl):
    out = tmp_path / 'out'
    result = run_cdl('--degrade-test', test_folder, '--scale', 4, '--seed', 5, '--output-folder', out)
    assert result.returncode == 0, result.stderr
    target = out / 'Tiny5_x4_realesrgan'
    assert sorted(os.listdir(target / 'LR')) == sorted(os.listdir(target / 'HR')) == ['img0.png', 'img1.png',
                                                                                      'img2.png']
    record = json.loads((target / 'degradation.json').read_text())
    assert (record['seed'], record['preset'], record['scale']) == (5, 'realesrgan', 4)
    assert degradations.settings_from_dict(record['settings']) == degradations.preset('realesrgan')
    for name in ('img0.png', 'img1.png', 'img2.png'):
        hr, lr = read(target / 'HR' / name), read(target / 'LR' / name)
        source = read(test_folder / name)
        h, w = source.shape[1] // 4 * 4, source.shape[2] // 4 * 4
        assert np.array_equal(hr, source[:, :h, :w]) and lr.shape == (3, h // 4, w // 4)
        drawn = {}
        expected = degradations.degrade(hr, 4, degradations.preset('realesrgan'),
                                        degradations.image_rng(5, name), drawn)
        assert np.array_equal(lr, expected)
        assert record['images'][name] == dict(source=name, hr_size=[w, h], **json.loads(json.dumps(drawn)))
    scale, pairs = read_pair_list(out, 'test', 'Tiny5_x4_realesrgan')
    assert scale == 4 and [os.path.basename(hr) for _, hr in pairs] == ['img0.png', 'img1.png', 'img2.png']


def test_degraded_test_set_is_the_same_bytes_each_time_and_changes_with_the_seed(tmp_path, test_folder, run_cdl):
    for out, seed in (('a', 0), ('b', 0), ('c', 1)):
        assert run_cdl('--degrade-test', test_folder, '--seed', seed, '--output-folder', tmp_path / out).returncode == 0
    lr = {out: [(tmp_path / out / 'Tiny5_x4_realesrgan' / 'LR' / f"img{i}.png").read_bytes() for i in range(3)]
          for out in 'abc'}
    assert lr['a'] == lr['b'] and all(x != y for x, y in zip(lr['a'], lr['c']))
    record = [(tmp_path / out / 'Tiny5_x4_realesrgan' / 'degradation.json').read_text() for out in 'ab']
    assert record[0] == record[1]


def test_degraded_test_set_is_not_overwritten_unless_told(tmp_path, test_folder, run_cdl):
    out = tmp_path / 'out'
    assert run_cdl('--degrade-test', test_folder, '--output-folder', out).returncode == 0
    target = out / 'Tiny5_x4_realesrgan'
    before = {p: p.read_bytes() for p in target.rglob('*') if p.is_file()}
    again = run_cdl('--degrade-test', test_folder, '--seed', 3, '--output-folder', out)
    assert again.returncode == 2 and again.stderr.count('\n') == 1 and '--overwrite' in again.stderr
    assert {p: p.read_bytes() for p in target.rglob('*') if p.is_file()} == before
    os.unlink(test_folder / 'img2.png')  # the new set has one image fewer: the old one's third pair goes
    replaced = run_cdl('--degrade-test', test_folder, '--seed', 3, '--output-folder', out, '--overwrite')
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(os.listdir(target / 'LR')) == sorted(os.listdir(target / 'HR')) == ['img0.png', 'img1.png']
    assert json.loads((target / 'degradation.json').read_text())['seed'] == 3
    assert (target / 'LR' / 'img0.png').read_bytes() != before[target / 'LR' / 'img0.png']


def test_degraded_test_set_takes_a_preset_and_ranges_and_refuses_bad_ones(tmp_path, test_folder, run_cdl):
    result = run_cdl('--degrade-test', test_folder, '--degradation', 'light', '--degradation-opt',
                     'second.jpeg_range=70,80', '--scale', 2, '--output-folder', tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / 'out' / 'Tiny5_x2_light' / 'degradation.json').read_text())
    assert record['settings']['second']['jpeg_range'] == [70, 80] and record['preset'] == 'light'
    assert all(70 <= r['final']['jpeg']['quality'] <= 80 for r in record['images'].values())
    bad = run_cdl('--degrade-test', test_folder, '--degradation-opt', 'second.jpeg_range=70', '--output-folder',
                  tmp_path / 'bad')
    assert bad.returncode == 2 and bad.stderr.count('\n') == 1 and '--degradation-opt' in bad.stderr
    assert not (tmp_path / 'bad').exists()


def test_degraded_test_sets_are_written_all_or_nothing(tmp_path, test_folder, monkeypatch, run_cdl):
    """Disk full at the 5th file of the set (HR and LR of 3 images, the record): nothing appears, no folder either,
    so that the next run is not refused as an overwrite."""
    fail_nth_file_sync(monkeypatch, 5)
    failed = run_cdl('--degrade-test', test_folder, '--output-folder', tmp_path / 'out')
    assert failed.returncode == 2 and 'No space left on device' in failed.stderr, failed.stderr
    assert not (tmp_path / 'out' / 'Tiny5_x4_realesrgan').exists()
    monkeypatch.undo()
    assert run_cdl('--degrade-test', test_folder, '--output-folder', tmp_path / 'out').returncode == 0


def test_the_commands_of_the_docstring_run_end_to_end(tmp_path, test_folder):
    """Through the real command line: a degraded test set and a paired training folder listed in one call."""
    make_pairs(tmp_path / 'pairs', 4, lr_size=(10, 12))
    result = run_script('create_data_lists.py', '--degrade-test', test_folder, '--paired-train-folders',
                        tmp_path / 'pairs', '--output-folder', tmp_path / 'lists', '--workers', 1)
    assert result.returncode == 0, result.stderr
    assert read_pair_list(tmp_path / 'lists', 'train')[0] == 4
    assert len(read_pair_list(tmp_path / 'lists', 'test', 'Tiny5_x4_realesrgan')[1]) == 3


def test_plain_lists_still_work_beside_the_new_flags(tmp_path, tiny_dataset):
    create_data_lists([str(tiny_dataset['train'])], [], 32, str(tmp_path / 'lists'), workers=1, log=lambda *_: None)
    assert json.loads((tmp_path / 'lists' / 'train_images.json').read_text())
