"""foldermirror: live mirrors of local folders."""

__version__ = "0.1.0"
