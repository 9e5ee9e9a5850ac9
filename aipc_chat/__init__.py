"""aipc-chat: a local chat + image server for Intel AI PCs."""

__version__ = "0.1.0"
