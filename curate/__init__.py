"""curate: turn raw web image-text pools into curated, length-bucketed WebDataset training sets."""

__version__ = "0.1.0"
