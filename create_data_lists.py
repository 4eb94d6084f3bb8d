"""Write the JSON image lists the training and evaluation scripts read.

    python create_data_lists.py --train-folders data/COCO2014/train2014 data/COCO2014/val2014 \
        --test-folders data/BSD100 data/Set5 data/Set14 --min-size 100 --output-folder data

Writes train_images.json (all train folders merged) and <folder name>_test_images.json per test folder.
Every file with an image extension (png, jpg, jpeg, bmp, tif, tiff, webp; any letter case) is fully
decoded; unreadable, empty, truncated, non-image, too-small and oversized (decompression bomb) files are
skipped and counted by reason; their paths and reasons go to create_data_lists.log in the output folder.
"""
import os

from utils import UserError, create_data_lists, make_parser, positive_int, run_cli


def main(argv=None):
    parser = make_parser(__doc__, data=False, device=False)
    parser.add_argument('--train-folders', nargs='*', default=[], metavar='DIR', help='training image folders')
    parser.add_argument('--test-folders', nargs='*', default=[], metavar='DIR', help='test image folders')
    parser.add_argument('--min-size', type=positive_int, default=100, help='minimum width and height kept')
    parser.add_argument('--output-folder', default='./data/', help='where the JSON lists go')
    parser.add_argument('--workers', type=positive_int, default=min(8, os.cpu_count() or 1),
                        help='processes decoding images')
    args = parser.parse_args(argv)
    if not args.train_folders and not args.test_folders:
        parser.error('give --train-folders and/or --test-folders')
    for folder in args.train_folders + args.test_folders:
        if not os.path.isdir(folder):
            raise UserError(f"{folder}: not a folder")
    print("creating data lists (every image is decoded once to check it)...")
    create_data_lists(args.train_folders, args.test_folders, args.min_size, args.output_folder, workers=args.workers)
    print(f"lists written to {args.output_folder}")
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
