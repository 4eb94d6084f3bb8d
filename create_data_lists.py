"""Write the JSON image lists the training and evaluation scripts read.

    python create_data_lists.py --train-folders data/COCO2014/train2014 data/COCO2014/val2014 \
        --test-folders data/BSD100 data/Set5 data/Set14 --min-size 100 --output-folder data
    python create_data_lists.py --from-skimage data/photos --output-folder data/demo   # no download needed
    python create_data_lists.py --paired-train-folders data/phone_pairs --paired-test-folders data/phone_test \
        --scale 4 --output-folder data       # your own LR/HR pairs: each folder holds LR/ and HR/
    python create_data_lists.py --degrade-test data/Set5 data/Set14 data/BSD100 --scale 4 --output-folder data
        # degraded x4 test sets (Real-ESRGAN's degradations, seed 0): data/Set5_x4_realesrgan/{LR,HR}, listed as pairs

Writes train_images.json (all train folders merged) and <folder name>_test_images.json per test folder.
Every file with an image extension (png, jpg, jpeg, bmp, tif, tiff, webp; any letter case) is fully
decoded; unreadable, empty, truncated, non-image, too-small and oversized (decompression bomb) files, and
entries that are not regular files (a FIFO, socket or device named like an image), are skipped and counted by
reason; their paths and reasons go to create_data_lists.log in the output folder. A folder that cannot be
listed, or an --output-folder that is a file, stops the run with one line before any image is decoded. The lists
and the log are written together, all or nothing.

Paired folders (--paired-train-folders, --paired-test-folders) hold LR/ and HR/ sub-folders of images matched by
name (an HR image <name>.png pairs with the LR image <name> or <name>x<scale>, any extension); each HR image must
be --scale times its LR image (up to scale - 1 px more per side, cut off when read). An image without its partner,
a size that does not fit, or an unreadable file stops the run with one line naming the file. They are listed in
train_pairs.json and <folder name>_test_pairs.json.

--degrade-test writes, for each test folder, <output folder>/<name>_x<scale>_<preset>/ with HR/ (each image cut to
a multiple of the scale), LR/ (its degradation by Real-ESRGAN's second-order model, degradations.py, drawn with
--seed and the image's file name) and degradation.json (seed, preset, every range, every image's drawn
parameters), then lists them as paired test sets. All of it is written all or nothing; an existing degraded set is
refused unless --overwrite is given.
"""
import os

from PIL import Image

import degradations
from datasets import create_data_lists, create_paired_lists
from utils import (AtomicFileSet, IMAGE_EXTENSIONS, UserError, atomic_write, check_output_folder, make_parser,
                   positive_int, run_cli)

# Real photos shipped inside scikit-image (no download): a training set and a disjoint test set.
SKIMAGE_TRAIN = ('astronaut', 'coffee', 'rocket', 'immunohistochemistry', 'hubble_deep_field', 'retina')
SKIMAGE_TEST = ('chelsea', 'camera')


def export_skimage_photos(folder):
    """Write scikit-image's bundled photos as PNGs into folder/train and folder/test; returns the two folders."""
    from skimage import data
    folders = {}
    for split, names in (('train', SKIMAGE_TRAIN), ('test', SKIMAGE_TEST)):
        folders[split] = os.path.join(folder, split)
        for name in names:
            img = Image.fromarray(getattr(data, name)())
            atomic_write(os.path.join(folders[split], name + '.png'), lambda f, img=img: img.save(f, format='PNG'))
    return folders['train'], folders['test']


def degradation_settings(preset, overrides):
    """The DegradationSettings of --degradation and --degradation-opt; UserError naming the flag."""
    try:
        return degradations.with_overrides(degradations.preset(preset), overrides)
    except ValueError as e:
        raise UserError(f"--degradation-opt: {e}") from None


def check_degraded_targets(test_folders, output_folder, scale, preset, overwrite):
    """The folders --degrade-test writes, one per test folder; UserError when one of them exists already and
    --overwrite was not given, or when two test folders have the same name."""
    targets = [degradations.degraded_set_folder(output_folder, folder, scale, preset) for folder in test_folders]
    for folder, target in zip(test_folders, targets):
        if not os.path.isdir(folder):
            raise UserError(f"--degrade-test {folder}: not a folder")
        if targets.count(target) > 1:
            raise UserError(f"--degrade-test: two test folders named {os.path.basename(target)}: rename one")
        if os.path.lexists(target) and not overwrite:
            raise UserError(f"{target} exists: pass --overwrite to replace that degraded test set")
    return targets


def remove_leftovers(target, written):
    """After an --overwrite: remove the images of LR/ and HR/ that the new set does not hold (a previous set's)."""
    for sub in ('LR', 'HR'):
        folder = os.path.join(target, sub)
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(IMAGE_EXTENSIONS) and name not in written:
                os.unlink(os.path.join(folder, name))
                print(f"removed {os.path.join(folder, name)} (not in the new set)")


