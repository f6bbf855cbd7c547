"""Data: readers (where images come from) and dataset preparation (decode, convert, tensors)."""

from cnnlab.data.readers import DataSource, Split, load_source

__all__ = ["DataSource", "Split", "load_source"]
