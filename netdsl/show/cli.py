"""`netdsl show filters|maps|neighbours|confusion`: registered by netdsl/cli.py.

Each handler imports its module (and numpy, numba, matplotlib) only when it runs.
"""

from __future__ import annotations

import argparse

from ..cli import path_arg, positive_int

DATA_HELP = "dataset (default: the one the checkpoint records, else the file's)"


def layer_list(text: str) -> list[str]:
    """--layers a,b,c: layer names, none empty."""
    names = [s.strip() for s in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected layer names separated by commas, got {text!r}")
    return names


def _common(p, what: str, json_help: str) -> None:
    p.add_argument("file", metavar="FILE", type=path_arg, help="the .net file")
    p.add_argument("checkpoint", metavar="CHECKPOINT", type=path_arg,
                   help="a checkpoint.npz written by train")  # fmt: skip
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT.png",
        type=path_arg,
        help=f"the picture to write (default: {what} beside the checkpoint)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help=f"print {json_help} as JSON (no picture unless -o is given)",
    )


def _data(p) -> None:
    p.add_argument("--data", type=path_arg, help=DATA_HELP)
    p.add_argument(
        "--allow-other-data",
        action="store_true",
        help="use data that differs from the data the checkpoint recorded",
    )


def add_command(sub) -> None:
    """Register `show` and its four pictures on the CLI's subparsers."""
    s = sub.add_parser("show", help="pictures of a trained net: filters, maps, neighbours, "
                                    "confusion (needs matplotlib)")  # fmt: skip
    pics = s.add_subparsers(dest="picture", metavar="PICTURE", required=True)

    f = pics.add_parser("filters", help="a conv layer's learned kernels as an image grid")
    _common(f, "filters-LAYER.png", "the layer, the kernels' shape and value range")
    f.add_argument("--layer", help="the conv layer (default: the first)")
    f.add_argument("--scale", choices=["layer", "filter"], default="layer",
                   help="rescale the kernels to [0, 1] over the whole layer (default) or "
                        "per filter")  # fmt: skip
    f.add_argument(
        "--channels",
        action="store_true",
        help="one grey tile per input channel even for RGB kernels",
    )
    f.set_defaults(func=_run("filters"))

    m = pics.add_parser("maps", help="one image's feature maps after each layer")
    _common(m, "maps.png", "each layer's shape and activation statistics")
    m.add_argument("image", metavar="IMAGE",
                   help="test:N (image N of the test set), train:N, or an image file: .npy "
                        "(HxW or CxHxW), .png or .jpg (needs Pillow)")  # fmt: skip
    m.add_argument("--layers", type=layer_list,
                   help="layers to show, comma-separated (default: every layer with "
                        "feature maps)")  # fmt: skip
    m.add_argument(
        "--max-maps",
        type=positive_int,
        default=64,
        help="at most this many maps per layer (default 64)",
    )
    _data(m)
    m.set_defaults(func=_run("maps"))

    n = pics.add_parser("neighbours", help="the training images nearest to test images in a "
                                           "layer's feature space")  # fmt: skip
    _common(n, "neighbours-LAYER.png", "the query and neighbour indices and distances")
    n.add_argument("--layer", help="the feature layer (default: the last hidden layer)")
    n.add_argument(
        "--queries",
        type=positive_int,
        default=8,
        help="number of query images, spread evenly over the test set (default 8)",
    )
    n.add_argument("--k", type=positive_int, default=7, help="neighbours per query (default 7)")
    n.add_argument(
        "--from",
        dest="query_split",
        choices=["test", "train"],
        default="test",
        help="take the queries from the test set (default) or the training set",
    )
    _data(n)
    n.set_defaults(func=_run("neighbours"))

    c = pics.add_parser("confusion", help="the test-set confusion matrix and the most "
                                          "confused pairs")  # fmt: skip
    _common(c, "confusion.png", "the matrix, class names and most confused pairs")
    c.add_argument(
        "--top", type=positive_int, default=5, help="print the K most confused pairs (default 5)"
    )
    _data(c)
    c.set_defaults(func=_run("confusion"))


def _run(picture: str):
    """The handler of one picture, importing its module only when it runs."""

    def handler(args) -> int:
        import importlib

        return importlib.import_module(f"netdsl.show.{picture}").run(args)

    handler.__name__ = f"cmd_show_{picture}"
    return handler
