"""Write the JSON image lists the training and evaluation scripts read.

    python create_data_lists.py --train-folders data/COCO2014/train2014 data/COCO2014/val2014 \
        --test-folders data/BSD100 data/Set5 data/Set14 --min-size 100 --output-folder data
    python create_data_lists.py --from-skimage data/photos --output-folder data/demo   # no download needed

Writes train_images.json (all train folders merged) and <folder name>_test_images.json per test folder.
Every file with an image extension (png, jpg, jpeg, bmp, tif, tiff, webp; any letter case) is fully
decoded; unreadable, empty, truncated, non-image, too-small and oversized (decompression bomb) files, and
entries that are not regular files (a FIFO, socket or device named like an image), are skipped and counted by
reason; their paths and reasons go to create_data_lists.log in the output folder. A folder that cannot be
listed, or an --output-folder that is a file, stops the run with one line before any image is decoded. The lists
and the log are written together, all or nothing.
"""
import os

from PIL import Image

from datasets import create_data_lists
from utils import UserError, atomic_write, check_output_folder, make_parser, positive_int, run_cli

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
    args = parser.parse_args(argv)
    check_output_folder(args.output_folder, '--output-folder')
    if args.from_skimage:
        train, test = export_skimage_photos(args.from_skimage)
        args.train_folders.append(train)
        args.test_folders.append(test)
    if not args.train_folders and not args.test_folders:
        parser.error('give --train-folders and/or --test-folders')
    for folder in args.train_folders + args.test_folders:
        if not os.path.isdir(folder):
            raise UserError(f"{folder}: not a folder")
    print("creating data lists (every image is decoded once to check it)...")
    create_data_lists(args.train_folders, args.test_folders, args.min_size, args.output_folder, workers=args.workers,
                      max_pixels=args.max_image_pixels)
    print(f"lists written to {args.output_folder}")
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
