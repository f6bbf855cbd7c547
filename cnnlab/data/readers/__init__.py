"""Readers: turn the one DATA argument into labelled splits of image references or arrays.

DATA may be an image-folder tree (`<root>/<class>/*.jpg`, or `<root>/{train,val,test}/<class>/...`), a .zip
holding either layout (read in place, never extracted), a Kaggle-style CSV of labels beside an image folder or
zip, a .npz of arrays (or a folder of train/val/test .npz files), a folder of MNIST IDX files, or a builtin
name (digits, mnist, fashion_mnist, cifar10). Decoding is not done here: see cnnlab.data.dataset.

One module per source kind; each registers its reader with base.register_reader when imported, and load_source
tries the registered readers in their declared order. A new kind of DATA is a new module plus its name in the
import line below.
"""

# importing a reader module registers its reader(s); the order they are tried in is declared, not this line's
from cnnlab.data.readers import arrays, builtin, csv, folder, idx, zip  # noqa: F401
from cnnlab.data.readers.base import Container, DataSource, ReadRequest, Split, register_reader
from cnnlab.data.readers.folder import IMAGE_EXTENSIONS, FileContainer
from cnnlab.data.readers.idx import read_idx
from cnnlab.data.readers.listing import list_images
from cnnlab.data.readers.load import load_source, skipped_summary, stratified_split
from cnnlab.data.readers.zip import ZipContainer

__all__ = [
    "IMAGE_EXTENSIONS", "Container", "DataSource", "FileContainer", "ReadRequest", "Split", "ZipContainer",
    "list_images", "load_source", "read_idx", "register_reader", "skipped_summary", "stratified_split",
]