def remove_empty_folders(target):
    """Remove ``target``/LR, ``target``/HR and ``target`` where they are empty (what a failed set leaves)."""
    for folder in (os.path.join(target, 'LR'), os.path.join(target, 'HR'), target):
        try:
            os.rmdir(folder)
        except OSError:
            pass


def write_degraded_test_sets(test_folders, targets, scale, settings, seed, preset):
    """Degrade every test folder into its target (degradations.degrade_test_set), all of it written together: on
    any failure nothing appears (not even the new folders)."""
    new = [t for t in targets if not os.path.lexists(t)]
    try:
        with AtomicFileSet() as files:
            records = [degradations.degrade_test_set(folder, target, scale, settings, seed, preset, files)
                       for folder, target in zip(test_folders, targets)]
    except BaseException:
        for target in new:
            remove_empty_folders(target)
        raise
    for target, record in zip(targets, records):
        remove_leftovers(target, set(record['images']))


def main(argv=None):
    parser = make_parser(__doc__, data=False, device=False)
    parser.add_argument('--train-folders', nargs='*', default=[], metavar='DIR', help='training image folders')
    parser.add_argument('--test-folders', nargs='*', default=[], metavar='DIR', help='test image folders')
    parser.add_argument('--min-size', type=positive_int, default=100, help='minimum width and height kept')
    parser.add_argument('--output-folder', default='./data/', help='where the JSON lists go')
    parser.add_argument('--workers', type=positive_int, default=min(8, os.cpu_count() or 1),
                        help='processes decoding images')
    parser.add_argument('--max-image-pixels', type=positive_int, default=Image.MAX_IMAGE_PIXELS,
                        help='images with more pixels are refused as possible decompression bombs')
    parser.add_argument('--from-skimage', metavar='DIR',
                        help="export scikit-image's bundled photos to DIR/train and DIR/test and list them too")
    parser.add_argument('--paired-train-folders', nargs='*', default=[], metavar='DIR',
                        help='paired training folders (each holds LR/ and HR/), listed in train_pairs.json')
    parser.add_argument('--paired-test-folders', nargs='*', default=[], metavar='DIR',
                        help='paired test folders (each holds LR/ and HR/), listed in <name>_test_pairs.json')
    parser.add_argument('--scale', type=positive_int, default=4,
                        help='the scale of the pairs and of the degraded test sets (HR = scale x LR)')
    parser.add_argument('--degrade-test', nargs='*', default=[], metavar='DIR',
                        help='test folders to write degraded LR/HR versions of (and list as pairs)')
    parser.add_argument('--degradation', choices=sorted(degradations.PRESETS), default='realesrgan',
                        help="ranges of --degrade-test: 'realesrgan' (the published ones) or 'light' (milder)")
    parser.add_argument('--degradation-opt', action='append', default=[], metavar='KEY=VALUE',
                        help="change one range of --degradation, e.g. second.jpeg_range=50,95 (repeatable; keys: "
                             "first.<field>, second.<field>, final_sinc_prob, ... see docs/real-photos.md)")
    parser.add_argument('--seed', type=int, default=0, help='random seed of --degrade-test')
    parser.add_argument('--overwrite', action='store_true', help='replace degraded test sets written before')
    args = parser.parse_args(argv)
    check_output_folder(args.output_folder, '--output-folder')
    settings = degradation_settings(args.degradation, args.degradation_opt)
    targets = check_degraded_targets(args.degrade_test, args.output_folder, args.scale, args.degradation,
                                     args.overwrite)
    if not (args.train_folders or args.test_folders or args.from_skimage or args.paired_train_folders
            or args.paired_test_folders or args.degrade_test):
        parser.error('give --train-folders, --test-folders, --paired-train-folders, --paired-test-folders or '
                     '--degrade-test')
    for folder in args.train_folders + args.test_folders + args.paired_train_folders + args.paired_test_folders:
        if not os.path.isdir(folder):
            raise UserError(f"{folder}: not a folder")
    if args.from_skimage:
        train, test = export_skimage_photos(args.from_skimage)
        args.train_folders.append(train)
        args.test_folders.append(test)
    if args.degrade_test:
        print(f"degrading {len(args.degrade_test)} test set(s) x{args.scale} ({args.degradation}, seed {args.seed})...")
        write_degraded_test_sets(args.degrade_test, targets, args.scale, settings, args.seed, args.degradation)
    if args.train_folders or args.test_folders:
        print("creating data lists (every image is decoded once to check it)...")
        create_data_lists(args.train_folders, args.test_folders, args.min_size, args.output_folder,
                          workers=args.workers, max_pixels=args.max_image_pixels)
    if args.paired_train_folders or args.paired_test_folders or targets:
        print("listing LR/HR pairs (every image is decoded once to check it)...")
        create_paired_lists(args.paired_train_folders, args.paired_test_folders + targets, args.scale,
                            args.output_folder, workers=args.workers)
    print(f"lists written to {args.output_folder}")
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
